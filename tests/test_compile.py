"""A model under torch.compile: loss, gradients and the rest of the step statistics are
captured, activation hooks are left out (they would sit inside the compiled graph), and the
probe causes no recompilation."""
import warnings

import torch
from torch import nn

import lossprobe
from torch_helpers import X, Y, mlp
from test_torch_codes import BrokenAfter


def _run(loss_fn, steps=40):
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    model = torch.compile(mlp(), backend="aot_eager")  # dynamo's tracing without a C++ build
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[])
    graphs_after_warmup = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on global hooks and compile
        for s in range(steps):
            x, y = X[(s * 32) % 1400:(s * 32) % 1400 + 32], Y[(s * 32) % 1400:(s * 32) % 1400 + 32]
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if s == 3:
                graphs_after_warmup = counters["stats"]["unique_graphs"]
    probe.detach()
    return probe, graphs_after_warmup, counters["stats"]["unique_graphs"]


def test_compiled_model_is_probed_without_recompiling():
    probe, warm, end = _run(nn.CrossEntropyLoss())
    assert warm >= 1 and end == warm, "the probe made dynamo recompile"
    h = probe.history
    assert h.n_steps == 40 and (h.series("loss_seen") == 1).all()
    assert (h.series("grad_norm") > 0).all()
    assert probe.layout.params[0] == "0.weight"       # names of the original module
    assert list(probe.layout.activations) == []             # no hooks inside the compiled graph
    assert probe.health == "healthy"


def test_compiled_model_fault_is_diagnosed():
    probe, warm, end = _run(BrokenAfter(20))
    assert end == warm
    assert "nan_loss" in {f.code for f in probe.findings}
