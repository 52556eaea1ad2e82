"""Paddle backend: real small models trained in real Paddle (CPU), in a dygraph loop and
in ``paddle.Model.fit``, with planted faults that must fire and a healthy run that must not;
each fault's corrected twin (the recipe with the mistake fixed) must learn and not fire either.

Run in a process of its own (TensorFlow then Paddle in one process segfaults)::

    .venv/bin/python -m pytest tests/paddle -q

Each scenario is a recipe: data, a network, an optimizer, a loss and a schedule. The same
recipe runs through both ways to train, so a code that fires in one and not the other is a
backend bug, not a rule question.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import paddle
import pytest
from paddle import nn

import lossprobe
from twins import TWIN, assert_sound_twin, twin_param
from lossprobe.capture.spec import is_sampled

paddle.set_device("cpu")


# -- data -------------------------------------------------------------------------------
def _digits():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    return (x[order] / 16.0).astype("float32"), y[order].astype("int64")


DIGITS = _digits()


def _regression(n=256, d=16, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * scale).astype("float32")
    w = rng.standard_normal((d, 1)).astype("float32")
    y = (x @ w + 0.1 * rng.standard_normal((n, 1))).astype("float32")
    return x, y


# -- scenarios ----------------------------------------------------------------------------
@dataclass
class Scenario:
    """One way to train (healthy or with a planted fault), runnable in both modes."""

    name: str
    expect: tuple[str, ...]          # codes that must fire ( () = must stay healthy )
    data: Callable[[], tuple]        # -> (x_train, y_train, x_val, y_val)
    net: Callable[[], nn.Layer]
    opt: Callable[[list], paddle.optimizer.Optimizer]
    loss: Callable[[], nn.Layer] = lambda: nn.CrossEntropyLoss()
    batch: int = 64
    epochs: int = 4                  # Model.fit; the dygraph loop runs the same number of steps
    config: dict = field(default_factory=dict)
    allow: tuple[str, ...] = ()      # other critical codes that follow from the planted fault
    planted: str = ""                # how the fault is planted, one line
    fixed: dict = field(default_factory=dict)  # the corrected twin: the ingredient the fault is in, fixed
    fix: str = ""                    # what the corrected twin changes, one line

    def twin(self) -> "Scenario":
        """The corrected twin: this recipe with the one planted mistake fixed (``fixed``); it must
        stay healthy and learn. Named ``twin/<name>``."""
        return replace(self, name=f"{TWIN}{self.name}", expect=(), allow=(), planted=self.fix, fixed={},
                       fix="", **self.fixed)


def mlp(*sizes, act=nn.ReLU, out_act=None):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    if out_act is not None:
        layers.append(out_act())
    return nn.Sequential(*layers)


def digits_split(n_train=1400, noise_x=None):
    x, y = DIGITS
    xt, yt, xv, yv = x[:n_train].copy(), y[:n_train], x[1400:], y[1400:]
    if noise_x is not None:
        xt = noise_x(xt)
    return xt, yt, xv, yv


def regression_split(scale=1.0):
    x, y = _regression(384, scale=scale)
    return x[:256], y[:256], x[256:], y[256:]


def _scaled_last(net, factor):
    last = [m for m in net.sublayers() if isinstance(m, nn.Linear)][-1]
    last.weight.set_value(last.weight * factor)
    return net


def _dead_first(net, bias=-20.0):
    first = [m for m in net.sublayers() if isinstance(m, nn.Linear)][0]
    first.bias.set_value(paddle.full(first.bias.shape, bias, dtype="float32"))
    return net


def _with_nan(x):
    x[::97, 3] = np.nan  # a few corrupt rows: any batch that draws one gives a NaN loss
    return x


SCENARIOS = [
    Scenario("healthy", (), lambda: digits_split(), lambda: mlp(64, 64, 10),
             lambda p: paddle.optimizer.Adam(1e-3, parameters=p), epochs=4,
             planted="nothing: digits, a 64-64-10 ReLU MLP, Adam 1e-3"),
    Scenario("nan_loss", ("nan_loss",), lambda: digits_split(noise_x=_with_nan),
             lambda: mlp(64, 64, 10, act=nn.Tanh), lambda p: paddle.optimizer.Adam(1e-3, parameters=p), epochs=4,
             allow=("nonfinite_gradients", "nonfinite_inputs"),
             planted="NaN in 15 training rows; tanh passes NaN on (a ReLU turns it into 0 and hides it)",
             fixed=dict(data=lambda: digits_split(noise_x=lambda x: np.nan_to_num(_with_nan(x)))),
             fix="the corrupt values cleaned (NaN -> 0)"),
    Scenario("exploding_gradients", ("exploding_gradients",), lambda: regression_split(),
             lambda: mlp(16, 1), lambda p: paddle.optimizer.SGD(1.2, parameters=p),
             loss=lambda: nn.MSELoss(), batch=256, epochs=40, allow=("loss_divergence",),
             planted="linear regression, SGD lr 1.2: every step overshoots further",
             fixed=dict(opt=lambda p: paddle.optimizer.SGD(0.1, parameters=p)), fix="SGD lr 0.1"),
    Scenario("vanishing_gradients", ("vanishing_gradients",), lambda: digits_split(),
             lambda: mlp(64, *[32] * 10, 10, act=nn.Sigmoid), lambda p: paddle.optimizer.Adam(1e-3, parameters=p),
             epochs=4, planted="eleven sigmoid layers: each multiplies the gradient by <= 0.25",
             fixed=dict(net=lambda: mlp(64, *[32] * 10, 10, act=nn.ReLU)), fix="ReLU instead of sigmoid"),
    Scenario("dead_relu", ("dead_relu",), lambda: digits_split(), lambda: _dead_first(mlp(64, 64, 10)),
             lambda p: paddle.optimizer.Adam(1e-3, parameters=p), epochs=4,
             planted="first-layer bias -20 on inputs in [0, 1]: no unit ever fires",
             fixed=dict(net=lambda: mlp(64, 64, 10)), fix="the default bias init"),
    Scenario("softmax_overflow", ("softmax_overflow",), lambda: digits_split(),
             lambda: _scaled_last(mlp(64, 64, 10), 300.0), lambda p: paddle.optimizer.Adam(1e-3, parameters=p),
             epochs=4, planted="last layer's weights x300: logits in the hundreds, softmax exactly one-hot",
             fixed=dict(net=lambda: mlp(64, 64, 10)), fix="the last layer's weights left as initialised"),
    Scenario("chance_level_loss", ("chance_level_loss",), lambda: digits_split(noise_x=lambda x: x * 0),
             lambda: mlp(64, 64, 10), lambda p: paddle.optimizer.Adam(1e-3, parameters=p), epochs=4,
             planted="a pipeline bug blanks every input: the model can only predict uniform (ln 10)",
             fixed=dict(data=lambda: digits_split()), fix="the inputs reach the model"),
    Scenario("loss_plateau", ("loss_plateau",), lambda: regression_split(), lambda: mlp(16, 32, 1),
             lambda p: paddle.optimizer.SGD(1e-7, parameters=p), loss=lambda: nn.MSELoss(), batch=256,
             epochs=80, planted="regression with SGD lr 1e-7: the loss stays where it started",
             fixed=dict(opt=lambda p: paddle.optimizer.SGD(1e-2, parameters=p)), fix="SGD lr 1e-2"),
    Scenario("overfitting", ("overfitting",), lambda: digits_split(n_train=40), lambda: mlp(64, 256, 256, 10),
             lambda p: paddle.optimizer.Adam(3e-3, parameters=p), batch=20, epochs=40,
             planted="40 training images, a 64-256-256-10 MLP, 40 epochs: memorises, validation rises",
             fixed=dict(data=lambda: digits_split()), fix="the whole 1400-image training set"),
]
TWINS = [sc.twin() for sc in SCENARIOS if sc.expect]


# -- the two ways to train -------------------------------------------------------------------
def run_dygraph(sc: Scenario, flush_every: int = 20, done: list | None = None):
    """A plain dygraph loop with the one extra line ``probe.observe(loss, targets=y)``;
    validation once per epoch in eval()/no_grad(), handed over with ``probe.observe(val)``.
    ``done`` (optional) gets one item per finished step."""
    done = [] if done is None else done
    paddle.seed(0)
    xt, yt, xv, yv = sc.data()
    net = sc.net()
    opt = sc.opt(net.parameters())
    loss_fn = sc.loss()
    cfg = lossprobe.Config(flush_every=flush_every, **sc.config)
    rng = np.random.default_rng(0)
    xv_t, yv_t = paddle.to_tensor(xv), paddle.to_tensor(yv)
    with lossprobe.attach(net, config=cfg, sinks=[]) as probe:
        for _ in range(sc.epochs):
            order = rng.permutation(len(xt))
            for i in range(0, len(xt), sc.batch):
                idx = order[i:i + sc.batch]
                xb, yb = paddle.to_tensor(xt[idx]), paddle.to_tensor(yt[idx])
                loss = loss_fn(net(xb), yb)
                loss.backward()
                opt.step()
                opt.clear_grad()
                probe.observe(loss, targets=yb)
                done.append(1)
            net.eval()
            with paddle.no_grad():
                probe.observe(loss_fn(net(xv_t), yv_t))
            net.train()
    return probe


class _Data(paddle.io.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __len__(self):
        return len(self.x)


def run_fit(sc: Scenario, attach_to: str = "model", flush_every: int = 20, done: list | None = None):
    """``paddle.Model.fit`` with ``lossprobe.attach(model)`` and nothing else."""
    paddle.seed(0)
    xt, yt, xv, yv = sc.data()
    if yt.dtype == np.int64:
        yt, yv = yt[:, None], yv[:, None]
    net = sc.net()
    model = paddle.Model(net)
    model.prepare(sc.opt(net.parameters()), sc.loss())
    cfg = lossprobe.Config(flush_every=flush_every, **sc.config)
    counter = _StepCounter([] if done is None else done)
    with lossprobe.attach(model if attach_to == "model" else net, config=cfg, sinks=[]) as probe:
        model.fit(_Data(xt, yt), eval_data=_Data(xv, yv), batch_size=sc.batch, epochs=sc.epochs,
                  verbose=0, shuffle=True, callbacks=[counter])
    return probe


class _StepCounter(paddle.callbacks.Callback):
    def __init__(self, done: list):
        super().__init__()
        self.done = done

    def on_train_batch_end(self, step, logs=None):
        self.done.append(1)


# -- planted faults fire, healthy training stays silent: both ways to train -----------------------
def codes(probe) -> dict[str, str]:
    return {f.code: f.severity for f in probe.findings}


@pytest.mark.parametrize("way", ["dygraph", "fit"])
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(sc: Scenario, way: str):
    probe = run_dygraph(sc) if way == "dygraph" else run_fit(sc)
    found = codes(probe)
    if not sc.expect:
        assert {c: v for c, v in found.items() if v != "info"} == {}, found
        assert probe.health == "healthy"
        return
    missing = [c for c in sc.expect if c not in found]
    assert not missing, f"{sc.name} via {way}: missing {missing}; found {found}"
    stray = [c for c, v in found.items() if v == "critical" and c not in sc.expect + sc.allow]
    assert not stray, f"{sc.name} via {way}: unexplained critical findings {stray}"


# -- corrected twins: every planted fault with its one mistake fixed, both ways to train ----------
# Not overfitting's here (1400 images x 40 epochs): benchmarks/accuracy_paddle.py runs every twin.
CI_TWINS = [t for t in TWINS if t.name != f"{TWIN}overfitting"]
# Twins the rules alarm today (in both ways to train): the code that fires, and why on a sound run.
ALARMED_TWINS: dict[str, str] = {}   # none today


@pytest.mark.parametrize("way", ["dygraph", "fit"])
@pytest.mark.parametrize("sc", [twin_param(t, t.name, ALARMED_TWINS) for t in CI_TWINS])
def test_corrected_twin_learns_and_stays_silent(sc: Scenario, way: str):
    assert_sound_twin(run_dygraph(sc) if way == "dygraph" else run_fit(sc))


def test_every_planted_fault_has_a_corrected_twin():
    assert all(sc.fixed and sc.fix for sc in SCENARIOS if sc.expect)
    assert {t.name for t in TWINS} == {f"{TWIN}{sc.name}" for sc in SCENARIOS if sc.expect}
    assert all(not t.expect and not t.fixed for t in TWINS)


HEALTHY = SCENARIOS[0]


def test_both_ways_record_the_same_run_shape():
    dy, fit = run_dygraph(HEALTHY), run_fit(HEALTHY)
    for probe in (dy, fit):
        h = probe.history
        assert h.n_steps == 88  # 4 epochs of ceil(1400 / 64) = 22 batches
        assert (h.series("loss_seen") == 1).all() and np.isfinite(h.series("loss")).all()
        assert (h.series("grad_norm") > 0).all()
        assert not h.matrix("param_grad_missing").any()
        vs, vl = h.val_sketch()
        assert list(vs) == [21, 43, 65, 87]  # one validation per epoch, after its last step
        assert vl[-1] < vl[0]
        assert probe.history.facts.n_classes == 10 and list(probe.layout.kinds) == ["relu"]
        assert list(probe.layout.params) == ["0.weight", "0.bias", "2.weight", "2.bias"]
        upd = h.matrix("update_ratios")
        sampled = np.isfinite(upd[:, 0])
        assert sampled.sum() == sum(is_sampled(s, 10) for s in range(88)) and (upd[sampled][:, [0, 2]] > 0).all()
        assert np.isfinite(h.matrix("act_dead")[sampled]).all()
        assert (h.series("target_is_index")[sampled] == 1).all()
    assert fit.history.facts.loss_kind == "cross_entropy" and fit.history.facts.in_optimizer == (True,) * 4
    assert (fit.history.series("lr") == 1e-3).all()
    for probe in (dy, fit):  # the same recipe learns the same way under both
        loss = probe.history.series("loss")
        assert np.median(loss[-10:]) < 0.6 * np.median(loss[:10])


def test_fit_with_probe_on_the_network_finds_its_model():
    probe = run_fit(HEALTHY, attach_to="net")
    h = probe.history
    assert h.n_steps == 88 and (h.series("loss_seen") == 1).all()
    assert list(h.val_sketch()[0]) == [21, 43, 65, 87]
    assert probe.history.facts.loss_kind == "cross_entropy"


# -- API contract ------------------------------------------------------------------------------------
X, Y = DIGITS[0][:640], DIGITS[1][:640]


def small():
    paddle.seed(1)
    return mlp(64, 32, 10)


def loop(net, probe=None, steps=20, opt=None, observe=True, accumulate=1):
    opt = opt or paddle.optimizer.Adam(1e-3, parameters=net.parameters())
    loss_fn = nn.CrossEntropyLoss()
    for s in range(steps):
        for k in range(accumulate):
            i = (s * accumulate + k) % 20
            xb, yb = paddle.to_tensor(X[i * 32:(i + 1) * 32]), paddle.to_tensor(Y[i * 32:(i + 1) * 32])
            loss = loss_fn(net(xb), yb)
            loss.backward()
            if probe is not None and observe:
                probe.observe(loss, targets=yb)
        opt.step()
        opt.clear_grad()
    return opt


def test_attach_imports_no_other_framework():
    import subprocess
    code = ("import sys, paddle, lossprobe; net = paddle.nn.Linear(2, 2); p = lossprobe.attach(net, sinks=[]); "
            "p.detach(); print([m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_attaching_twice_is_a_clear_error():
    net = small()
    with lossprobe.attach(net, sinks=[]):
        with pytest.raises(RuntimeError, match="already has a probe"):
            lossprobe.attach(net, sinks=[])
        with pytest.raises(RuntimeError, match="already has a probe"):
            lossprobe.attach(paddle.Model(net), sinks=[])
    lossprobe.attach(net, sinks=[]).detach()  # fine after detach


def _hook_counts(net):
    return [len(m._forward_pre_hooks) + len(m._forward_post_hooks) for m in net.sublayers(include_self=True)]


def test_detach_removes_hooks_and_restores_every_wrapped_method():
    net = small()
    before = _hook_counts(net)
    opt = paddle.optimizer.Adam(1e-3, parameters=net.parameters())
    probe = lossprobe.attach(net, optimizer=opt, sinks=[])
    assert sum(_hook_counts(net)) > sum(before) and "step" in opt.__dict__
    loop(net, probe, steps=12, opt=opt)
    probe.detach()
    assert _hook_counts(net) == before
    assert "step" not in opt.__dict__ and "minimize" not in opt.__dict__
    n = probe.history.n_steps
    loop(net, None, steps=5, opt=opt)  # parameter gradient hooks are gone too: nothing recorded
    assert probe.history.n_steps == n == 12 and probe._backend._cur is None

    model = paddle.Model(net)
    loss = nn.CrossEntropyLoss()
    model.prepare(opt, loss)
    with lossprobe.attach(model, sinks=[]):
        assert {"train_batch", "fit"} <= set(model.__dict__) and "minimize" in opt.__dict__
        assert len(loss._forward_post_hooks) == 1
    assert not {"train_batch", "fit"} & set(model.__dict__) and "minimize" not in opt.__dict__
    assert len(loss._forward_post_hooks) == 0 and _hook_counts(net) == before


def test_validation_never_counts_as_training():
    net = small()
    loss_fn = nn.CrossEntropyLoss()
    xv, yv = paddle.to_tensor(DIGITS[0][1400:]), paddle.to_tensor(DIGITS[1][1400:])
    with lossprobe.attach(net, sinks=[]) as probe:
        opt = loop(net, probe, steps=10)
        net.eval()
        with paddle.no_grad():
            v1 = loss_fn(net(xv), yv)
            probe.observe(v1)
        net(xv)  # eval mode with gradients on: still not a training step
        net.train()
        with paddle.no_grad():  # no_grad alone also means "not training"
            net(xv)
        loop(net, probe, steps=10, opt=opt)
        probe.observe(val_loss=0.5)
    assert probe.history.n_steps == 20
    vs, vl = probe.history.val_sketch()
    assert list(vs) == [9, 19] and vl[0] == pytest.approx(float(v1), rel=1e-5) and vl[1] == 0.5


def _count_host_reads():
    """Counts every way a Paddle tensor's value reaches the host."""
    names = ["numpy", "item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__array__"]
    T = paddle.Tensor
    orig = {n: getattr(T, n) for n in names if hasattr(T, n)}
    counts: dict[str, int] = {}

    def make(n):
        o = orig[n]

        def counted(self, *a, **k):
            counts[n] = counts.get(n, 0) + 1
            return o(self, *a, **k)
        return counted

    class Ctx:
        def __enter__(self):
            for n in orig:
                setattr(T, n, make(n))
            return counts

        def __exit__(self, *exc):
            for n, o in orig.items():
                setattr(T, n, o)
    return Ctx()


