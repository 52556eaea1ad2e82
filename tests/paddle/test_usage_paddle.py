"""Usage suite, Paddle (the Paddle module of tests/usage; it runs in the Paddle pytest process).

Training code as people write it, with the probe attached: the user's code behaves as
without the probe (the same weights) and a healthy run stays healthy. Issue 12's Paddle
rows: ``paddle.jit.save`` of a probed layer before and after training (it used to crash
the process), ``paddle.save`` while attached; plus losses that only ``backward()`` sees,
sparse gradients, gradient accumulation and ``paddle.Model``.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest
from paddle import nn
import paddle.nn.functional as F

import lossprobe

paddle.set_device("cpu")


def _digits():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


X, Y = _digits()


def batches(steps, seed=0, batch=32):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, 1400, batch)
        yield paddle.to_tensor(X[idx]), paddle.to_tensor(Y[idx])


def mlp():
    paddle.seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def same_weights(a, b) -> bool:
    return all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(a.parameters(), b.parameters()))


def loop(make_loss, steps=40, probed=True, optimizer=False, zero=True):
    net = mlp()
    opt = paddle.optimizer.Adam(parameters=net.parameters(), learning_rate=1e-3)
    probe = lossprobe.attach(net, optimizer=opt if optimizer else None, sinks=[],
                             config=lossprobe.Config(activation_every=1)) if probed else None
    losses = []
    for x, y in batches(steps):
        loss = make_loss(net, x, y)
        losses.append(float(loss))
        loss.backward()
        opt.step()
        if zero:
            opt.clear_grad()
    if probe is not None:
        probe.detach()
    return net, probe, losses


def test_jit_save_before_and_after_training_while_attached(tmp_path):
    # a crash here used to kill the whole process (rc 139): run it in one of its own
    script = textwrap.dedent(f"""
        import paddle, numpy as np, lossprobe
        import paddle.nn.functional as F
        paddle.seed(0)
        net = paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 3))
        opt = paddle.optimizer.Adam(parameters=net.parameters(), learning_rate=1e-3)
        probe = lossprobe.attach(net, sinks=[])
        spec = [paddle.static.InputSpec([None, 8], "float32")]
        paddle.jit.save(net, r"{tmp_path}/before", input_spec=spec)
        x, y = paddle.randn([32, 8]), paddle.randint(0, 3, [32])
        for s in range(20):
            loss = F.cross_entropy(net(x), y)
            loss.backward(); opt.step(); opt.clear_grad()
            if s == 10:
                paddle.save(net.state_dict(), r"{tmp_path}/mid.pdparams")
        paddle.jit.save(net, r"{tmp_path}/after", input_spec=spec)
        for s in range(5):
            loss = F.cross_entropy(net(x), y)
            loss.backward(); opt.step(); opt.clear_grad()
        probe.detach()
        h = probe.history
        assert paddle.jit.load(r"{tmp_path}/after")(x).shape == [32, 3]   # the saved program runs
        print("RESULT", h.n_steps, int(h.series("loss_seen").sum()), probe.health, sorted(probe._warned))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")][0]
    # every training step counted and its loss seen; the save's tracing pass is not a step
    assert line == "RESULT 25 25 healthy []"


def test_deepcopy_and_state_dict_save_while_attached(tmp_path):
    def train(probed):
        net = mlp()
        opt = paddle.optimizer.SGD(parameters=net.parameters(), learning_rate=0.05)
        probe = lossprobe.attach(net, optimizer=opt, sinks=[]) if probed else None
        for step, (x, y) in enumerate(batches(30)):
            loss = F.cross_entropy(net(x), y)
            loss.backward(); opt.step(); opt.clear_grad()
            if step == 15:
                ema = copy.deepcopy(net)
                ema(x)                            # the copy's forward is not a step of the probe
                paddle.save(net.state_dict(), str(tmp_path / "ckpt.pdparams"))
        if probe:
            probe.detach()
        return net, probe
    plain, _ = train(False)
    net, probe = train(True)
    assert same_weights(plain, net)
    assert probe.history.n_steps == 30 and probe.health == "healthy"


