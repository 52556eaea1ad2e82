"""Keras 3 / TensorFlow backend on real training runs (scikit-learn digits, small models).

Each planted fault must produce its code, in ``model.fit`` and in a custom GradientTape
loop; the same models trained soundly must stay healthy, and so must each fault's corrected
twin (the same run with the mistake fixed), which must also learn. Run apart from Paddle:
``python -m pytest tests/tf -q``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import keras
from sklearn.datasets import load_digits

import lossprobe
from lossprobe.capture.spec import is_sampled
from lossprobe.integrations.keras import LossProbeCallback
from twins import TWIN, assert_sound_twin, twin_param

pytestmark = pytest.mark.tensorflow

_X, _Y = load_digits(return_X_y=True)
X = (_X / 16.0).astype("float32")
Y = _Y.astype("int64")
X_TR, Y_TR, X_VA, Y_VA = X[:1400], Y[:1400], X[1400:], Y[1400:]
X_IMG = X.reshape(-1, 8, 8, 1)
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# -- models -------------------------------------------------------------------------------
def mlp(depth: int = 2, width: int = 64, act: str = "relu", out: int = 10, bias: float = 0.0,
        seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((64,))]
    for _ in range(depth):
        layers.append(keras.layers.Dense(width, activation=act,
                                         bias_initializer=keras.initializers.Constant(bias)))
    layers.append(keras.layers.Dense(out))
    return keras.Sequential(layers)


def cnn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same"), L.BatchNormalization(),
                             L.ReLU(), L.Conv2D(16, 3, padding="same", activation="relu"),
                             L.GlobalAveragePooling2D(), L.Dense(10)])


def side_branch_model(seed: int = 0, fixed: bool = False) -> keras.Model:
    """A trainable Dense layer whose output passes through stop_gradient: its variables are
    trainable but never receive a gradient (the frozen_parameters fault). ``fixed``: the side
    branch joins the sum as it is, and trains."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((64,))
    h = keras.layers.Dense(64, activation="relu", name="hidden")(inp)
    side = keras.layers.Dense(64, name="side")(inp)
    h = keras.layers.Add()([h, side if fixed else keras.ops.stop_gradient(side) * 0.0])
    return keras.Model(inp, keras.layers.Dense(10, name="head")(h))


def scale_kernel(model: keras.Model, factor: float) -> keras.Model:
    last = model.layers[-1]
    last.kernel.assign(last.kernel * factor)
    return model


def codes(probe, severities=("warning", "critical")) -> set[str]:
    return {f.code for f in probe.findings if f.severity in severities}


def make_opt(opt: str, lr: float):
    return {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[opt](learning_rate=lr)


# -- model.fit ----------------------------------------------------------------------------
def fit_run(model, *, epochs=4, lr=1e-3, opt="adam", loss=CE, x=X_TR, y=Y_TR, batch=64, val=False,
            config=None, jit=False, dataset=None, steps=None, optimizer=None):
    """compile + attach + fit + detach; returns the probe. Faults are planted by argument."""
    optimizer = optimizer or make_opt(opt, lr)
    model.compile(optimizer=optimizer, loss=loss(optimizer) if getattr(loss, "needs_opt", False) else loss,
                  jit_compile=jit)
    probe = lossprobe.attach(model, config=config, sinks=[])
    if dataset is not None:
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0)
    else:
        model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0,
                  validation_data=(X_VA, Y_VA) if val else None)
    probe.detach()
    return probe


def nan_after(step: int):
    """A loss that turns NaN from optimizer step ``step`` on (log of a negative number)."""
    def make(optimizer):
        def loss(y, logits):
            bad = tf.math.log(tf.where(optimizer.iterations >= step, -1.0, 1.0))
            return CE(y, logits) + bad
        return loss
    make.needs_opt = True
    return make


def label_dataset(random_labels: bool, batch=64):
    """The training digits as a ``tf.data`` pipeline; ``random_labels``: each batch gets labels
    drawn at random instead of its own (the chance_level_loss fault)."""
    if not random_labels:
        return tf.data.Dataset.from_tensor_slices((X_TR, Y_TR)).repeat().batch(batch)
    ds = tf.data.Dataset.from_tensor_slices(X_TR).repeat().batch(batch)
    return ds.map(lambda x: (x, tf.random.uniform([tf.shape(x)[0]], 0, 10, tf.int64, seed=1)))