@pytest.mark.parametrize("with_optimizer", [False, True], ids=["forward-boundary", "optimizer"])
def test_one_host_read_per_flush_and_none_per_step(with_optimizer):
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10), nn.Softmax())
    opt = paddle.optimizer.SGD(0.1, parameters=net.parameters())
    cfg = lossprobe.Config(flush_every=10, activation_every=1)  # every statistic on every step
    probe = lossprobe.attach(net, optimizer=opt if with_optimizer else None, config=cfg, sinks=[])
    xb, yb = paddle.to_tensor(X[:64]), paddle.to_tensor(Y[:64])
    with _count_host_reads() as counts:
        for _ in range(35):
            loss = nn.functional.nll_loss(paddle.log(net(xb)), yb)
            loss.backward()
            opt.step()
            opt.clear_grad()
            probe.observe(loss, targets=yb)
    backend = probe._backend
    assert counts == {"numpy": 3} and backend.n_host_reads == 3  # steps 0-9, 10-19, 20-29
    assert probe.history.n_steps == 30
    probe.detach()
    assert backend.n_host_reads == 4 and probe.history.n_steps == 35
    h = probe.history
    assert np.isfinite(h.matrix("act_sat")[:, 1]).all() and list(h.layout.kinds) == ["relu", "tanh", "softmax"]
    assert h.facts.output_activation_index == 2 and h.facts.output_activation == "softmax"  # the head is the output
    assert np.isfinite(h.series("input_std")).all() and np.isfinite(h.series("softmax_saturation")).all()
    assert np.isfinite(h.matrix("update_ratios")[:, [0, 2, 4]]).all()
    assert (h.series("lr") == 0.1).all() if with_optimizer else np.isnan(h.series("lr")).all()


