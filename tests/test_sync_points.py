"""No per-step host read: every way a tensor's value can reach the host is counted while
probed training runs, and only the once-per-flush read happens (on CPU this stands in for
``torch.cuda.set_sync_debug_mode("error")`` on a GPU)."""
import contextlib

import pytest
import torch
from torch import nn

import lossprobe
from torch_helpers import X, Y, cnn, mlp

SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def count_host_reads():
    calls = {m: 0 for m in SYNC_METHODS}
    originals = {m: getattr(torch.Tensor, m) for m in SYNC_METHODS}

    def wrap(name, fn):
        def counted(self, *a, **k):
            calls[name] += 1
            return fn(self, *a, **k)
        return counted
    for m in SYNC_METHODS:
        setattr(torch.Tensor, m, wrap(m, originals[m]))
    try:
        yield calls
    finally:
        for m, fn in originals.items():
            setattr(torch.Tensor, m, fn)


@pytest.mark.parametrize("make,images", [(mlp, False), (cnn, True)])
def test_host_reads_only_at_flush(make, images):
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    cfg = lossprobe.Config(flush_every=10, activation_every=1)  # every statistic on every step
    data = X.reshape(-1, 1, 8, 8) if images else X
    probe = lossprobe.attach(model, optimizer=opt, config=cfg, sinks=[])
    loss_fn = nn.CrossEntropyLoss()
    steps = 45
    with count_host_reads() as calls:
        for s in range(steps):
            loss = loss_fn(model(data[s * 16:(s + 1) * 16]), Y[s * 16:(s + 1) * 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
        reads_before_detach = dict(calls)
    probe.detach()
    flushes = steps // cfg.flush_every
    assert probe._backend.n_host_reads == flushes + 1
    # one .cpu() per flush, nothing else that reads a device value
    assert reads_before_detach["cpu"] == flushes
    assert sum(v for k, v in reads_before_detach.items() if k not in ("cpu", "numpy")) == 0
    assert probe.history.n_steps == steps