def _with_frozen_first_layer(model):
    model.layers[0].trainable = False
    return model


def _softmax_head(model):
    model.layers[-1].activation = keras.activations.softmax
    return model


# Each planted fault is one argument of a run; ``fixed=True`` gives its corrected twin, the same
# run with that one mistake fixed (``if fixed else`` marks the line), which must stay silent.
FIT_FAULTS = {
    "nan_loss": lambda fixed=False: fit_run(mlp(), loss=CE if fixed else nan_after(40), epochs=3),
    # linear regression on raw 0..16 pixels, SGD past its stability limit: exponential blow-up
    # (fixed: the pixels scaled to 0..1)
    "exploding_gradients": lambda fixed=False: fit_run(
        keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(1)]),
        opt="sgd", lr=5e-4, loss="mse", x=X_TR if fixed else X_TR * 16, y=Y_TR.astype("float32")[:, None],
        epochs=3),
    "vanishing_gradients": lambda fixed=False: fit_run(mlp(depth=10, act="relu" if fixed else "sigmoid"), epochs=4),
    "dead_relu": lambda fixed=False: fit_run(mlp(bias=0.0 if fixed else -5.0), epochs=4),
    "softmax_overflow": lambda fixed=False: fit_run(scale_kernel(mlp(), 1.0 if fixed else 1e4), epochs=3),
    "chance_level_loss": lambda fixed=False: fit_run(mlp(), dataset=label_dataset(random_labels=not fixed),
                                                     epochs=1, steps=100),
    # a schedule that drops the learning rate 10000x after 40 steps: the loss freezes mid-way
    # (fixed: the 10x drop that was meant)
    "loss_plateau": lambda fixed=False: fit_run(mlp(), epochs=9, optimizer=keras.optimizers.Adam(
        learning_rate=keras.optimizers.schedules.PiecewiseConstantDecay([40], [1e-3, 1e-4 if fixed else 1e-7]))),
    # 60 training digits and a wide net: it memorises them, validation loss turns and rises
    # (fixed: the whole training set)
    "overfitting": lambda fixed=False: fit_run(mlp(width=256), lr=3e-3, x=X_TR if fixed else X_TR[:60],
                                               y=Y_TR if fixed else Y_TR[:60], batch=30, epochs=25, val=True),
    "frozen_parameters": lambda fixed=False: fit_run(side_branch_model(fixed=fixed), epochs=2),
    # the classic Keras slip: a softmax head and a from_logits=True loss (fixed: a linear head)
    "double_softmax": lambda fixed=False: fit_run(mlp() if fixed else _softmax_head(mlp()), epochs=4),
}


@pytest.mark.parametrize("code", sorted(FIT_FAULTS))
def test_fit_planted_fault_is_diagnosed(code):
    probe = FIT_FAULTS[code]()
    found = codes(probe)
    assert code in found, f"{code} not found; got {[(f.code, f.evidence) for f in probe.findings]}"
    f = next(f for f in probe.findings if f.code == code)
    assert f.evidence and f.causes and f.fixes and f.message
    assert probe.health in ("warning", "critical")
    assert probe.layout.framework == "tensorflow"


def test_frozen_parameters_names_the_variable_without_gradient():
    probe = FIT_FAULTS["frozen_parameters"]()
    f = next(f for f in probe.findings if f.code == "frozen_parameters")
    assert {p.split("/")[-2] for p in f.evidence["never_got_gradient"]} == {"side"}


def test_softmax_overflow_evidence_has_huge_logits():
    probe = FIT_FAULTS["softmax_overflow"]()
    f = next(f for f in probe.findings if f.code == "softmax_overflow")
    assert f.evidence.get("max_abs_logit", 0) >= 88 or f.evidence.get("pinned_steps", 0) >= 3