def test_optimizer_steps_with_gradient_accumulation_read_the_applied_gradient():
    net = small()
    opt = paddle.optimizer.SGD(0.0, parameters=net.parameters())  # lr 0: weights stay, grads comparable
    ref_norms = []
    orig_step = opt.step

    def step_and_record():
        ref_norms.append(math.sqrt(sum(float((p.grad.numpy().astype(np.float64) ** 2).sum())
                                       for p in net.parameters())))
        orig_step()
    opt.step = step_and_record  # the user's own wrapper stays in place under the probe's
    with lossprobe.attach(net, optimizer=opt, sinks=[]) as probe:
        loop(net, probe, steps=8, opt=opt, accumulate=3)
    h = probe.history
    assert h.n_steps == 8
    np.testing.assert_allclose(h.series("grad_norm"), ref_norms, rtol=1e-4)
    assert opt.step is step_and_record  # restored to what it was before attach


def test_fit_gradient_accumulation_counts_updates_and_function_loss_is_captured():
    paddle.seed(0)
    net = mlp(64, 32, 10)
    model = paddle.Model(net)
    ce = nn.CrossEntropyLoss()

    def loss_fn(out, label):  # a plain function, not a Layer: the probe wraps Model._loss
        return ce(out, label)
    model.prepare(paddle.optimizer.Adam(1e-3, parameters=net.parameters()), loss_fn)
    with lossprobe.attach(model, sinks=[]) as probe:
        model.fit(_Data(X, Y[:, None]), eval_data=_Data(X[:128], Y[:128, None]), batch_size=32, epochs=2,
                  accumulate_grad_batches=2, verbose=0)
    h = probe.history
    assert h.n_steps == 20  # 2 epochs x 20 batches / 2 per update
    assert (h.series("loss_seen") == 1).all() and len(h.val_sketch()[0]) == 2
    assert model._loss is loss_fn and probe.history.facts.loss_kind == ""


