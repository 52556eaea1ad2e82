"""The public API contract of attach / Probe / observe / reports, on real torch models."""
import io
import json
import logging
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import lossprobe
from torch_helpers import X, Y, codes, mlp, train


def _loop(model, probe=None, steps=30, loss_fn=None, opt=None, functional=False, observe_twice=False):
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    for s in range(steps):
        x, y = X[s * 32:(s + 1) * 32], Y[s * 32:(s + 1) * 32]
        out = model(x)
        loss = nn.functional.cross_entropy(out, y) if functional else loss_fn(out, y)
        if probe is not None and (functional or observe_twice):
            probe.observe(loss, targets=y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_unsupported_model_type_error_names_type_and_frameworks():
    with pytest.raises(TypeError) as e:
        lossprobe.attach(object())
    assert "builtins.object" in str(e.value) and "PyTorch" in str(e.value) and "Paddle" in str(e.value)


def test_attach_does_not_import_other_frameworks():
    code = ("import sys, torch, lossprobe; m = torch.nn.Linear(2, 2); p = lossprobe.attach(m, sinks=[]); "
            "p.detach(); print('tensorflow' in sys.modules, 'paddle' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
    try:
        lossprobe.attach("not a model")
    except TypeError:
        pass
    assert "tensorflow" not in sys.modules or "tensorflow" in sys.modules  # nothing imported here by attach


def test_core_imports_with_numpy_alone():
    code = "import sys, lossprobe, lossprobe.rules, lossprobe.report; print(sorted(m for m in ('torch','tensorflow','paddle','mlflow','wandb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_detach_removes_every_hook_and_model_pickles_as_before():
    model = mlp()
    before = pickle.dumps(model)
    hooks_before = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    from torch.nn.modules import module as M
    global_before = len(M._global_forward_hooks) + len(M._global_forward_pre_hooks)
    probe = lossprobe.attach(model, sinks=[])
    # the probe watches through process-wide hooks: nothing is stored on the model itself
    assert len(M._global_forward_hooks) + len(M._global_forward_pre_hooks) > global_before
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()] == hooks_before
    opt = _loop(model, probe)
    probe.detach()
    assert len(M._global_forward_hooks) + len(M._global_forward_pre_hooks) == global_before
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()] == hooks_before
    assert len(opt._optimizer_step_pre_hooks) == 0 and len(opt._optimizer_step_post_hooks) == 0
    clone = pickle.loads(pickle.dumps(model))
    assert torch.equal(clone(X[:4]), model(X[:4]))
    assert len(pickle.dumps(mlp())) == len(before)
    # attach again after detach is fine; and steps are no longer counted by the old probe
    n = probe.history.n_steps
    _loop(model, None, steps=5)
    assert probe.history.n_steps == n
    lossprobe.attach(model, sinks=[]).detach()


def test_attaching_twice_is_a_clear_error():
    model = mlp()
    with lossprobe.attach(model, sinks=[]):
        with pytest.raises(RuntimeError, match="already has a probe"):
            lossprobe.attach(model, sinks=[])


def test_module_loss_and_targets_captured_without_extra_line():
    model = mlp()
    with lossprobe.attach(model, sinks=[], config=lossprobe.Config(activation_every=1)) as probe:
        _loop(model, steps=25)
    h = probe.history
    assert h.n_steps == 25
    assert (h.series("loss_seen") == 1).all()
    assert h.facts.loss_kind == "cross_entropy" and h.facts.loss_name == "CrossEntropyLoss"
    assert (h.series("target_is_index") == 1).all()
    assert h.series("target_max").max() <= 9 and h.series("target_distinct").min() >= 2


def test_observe_does_not_count_an_auto_captured_loss_twice():
    model = mlp()
    with lossprobe.attach(model, sinks=[]) as probe:
        _loop(model, probe, steps=20, observe_twice=True)
    losses = probe.history.series("loss")
    ref = mlp()
    ref.load_state_dict(model.state_dict())
    assert probe.history.n_steps == 20 and losses.size == 20


def test_functional_loss_with_one_observe_line():
    model = mlp()
    with lossprobe.attach(model, sinks=[]) as probe:
        _loop(model, probe, steps=20, functional=True)
    assert probe.history.n_steps == 20
    assert (probe.history.series("loss_seen") == 1).all()