FIT_HEALTHY = {
    "mlp-adam-val": lambda: fit_run(mlp(), epochs=8, val=True),
    "mlp-sgd": lambda: fit_run(mlp(), opt="sgd", lr=0.05, epochs=8),
    "cnn-batchnorm": lambda: fit_run(cnn(), x=X_IMG[:1400], epochs=6, val=False),
    # a layer with trainable=False is a choice, not a fault
    "frozen-layer": lambda: fit_run(_with_frozen_first_layer(mlp(depth=3)), epochs=8),
    "probability-output": lambda: fit_run(_softmax_head(mlp()), loss="sparse_categorical_crossentropy",
                                          epochs=8),
}


@pytest.mark.parametrize("name", sorted(FIT_HEALTHY))
def test_fit_healthy_run_is_silent(name):
    probe = FIT_HEALTHY[name]()
    bad = [(f.code, f.step, f.evidence) for f in probe.findings if f.severity != "info"]
    assert probe.health == "healthy", bad
    assert probe.history.n_steps >= 100


def test_fit_captures_every_statistic_with_one_read_per_flush():
    cfg = lossprobe.Config(flush_every=10, activation_every=5)
    probe = fit_run(mlp(), epochs=2, val=True, config=cfg)
    h, backend = probe.history, probe._backend
    steps = 2 * math.ceil(1400 / 64)
    assert h.n_steps == steps and list(h.steps()) == list(range(steps))
    # the host read the device ring once per flush_every steps (plus the final flush), never per step
    assert backend.n_host_reads <= math.ceil(steps / cfg.flush_every) + 1
    loss = h.series("loss")
    assert np.isfinite(loss).all() and abs(loss[0] - math.log(10)) < 0.3
    assert np.isfinite(h.series("grad_norm")).all()
    assert np.isfinite(h.matrix("param_grad_norms")).all() and not h.matrix("param_grad_missing").any()
    assert np.allclose(h.series("lr"), 1e-3)
    sampled = is_sampled(np.arange(steps), cfg.activation_every)  # the steps every backend samples
    for name in ("input_mean", "input_std", "logit_std", "target_distinct"):
        s = h.series(name)
        assert np.isfinite(s[sampled]).all() and np.isnan(s[~sampled]).all(), name
    batch = h.series("batch_size")   # every step: the curve rules read the noise a batch size brings
    assert batch[0] == 64 and batch[-1] == 1400 - 21 * 64 and np.isfinite(batch).all() and h.series("target_is_index")[0] == 1.0
    assert np.isfinite(h.matrix("act_dead")[sampled]).all()
    ratios = h.matrix("update_ratios")[sampled][1:]            # step 0 has no earlier snapshot
    weights = np.asarray(probe.layout.is_weight)
    assert (ratios[:, weights] > 1e-5).all() and (ratios[:, weights] < 1e-1).all()
    vs, vl = h.val_sketch()
    assert len(vl) == 2 and vs[-1] == steps - 1 and np.isfinite(vl).all()
    assert probe.history.facts.n_classes == 10 and probe.history.facts.loss_kind == "cross_entropy"
    assert list(probe.layout.kinds) == ["relu", "relu"]


def test_the_flush_read_is_traced_once_whatever_the_validation_count():
    """Flushes carry 0, 1 or several validation losses: the packing graph takes them as one
    vector of any length (a retrace per count cost a trace and a TensorFlow warning each)."""
    model = mlp()
    model.compile(optimizer=make_opt("adam", 1e-3), loss=CE)
    probe = lossprobe.attach(model, config=lossprobe.Config(flush_every=5), sinks=[])
    model.fit(X_TR, Y_TR, batch_size=64, epochs=3, verbose=0, validation_data=(X_VA, Y_VA))
    for n in (2, 3):   # a flush with several validation values
        for _ in range(n):
            probe.observe(val_loss=tf.constant(1.0))
        probe.flush()
    traces = probe._backend._pack_fn.experimental_get_tracing_count()
    probe.detach()
    assert traces == 1
    assert len(probe.history.val_sketch()[1]) >= 3 + 5