@pytest.mark.parametrize("way", ["dygraph", "fit"])
def test_on_critical_raise_stops_training_at_the_next_step_boundary(way):
    sc = {s.name: s for s in SCENARIOS}["nan_loss"]
    sc = Scenario(**{**sc.__dict__, "config": {"on_critical": "raise"}, "epochs": 20})  # 440 steps
    done: list = []
    with pytest.raises(lossprobe.TrainingHealthError) as e:
        run_dygraph(sc, flush_every=5, done=done) if way == "dygraph" else run_fit(sc, flush_every=5, done=done)
    assert {"nan_loss", "nonfinite_inputs", "nonfinite_gradients"} & {f.code for f in e.value.findings}
    assert all(f.severity == "critical" for f in e.value.findings)
    # the first corrupt row is drawn within the first few batches; a flush every 5 steps
    # sees it and the next step boundary raises: training stops early, not at the end
    assert len(done) < 40 and len(done) - max(f.step for f in e.value.findings) <= 6


def test_hook_error_is_reported_once_and_that_part_switched_off(caplog):
    import logging
    net = small()
    probe = lossprobe.attach(net, sinks=[], config=lossprobe.Config(activation_every=1))

    def broken(*a, **k):
        raise RuntimeError("boom")
    probe._backend._record_activation = broken
    with caplog.at_level(logging.WARNING, logger="lossprobe"):
        loop(net, probe, steps=15)
    probe.detach()
    msgs = [r.getMessage() for r in caplog.records if "lossprobe" in r.getMessage()]
    assert len(msgs) == 1 and "activations" in msgs[0]
    assert probe.history.n_steps == 15 and (probe.history.series("loss_seen") == 1).all()


