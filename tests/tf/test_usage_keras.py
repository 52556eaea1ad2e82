"""Usage suite, Keras / TensorFlow (the Keras module of tests/usage; it runs in the TensorFlow
pytest process).

Training code as people write it, with the probe attached: the user's code behaves as
without the probe (the same weights, bit for bit) and a healthy run stays healthy.
Subclassed models, generators and tf.data, ``model.save`` while attached, and ``fit``
wrapped by a user decorator at class level (the probe's callback used to be dropped).
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import keras
from sklearn.datasets import load_digits

import lossprobe

_X, _Y = load_digits(return_X_y=True)
X = (_X / 16.0).astype("float32")[:1024]
Y = _Y.astype("int64")[:1024]
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(64, activation="relu")
        self.out = keras.layers.Dense(10)

    def call(self, x, training=None):
        return self.out(self.hidden(x))


def sequential():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])


def compiled(make, seed=0):
    keras.utils.set_random_seed(seed)
    model = make()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=CE)
    return model


def twice(train):
    plain, _ = train(False)
    probed, probe = train(True)
    for a, b in zip(plain.get_weights(), probed.get_weights()):
        np.testing.assert_array_equal(a, b)
    return probe


def healthy(probe, steps):
    h = probe.history
    assert h.n_steps == steps and (h.series("loss_seen") == 1).all()
    assert probe.health == "healthy", [f.code for f in probe.findings]


def test_subclassed_model_built_by_its_first_call():
    def train(probed):
        model = compiled(Subclassed)                  # not built at attach: the layout comes with the first flush
        probe = lossprobe.attach(model, sinks=[]) if probed else None
        model.fit(X, Y, batch_size=64, epochs=2, verbose=0, shuffle=False)
        if probe:
            probe.detach()
        return model, probe
    probe = twice(train)
    healthy(probe, 32)
    assert len(probe.layout.params) == 4 and probe.history.facts.n_classes == 10


def test_python_generator_and_tf_data():
    def gen():
        for i in range(0, 1024, 64):
            yield X[i:i + 64], Y[i:i + 64]
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(64)
    for data in (ds, gen):
        def train(probed):
            model = compiled(sequential)
            probe = lossprobe.attach(model, sinks=[]) if probed else None
            model.fit(data() if callable(data) else data, epochs=1, verbose=0)
            if probe:
                probe.detach()
            return model, probe
        healthy(twice(train), 16)


def test_model_save_while_attached(tmp_path):
    model = compiled(sequential)
    probe = lossprobe.attach(model, sinks=[])
    model.fit(X, Y, batch_size=64, epochs=1, verbose=0)
    model.save(tmp_path / "mid.keras")                 # a checkpoint in the middle of training
    model.fit(X, Y, batch_size=64, epochs=1, verbose=0)
    probe.detach()
    loaded = keras.models.load_model(tmp_path / "mid.keras")
    assert not {"call", "fit", "train_step", "compute_loss"} & set(vars(loaded))   # no probe in the file
    assert loaded.predict(X[:4], verbose=0).shape == (4, 10)
    healthy(probe, 32)


def test_fit_wrapped_by_a_user_decorator_at_class_level():
    """A decorator with *args/**kwargs around keras.Model.fit (a harness, a tracker) hid the
    callbacks argument from the probe: its callback was dropped and nothing was recorded."""
    original = keras.Model.fit

    def fit(self, *args, **kwargs):            # no functools.wraps: the signature says nothing
        return original(self, *args, **kwargs)

    keras.Model.fit = fit
    try:
        for callbacks in (None, [keras.callbacks.TerminateOnNaN()]):
            for by_position in (False, True):
                model = compiled(sequential)
                probe = lossprobe.attach(model, sinks=[])
                if by_position:
                    model.fit(X, Y, 64, 1, 0, callbacks)
                else:
                    model.fit(X, Y, batch_size=64, epochs=1, verbose=0, callbacks=callbacks)
                probe.detach()
                healthy(probe, 16)
    finally:
        keras.Model.fit = original


def test_saturation_is_a_logit_margin_the_same_on_every_cpu():
    """tf.nn.softmax of logits ~1e4 is 0.99999994 on some CPUs: the statistic never rounds."""
    from lossprobe.capture.ops import ops_for
    from lossprobe.capture.stats import output_stats
    rows = tf.constant([[0.0, 0.0, -200.0], [1e4, 0.0, 0.0], [1.0, 2.0, 3.0]])
    logit_max, _, _, sat, under, prob, bad = output_stats(ops_for("tensorflow"), rows).numpy()
    assert (sat, under, prob, bad) == pytest.approx((1 / 3, 2 / 3, 0.0, 0.0))