def test_fit_with_jit_compile():
    probe = fit_run(mlp(bias=-5.0), epochs=4, jit=True)     # the step is compiled by XLA, probe ops included
    assert "dead_relu" in codes(probe)
    assert probe.history.n_steps == 88 and np.isfinite(probe.history.series("grad_norm")).all()
    assert np.isfinite(probe.history.series("loss")).all()


def test_steps_per_execution_keeps_every_step():
    model = mlp()
    model.compile(optimizer="adam", loss=CE, steps_per_execution=8)
    probe = lossprobe.attach(model, config=lossprobe.Config(flush_every=5), sinks=[])
    model.fit(X_TR, Y_TR, batch_size=64, epochs=2, verbose=0)
    probe.detach()
    steps = 2 * math.ceil(1400 / 64)
    assert list(probe.history.steps()) == list(range(steps))
    assert np.isfinite(probe.history.series("loss")).all()


def test_two_step_functions_measure_what_one_step_with_a_cond_measures():
    """fit with one step per call runs two traces of Keras' step (with and without the sampled
    statistics, picked on the host); with several steps per call one trace keeps them under a
    tf.cond. The training is the same, so the same steps must carry the same values."""
    def history(steps_per_execution: int, run_eagerly: bool = False):
        model = mlp()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=CE,
                      steps_per_execution=steps_per_execution, run_eagerly=run_eagerly)
        probe = lossprobe.attach(model, config=lossprobe.Config(activation_every=5), sinks=[])
        model.fit(X_TR, Y_TR, batch_size=64, epochs=2, verbose=0, shuffle=False)
        probe.detach()
        return probe.history

    two, one, eager = history(1), history(8), history(1, run_eagerly=True)
    sampled = is_sampled(two.steps(), 5)
    assert list(two.steps()) == list(one.steps()) == list(eager.steps()) and sampled.sum() >= 8
    for name in ("act_dead", "act_scale", "update_ratios", "param_norms", "param_grad_norms"):
        a, b, c = two.matrix(name), one.matrix(name), eager.matrix(name)
        assert np.isfinite(a[sampled]).any(), name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7, equal_nan=True, err_msg=name)
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-7, equal_nan=True, err_msg=name)
    for name in ("logit_std", "input_std", "target_distinct", "loss"):
        np.testing.assert_allclose(two.series(name), one.series(name), rtol=1e-4, equal_nan=True, err_msg=name)