def test_validation_never_counts_as_training():
    model = mlp()
    loss_fn = nn.CrossEntropyLoss()
    with lossprobe.attach(model, sinks=[]) as probe:
        opt = _loop(model, steps=10)
        model.eval()
        with torch.no_grad():
            v1 = loss_fn(model(X[-200:]), Y[-200:]).item()
        model.train()
        with torch.no_grad():  # no_grad alone also means validation
            loss_fn(model(X[-200:]), Y[-200:])
        _loop(model, steps=10, opt=opt)
        probe.observe(val_loss=0.5)
    assert probe.history.n_steps == 20
    vs, vl = probe.history.val_sketch()
    assert len(vl) == 2 and vl[0] == pytest.approx(v1, rel=1e-4) and vl[-1] == 0.5


def test_steps_counted_from_forward_when_no_optimizer_is_ever_used():
    model = mlp()
    with lossprobe.attach(model, sinks=[]) as probe:
        for s in range(12):
            loss = nn.CrossEntropyLoss()(model(X[:16]), Y[:16])
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
    assert probe.history.n_steps == 12
    g = probe.history.series("grad_norm")
    assert (g[:-1] > 0).all()


def test_no_per_step_host_read_flushes_every_n_steps():
    model = mlp()
    cfg = lossprobe.Config(flush_every=10)
    probe = lossprobe.attach(model, sinks=[], config=cfg)
    _loop(model, steps=35)
    backend = probe._backend
    assert backend.n_host_reads == 3  # steps 0-9, 10-19, 20-29 flushed; 30-34 pending
    assert probe.history.n_steps == 30
    probe.detach()
    assert backend.n_host_reads == 4 and probe.history.n_steps == 35


def test_report_json_and_html(tmp_path):
    probe = train(mlp(), steps=60, val_every=20)
    rep = probe.report()
    json.dumps(rep)
    assert rep["health"] == probe.health and rep["steps_seen"] == 60
    j = probe.save_report(tmp_path / "r.json")
    assert json.loads(j.read_text())["framework"] == "torch"
    h = probe.save_report(tmp_path / "r.html").read_text()
    assert h.startswith("<!doctype html>") and "<svg" in h and "<script" not in h and "http" not in h.split("xmlns")[0]
    with pytest.raises(ValueError):
        probe.save_report(tmp_path / "r.txt")


def test_on_critical_raise_stops_at_next_step_boundary():
    from test_torch_codes import BrokenAfter
    cfg = lossprobe.Config(on_critical="raise", flush_every=5)
    with pytest.raises(lossprobe.TrainingHealthError) as e:
        train(mlp(), loss_fn=BrokenAfter(12), steps=100, config=cfg)
    assert "nan_loss" in str(e.value)


def test_hook_error_is_reported_once_and_that_part_switched_off(caplog):
    model = mlp()
    probe = lossprobe.attach(model, sinks=[], config=lossprobe.Config(activation_every=1))
    backend = probe._backend

    def broken(*a, **k):
        raise RuntimeError("boom")
    backend._record_activation = broken
    with caplog.at_level(logging.WARNING, logger="lossprobe"):
        _loop(model, steps=15)
    probe.detach()
    msgs = [r.getMessage() for r in caplog.records if "lossprobe" in r.getMessage()]
    assert len(msgs) == 1 and "activations" in msgs[0]
    assert probe.history.n_steps == 15  # training and the rest of the capture went on


def test_broken_sink_is_switched_off_training_continues(caplog):
    class Bad(lossprobe.Sink):
        name = "bad"
        def on_flush(self, update):
            raise ConnectionError("tracker down")
    model = mlp()
    with warnings.catch_warnings(record=True) as w, caplog.at_level(logging.WARNING, logger="lossprobe"):
        warnings.simplefilter("always")
        probe = lossprobe.attach(model, sinks=[Bad()], config=lossprobe.Config(flush_every=5))
        _loop(model, steps=20)
        probe.detach()
    assert probe.history.n_steps == 20
    assert sum("tracker down" in r.getMessage() for r in caplog.records) == 1   # said once,
    assert not [x for x in w if "lossprobe" in str(x.message)]                  # on one channel