def test_dict_outputs_and_empty_batch():
    class DictNet(nn.Layer):
        def __init__(self):
            super().__init__()
            self.body = mlp(64, 32, 10)

        def forward(self, x):
            return {"aux": x.sum(), "logits": self.body(x)}

    net = DictNet()
    opt = paddle.optimizer.Adam(1e-3, parameters=net.parameters())
    with lossprobe.attach(net, sinks=[], config=lossprobe.Config(activation_every=1)) as probe:
        for _ in range(12):
            yb = paddle.to_tensor(Y[:32])
            loss = nn.functional.cross_entropy(net(paddle.to_tensor(X[:32]))["logits"], yb)
            loss.backward(); opt.step(); opt.clear_grad()
            probe.observe(loss, targets=yb)
        net(paddle.to_tensor(X[:0]))  # an empty batch: no crash, no statistics from it
    assert probe.history.n_steps >= 12 and probe.history.facts.n_classes == 10
    assert np.isfinite(probe.history.series("logit_abs_max")[:12]).all()
    assert probe._warned == set()


class ConvNet(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2D(8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x.reshape([-1, 1, 8, 8])))).flatten(1))


@pytest.mark.parametrize("frozen", [False, True])
def test_conv_batchnorm_statistics_and_frozen_batchnorm(frozen):
    paddle.seed(0)
    net = ConvNet()
    opt = paddle.optimizer.Adam(1e-3, parameters=net.parameters())
    with lossprobe.attach(net, sinks=[], config=lossprobe.Config(activation_every=1)) as probe:
        for s in range(25):
            net.train()
            if frozen:
                net.bn.eval()  # the classic fine-tuning slip: BatchNorm left in eval mode
            xb, yb = paddle.to_tensor(X[s * 16:(s + 1) * 16]), paddle.to_tensor(Y[s * 16:(s + 1) * 16])
            loss = nn.functional.cross_entropy(net(xb), yb)
            loss.backward(); opt.step(); opt.clear_grad()
            probe.observe(loss, targets=yb)
    assert list(probe.layout.activations) == ["bn", "act"] and list(probe.layout.kinds) == ["batchnorm", "relu"]
    dead = probe.history.matrix("act_dead")[:, 1]
    assert np.isfinite(dead).all() and (dead < 0.5).all()  # per-channel share (NCHW)
    assert ("frozen_batchnorm" in codes(probe)) == frozen