def test_attach_after_first_fit_and_before_build():
    model = mlp()
    model.compile(optimizer="adam", loss=CE)
    first = model.fit(X_TR, Y_TR, batch_size=64, epochs=1, verbose=0)     # traced without the probe
    probe = lossprobe.attach(model, sinks=[])
    model.fit(X_TR, Y_TR, batch_size=64, epochs=1, verbose=0)
    probe.detach()
    assert probe.history.n_steps == 22 and np.isfinite(probe.history.series("grad_norm")).all()
    assert probe.history.series("loss")[0] < first.history["loss"][0]   # it went on from the first fit

    keras.utils.set_random_seed(0)
    unbuilt = keras.Sequential([keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    unbuilt.compile(optimizer="adam", loss=CE)
    probe = lossprobe.attach(unbuilt, sinks=[])                    # no variables yet
    unbuilt.fit(X_TR, Y_TR, batch_size=64, epochs=1, verbose=0)
    probe.detach()
    assert len(probe.layout.params) == 4 and probe.history.n_steps == 22
    assert np.isfinite(probe.history.matrix("param_grad_norms")).all()


def test_detach_restores_the_model_exactly(tmp_path):
    def run(attached):
        model = mlp(seed=3)
        model.compile(optimizer="adam", loss=CE)
        if attached:
            probe = lossprobe.attach(model, sinks=[])
            model.fit(X_TR, Y_TR, batch_size=64, epochs=1, verbose=0, shuffle=False)
            probe.detach()
        else:
            model.fit(X_TR, Y_TR, batch_size=64, epochs=1, verbose=0, shuffle=False)
        model.fit(X_TR, Y_TR, batch_size=64, epochs=1, verbose=0, shuffle=False)
        return model

    plain, probed = run(False), run(True)
    # the probe only observes: training with it attached is the same arithmetic, bit for bit
    for a, b in zip(plain.get_weights(), probed.get_weights()):
        np.testing.assert_array_equal(a, b)
    for obj in [probed, probed.optimizer, *probed.layers]:
        assert not {"call", "fit", "train_step", "compute_loss", "apply"} & set(vars(obj)), obj
    path = tmp_path / "m.keras"
    probed.save(path)
    loaded = keras.models.load_model(path, custom_objects={})
    for a, b in zip(loaded.get_weights(), probed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert _unnamed(loaded.get_config()) == _unnamed(plain.get_config())
    # and a second probe can attach to the detached model
    probe = lossprobe.attach(probed, sinks=[])
    probed.fit(X_TR[:128], Y_TR[:128], batch_size=64, epochs=1, verbose=0)
    probe.detach()
    assert probe.history.n_steps == 2


def _unnamed(config):
    """A model config without its auto-generated names (sequential_3, dense_7, ...)."""
    if isinstance(config, dict):
        return {k: _unnamed(v) for k, v in config.items() if k != "name"}
    if isinstance(config, (list, tuple)):
        return [_unnamed(v) for v in config]
    return config


def test_attaching_twice_raises():
    model = mlp()
    probe = lossprobe.attach(model, sinks=[])
    with pytest.raises(RuntimeError, match="already"):
        lossprobe.attach(model, sinks=[])
    probe.detach()
    lossprobe.attach(model, sinks=[]).detach()


def test_on_critical_raise_stops_fit():
    model = mlp()
    optimizer = make_opt("adam", 1e-3)
    model.compile(optimizer=optimizer, loss=nan_after(5)(optimizer))
    probe = lossprobe.attach(model, config=lossprobe.Config(on_critical="raise", flush_every=5), sinks=[])
    with pytest.raises(lossprobe.TrainingHealthError, match="nan_loss"):
        model.fit(X_TR, Y_TR, batch_size=64, epochs=5, verbose=0)
    probe.detach()
    assert probe.history.n_steps < 30


def test_keras_callback_form():
    model = mlp(bias=-5.0)
    model.compile(optimizer="adam", loss=CE)
    cb = LossProbeCallback(sinks=[])
    model.fit(X_TR, Y_TR, batch_size=64, epochs=4, verbose=0, validation_data=(X_VA, Y_VA), callbacks=[cb])
    assert "dead_relu" in codes(cb.probe) and cb.probe.history.n_steps == 88
    assert len(cb.probe.history.val_sketch()[1]) == 4
    assert "call" not in vars(model) and "fit" not in vars(model)      # detached at on_train_end


# -- custom GradientTape loops -----------------------------------------------------------------
def tape_run(model, *, steps=150, lr=1e-3, opt="adam", loss_fn=CE, x_fn=None, y_fn=None, compiled=True,
             targets=True, batch=64, val_every=0, config=None, x=X_TR, y=Y_TR):
    """A user's own loop; the probe gets one line: ``probe.observe(loss, gradients=grads)``."""
    optimizer = make_opt(opt, lr)
    probe = lossprobe.attach(model, optimizer=optimizer, config=config, sinks=[])

    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None])
        return loss, grads

    step_fn = tf.function(train_step) if compiled else train_step
    rng = np.random.default_rng(0)
    for step in range(steps):
        idx = rng.integers(0, len(x), batch)
        xb, yb = x[idx], y[idx]
        if x_fn:
            xb = x_fn(xb, step)
        if y_fn:
            yb = y_fn(yb, step)
        loss, grads = step_fn(xb, yb)
        probe.observe(loss, gradients=grads, targets=yb if targets else None)
        if val_every and step % val_every == val_every - 1:
            probe.observe(val_loss=loss_fn(Y_VA, model(X_VA, training=False)))
    probe.detach()
    return probe


def _nan_from(at):
    """An eager loss that turns NaN after ``at`` calls."""
    calls = {"n": 0}

    def fn(y, logits):
        calls["n"] += 1
        out = CE(y, logits)
        return out + float("nan") if calls["n"] > at else out
    return fn


def _random_labels(y, step):
    return np.random.default_rng(step).integers(0, 10, y.shape)


TAPE_FAULTS = {  # ``fixed=True``: the corrected twin, as in FIT_FAULTS
    "nan_loss": lambda fixed=False: tape_run(mlp(), loss_fn=CE if fixed else _nan_from(40), compiled=False,
                                             steps=60),
    "exploding_gradients": lambda fixed=False: tape_run(
        keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(1)]),
        opt="sgd", lr=5e-4, loss_fn=keras.losses.MeanSquaredError(), x=X_TR if fixed else X_TR * 16,
        y=Y_TR.astype("float32")[:, None], steps=60),
    "dead_relu": lambda fixed=False: tape_run(mlp(bias=0.0 if fixed else -5.0), steps=80),
    "softmax_overflow": lambda fixed=False: tape_run(scale_kernel(mlp(), 1.0 if fixed else 1e4), steps=60),
    "chance_level_loss": lambda fixed=False: tape_run(mlp(), y_fn=None if fixed else _random_labels, steps=100),
    "vanishing_gradients": lambda fixed=False: tape_run(mlp(depth=10, act="relu" if fixed else "sigmoid"),
                                                        steps=80),
    "frozen_parameters": lambda fixed=False: tape_run(side_branch_model(fixed=fixed), steps=40),
}