def test_functional_and_hand_reduced_losses_are_captured_at_backward():
    for make, kind in ((lambda n, x, y: F.cross_entropy(n(x), y), "cross_entropy"),
                       (lambda n, x, y: nn.CrossEntropyLoss(reduction="none")(n(x), y).mean(), "cross_entropy")):
        plain, _, _ = loop(make, probed=False)
        net, probe, losses = loop(make)
        assert same_weights(plain, net)
        h = probe.history
        assert h.series("loss") == pytest.approx(losses, rel=1e-5)
        assert h.facts.loss_kind == kind and h.facts.n_classes == 10
        assert probe.health == "healthy"


def test_saturation_is_a_logit_margin_the_same_on_every_cpu():
    from lossprobe.capture.ops import ops_for
    from lossprobe.capture.stats import output_stats
    ops = ops_for("paddle")
    rows = paddle.to_tensor([[0.0, 0.0, -200.0], [1e4, 0.0, 0.0], [1.0, 2.0, 3.0]])
    logit_max, _, _, sat, under, prob, bad = output_stats(ops, rows).numpy()
    assert (sat, under, prob, bad) == pytest.approx((1 / 3, 2 / 3, 0.0, 0.0))


def test_sparse_embedding_gradient_is_unmeasured():
    tokens = (X * 16).astype("int64")
    paddle.seed(0)
    net = nn.Sequential(nn.Embedding(17, 16, sparse=True), nn.Flatten(), nn.Linear(64 * 16, 10))
    opt = paddle.optimizer.SGD(parameters=net.parameters(), learning_rate=0.05)
    probe = lossprobe.attach(net, optimizer=opt, sinks=[], config=lossprobe.Config(on_critical="raise"))
    rng = np.random.default_rng(0)
    for _ in range(30):
        idx = rng.integers(0, 1400, 32)
        loss = F.cross_entropy(net(paddle.to_tensor(tokens[idx])), paddle.to_tensor(Y[idx]))
        loss.backward(); opt.step(); opt.clear_grad()
    probe.detach()
    h = probe.history
    assert h.n_steps == 30
    assert h.matrix("param_grad_unmeasured")[:, 0].all() and not h.matrix("param_grad_unmeasured")[:, 1:].any()
    assert "nonfinite_gradients" not in {f.code for f in probe.findings}


def test_gradient_accumulation_and_a_loop_that_never_clears_gradients():
    net = mlp()
    opt = paddle.optimizer.SGD(parameters=net.parameters(), learning_rate=0.05)
    probe = lossprobe.attach(net, optimizer=opt, sinks=[], config=lossprobe.Config(activation_every=1))
    data = batches(80)
    for _ in range(20):
        for _ in range(4):
            x, y = next(data)
            (F.cross_entropy(net(x), y) / 4).backward()
        opt.step(); opt.clear_grad()
    probe.detach()
    h = probe.history
    assert h.n_steps == 20 and (h.series("loss_seen") == 1).all()
    assert (h.series("grad_carried") == 0).all()
    _, probe, _ = loop(lambda n, x, y: F.cross_entropy(n(x), y), steps=30, optimizer=True, zero=False)
    carried = probe.history.series("grad_carried")
    assert carried[0] == 0 and np.median(carried[10:]) > 0.8


def test_paddle_model_fit_then_save_while_attached(tmp_path):
    net = mlp()
    model = paddle.Model(net, inputs=[paddle.static.InputSpec([None, 64], "float32", name="x")])
    model.prepare(paddle.optimizer.Adam(parameters=net.parameters(), learning_rate=1e-3), nn.CrossEntropyLoss())
    data = paddle.io.TensorDataset([paddle.to_tensor(X[:1024]), paddle.to_tensor(Y[:1024, None])])
    with lossprobe.attach(model, sinks=[]) as probe:
        model.fit(data, batch_size=64, epochs=2, verbose=0)
        model.save(str(tmp_path / "inference"), training=False)   # paddle.jit.save underneath
        model.fit(data, batch_size=64, epochs=1, verbose=0)
    h = probe.history
    assert h.n_steps == 3 * 16 and (h.series("loss_seen") == 1).all()
    assert probe.health == "healthy", [f.code for f in probe.findings]