def test_report_names_the_framework(tmp_path):
    probe = run_dygraph({s.name: s for s in SCENARIOS}["dead_relu"])
    rep = probe.report()
    assert rep["framework"] == "paddle" and "dead_relu" in {f["code"] for f in rep["findings"]}
    assert probe.tags()["lossprobe.health"] == "warning"
    html = probe.save_report(tmp_path / "r.html").read_text()
    assert "dead_relu" in html and "<svg" in html


def test_loss_layer_inside_the_model_is_captured_without_observe():
    class WithLoss(nn.Layer):
        def __init__(self):
            super().__init__()
            self.body = mlp(64, 32, 10)
            self.criterion = nn.CrossEntropyLoss()

        def forward(self, x, y):
            logits = self.body(x)
            return logits, self.criterion(logits, y)

    paddle.seed(0)
    net = WithLoss()
    opt = paddle.optimizer.SGD(0.05, parameters=net.parameters())
    seen = []
    with lossprobe.attach(net, sinks=[], config=lossprobe.Config(activation_every=1)) as probe:
        for s in range(12):
            xb, yb = paddle.to_tensor(X[s * 32:(s + 1) * 32]), paddle.to_tensor(Y[s * 32:(s + 1) * 32])
            _, loss = net(xb, yb)
            loss.backward(); opt.step(); opt.clear_grad()
            probe.observe(loss * 2, targets=yb)  # already captured: this must not be counted again
            seen.append(loss)
    h = probe.history
    assert h.n_steps == 12 and probe.history.facts.loss_kind == "cross_entropy" and probe.history.facts.n_classes == 10
    np.testing.assert_allclose(h.series("loss"), [float(l) for l in seen], rtol=1e-6)
    assert (h.series("target_distinct") >= 5).all() and (h.series("target_max") <= 9).all()