@pytest.mark.parametrize("code", sorted(TAPE_FAULTS))
def test_tape_planted_fault_is_diagnosed(code):
    probe = TAPE_FAULTS[code]()
    found = codes(probe)
    assert code in found, f"{code} not found; got {[(f.code, f.evidence) for f in probe.findings]}"


TAPE_HEALTHY = {
    "compiled-step": lambda: tape_run(mlp(), steps=200, val_every=40),
    "eager-step": lambda: tape_run(mlp(), steps=120, compiled=False),
}


# -- corrected twins: every planted fault above with its one mistake fixed --------------------
TWINS = {f"{TWIN}{code}/{way}": run for table, way in ((FIT_FAULTS, "fit"), (TAPE_FAULTS, "tape"))
         for code, run in table.items()}
# Here, one twin per code (the tape one where there is one; not overfitting's: 1175 steps);
# benchmarks/accuracy_tensorflow.py runs them all.
CI_TWINS = sorted({f"{TWIN}{code}/tape" for code in TAPE_FAULTS}
                  | {f"{TWIN}{code}/fit" for code in FIT_FAULTS.keys() - TAPE_FAULTS.keys() - {"overfitting"}})
# Twins the rules alarm today: the code that fires, and why it fires on a sound run.
ALARMED_TWINS: dict[str, str] = {}


@pytest.mark.parametrize("name", [twin_param(n, n, ALARMED_TWINS) for n in CI_TWINS])
def test_corrected_twin_learns_and_stays_silent(name):
    assert_sound_twin(TWINS[name](fixed=True))


@pytest.mark.parametrize("name", sorted(TAPE_HEALTHY))
def test_tape_healthy_run_is_silent(name):
    probe = TAPE_HEALTHY[name]()
    bad = [(f.code, f.step, f.evidence) for f in probe.findings if f.severity != "info"]
    assert probe.health == "healthy", bad
    h = probe.history
    assert h.n_steps >= 120 and np.isfinite(h.series("grad_norm")).all()
    assert probe._backend.n_host_reads <= math.ceil(h.n_steps / probe.config.flush_every) + 1
    sampled = is_sampled(h.steps(), probe.config.activation_every)
    # forward statistics come from the model.call / layer wrappers, traced into the user's step
    assert np.isfinite(h.matrix("act_dead")[sampled]).all()
    assert np.isfinite(h.series("logit_std")[sampled]).all()
    assert np.isfinite(h.series("target_distinct")[sampled]).all()
    assert np.isfinite(h.matrix("update_ratios")[sampled][1:][:, probe.layout.is_weight]).all()
    if name == "compiled-step":
        assert len(h.val_sketch()[1]) == 5