def test_dict_and_tuple_outputs_and_empty_batch():
    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()
        def forward(self, x):
            return {"logits": self.body(x), "aux": x.sum()}

    model = DictNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with lossprobe.attach(model, sinks=[], config=lossprobe.Config(activation_every=1)) as probe:
        for s in range(12):
            out = model(X[:32])["logits"]
            loss = nn.functional.cross_entropy(out, Y[:32])
            probe.observe(loss, targets=Y[:32])
            opt.zero_grad(); loss.backward(); opt.step()
        model(X[:0])  # an empty batch: no crash, no statistics from it
    assert probe.history.n_steps >= 12
    assert probe.history.facts.n_classes == 10
    assert probe._warned == set()


def test_console_sink_prints_finding_and_summary():
    from test_torch_codes import BrokenAfter
    buf = io.StringIO()
    model = mlp()
    probe = lossprobe.attach(model, sinks=[lossprobe.ConsoleSink(stream=buf)])
    _loop(model, steps=40, loss_fn=BrokenAfter(10))
    probe.detach()
    text = buf.getvalue()
    assert "CRITICAL nan_loss" in text and "health: healthy -> critical" in text
    assert "lossprobe: health = critical" in text


def test_diagnose_posthoc_on_lists_and_csv(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    t = np.arange(300)
    healthy = 2.3 * np.exp(-t / 60) + 0.05 + 0.02 * rng.standard_normal(300)
    stuck = 1.5 + 0.02 * rng.standard_normal(300)
    assert [f.code for f in lossprobe.diagnose(list(healthy)) if f.severity != "info"] == []
    assert "loss_plateau" in {f.code for f in lossprobe.diagnose({"loss": np.r_[2.3 * np.exp(-t[:40] / 20) + 1.0, stuck[40:]]})}
    rising = 0.5 + 0.01 * t + 0.02 * rng.standard_normal(300)
    p = tmp_path / "h.csv"
    p.write_text("step,loss\n" + "\n".join(f"{i},{v}" for i, v in enumerate(rising)))
    out = subprocess.run([sys.executable, "-m", "lossprobe.cli", "diagnose", str(p), "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert "loss_divergence" in {f["code"] for f in json.loads(out)["findings"]}
    table = subprocess.run([sys.executable, "-m", "lossprobe.cli", "diagnose", str(p)],
                           capture_output=True, text=True, check=True).stdout
    assert "loss_divergence" in table and "critical" in table


def test_two_probed_models_in_one_process_keep_their_own_losses():
    a, b = mlp(), mlp()
    oa, ob = (torch.optim.SGD(m.parameters(), lr=0.01) for m in (a, b))
    loss_fn = nn.CrossEntropyLoss()
    pa = lossprobe.attach(a, optimizer=oa, sinks=[])
    pb = lossprobe.attach(b, optimizer=ob, sinks=[])
    la, lb = [], []
    for s in range(20):
        x, y = X[s * 16:(s + 1) * 16], Y[s * 16:(s + 1) * 16]
        loss_a = loss_fn(a(x), y)
        loss_b = 10 * loss_fn(b(x).view(16, 10), y)  # a view of b's output still counts as b's
        la.append(loss_a.item()); lb.append(loss_b.item() / 10)
        for opt, loss in ((oa, loss_a), (ob, loss_b)):
            opt.zero_grad(); loss.backward(); opt.step()
    pa.detach(); pb.detach()
    assert pa.history.series("loss") == pytest.approx(la, rel=1e-5)
    assert pb.history.series("loss") == pytest.approx(lb, rel=1e-5)  # the loss module output, before x10


def test_eval_mode_forward_without_no_grad_is_validation_unless_an_optimizer_step_follows():
    model = mlp()
    loss_fn = nn.CrossEntropyLoss()
    with lossprobe.attach(model, sinks=[]) as probe:
        opt = _loop(model, steps=10)
        model.eval()                                   # validation, but grad left enabled
        v = [loss_fn(model(X[-200 + 50 * k:-150 + 50 * k]), Y[-200 + 50 * k:-150 + 50 * k]).item() for k in range(3)]
        model.train()
        _loop(model, steps=10, opt=opt)
        model.eval()                                   # validation again ... and a forgotten model.train()
        _loop(model, steps=10, opt=opt)                # these still train: optimizer.step() follows
    assert probe.history.n_steps == 30
    vs, vl = probe.history.val_sketch()
    assert len(vl) == 1 and vl[0] == pytest.approx(sum(v) / 3, rel=1e-5)
