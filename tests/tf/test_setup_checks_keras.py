"""Set-up checks on real Keras 3 ``model.fit`` runs: each planted mistake gets its code, and the
same script with that one mistake fixed (its corrected twin) learns and stays silent.

The four mistakes, each a line a Keras user writes:

* ``output_activation_mismatch``: a ReLU output layer under ``sparse_categorical_crossentropy``,
  which (``from_logits=False``) expects probabilities. Twin: a softmax output.
* ``excessive_dropout``: ``Dropout(0.9)`` on the hidden layers, a keep-probability passed as the
  drop rate. Twin: ``Dropout(0.1)``.
* ``unscaled_targets``: MSE regression on targets in raw units (~2e5 + 5e4 * z). Twin: the
  standardised targets z.
* ``zero_gradients``: the sigmoid output thresholded to 0/1 before the loss. Twin: no threshold.
  The threshold is written with ``keras.ops.sign``, whose TensorFlow gradient is exactly zero.
  ``keras.ops.round`` cannot plant this fault in Keras on TensorFlow: TensorFlow gives Round no
  gradient (``None``, not zero), so ``fit`` stops at once with "No gradients provided for any
  variable" -- the user gets an error, not a silently untrainable model.

Run apart from Paddle: ``python -m pytest tests/tf -q``.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_digits

import lossprobe

pytestmark = pytest.mark.tensorflow

_X, _Y = load_digits(return_X_y=True)
DIGITS_X = (_X / 16.0).astype("float32")[:1400]
DIGITS_Y = _Y.astype("int64")[:1400]
LOW_DIGIT = (DIGITS_Y < 5).astype("float32")[:, None]          # a binary target: is the digit 0-4?

_RX, _RY = load_diabetes(return_X_y=True)
REG_X = ((_RX - _RX.mean(0)) / _RX.std(0)).astype("float32")
REG_Z = ((_RY - _RY.mean()) / _RY.std()).astype("float32")[:, None]   # standardised targets
REG_RAW = 2e5 + 5e4 * REG_Z                                          # the same targets in raw units

L = keras.layers


def net(n_in: int, *layers: keras.layers.Layer, seed: int = 0) -> keras.Model:
    """``Input((n_in,)) -> layers``, seeded."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((n_in,)), *layers])


def fit(model: keras.Model, x, y, loss, *, epochs: int, lr: float = 1e-3, batch: int = 64):
    """compile + attach + fit + detach; returns the probe."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=loss)
    probe = lossprobe.attach(model, sinks=[])
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
    probe.detach()
    return probe


def classifier(out_activation: str):
    return fit(net(64, L.Dense(64, activation="relu"), L.Dense(10, activation=out_activation)),
               DIGITS_X, DIGITS_Y, "sparse_categorical_crossentropy", epochs=4)


def dropout_mlp(rate: float):
    model = net(64, L.Dense(64, activation="relu"), L.Dropout(rate), L.Dense(64, activation="relu"),
                L.Dropout(rate), L.Dense(10))
    return fit(model, DIGITS_X, DIGITS_Y,
               keras.losses.SparseCategoricalCrossentropy(from_logits=True), epochs=4)


def regression(targets):
    return fit(net(10, L.Dense(32, activation="relu"), L.Dense(1)), REG_X, targets, "mse",
               epochs=12, lr=3e-3, batch=32)


class HardThreshold(keras.layers.Layer):
    """Rounds a probability to 0 or 1 (via sign: exactly zero gradient on TensorFlow)."""

    def call(self, p):
        return 0.5 * keras.ops.sign(p - 0.5) + 0.5


def binary(threshold: bool):
    model = net(64, L.Dense(32, activation="relu"), L.Dense(1, activation="sigmoid"),
                *([HardThreshold()] if threshold else []))
    return fit(model, DIGITS_X, LOW_DIGIT, "binary_crossentropy", epochs=4, lr=1e-2)


# code -> run(fixed): ``fixed=True`` is the corrected twin, the same run with its mistake fixed
FAULTS = {
    "output_activation_mismatch": lambda fixed=False: classifier("softmax" if fixed else "relu"),
    "excessive_dropout": lambda fixed=False: dropout_mlp(0.1 if fixed else 0.9),
    "unscaled_targets": lambda fixed=False: regression(REG_Z if fixed else REG_RAW),
    "zero_gradients": lambda fixed=False: binary(threshold=not fixed),
}


def describe(probe) -> str:
    return "; ".join(f"{f.code}/{f.severity}@{f.step} {f.evidence}" for f in probe.findings)


@pytest.mark.parametrize("code", sorted(FAULTS))
def test_planted_fault_is_found(code):
    probe = FAULTS[code]()
    found = {f.code for f in probe.findings if f.severity in ("warning", "critical")}
    assert code in found, f"{code} not found; facts {probe.history.facts}; findings: {describe(probe)}"


@pytest.mark.parametrize("code", sorted(FAULTS))
def test_corrected_twin_learns_and_stays_silent(code):
    probe = FAULTS[code](fixed=True)
    h = probe.history
    loss = h.series("loss")[(h.series("loss_seen") > 0)]
    loss = loss[np.isfinite(loss)]
    assert loss.size >= 30, loss.size
    head, tail = float(np.median(loss[:10])), float(np.median(loss[-20:]))
    assert tail < 0.7 * head, f"the twin does not learn: loss {head:.3g} -> {tail:.3g}"
    alarms = [f for f in probe.findings if f.severity != "info" and not f.resolved]
    assert not alarms, describe(probe)


@pytest.mark.parametrize("layers, expected", [
    ([L.Dense(1, activation="sigmoid"), HardThreshold()], ""),          # a custom layer: unknown, not linear
    ([L.Dense(10, activation="sigmoid"), L.Reshape((10, 1)), L.Flatten()], "sigmoid"),   # seen through reshapes
    ([L.Dense(10)], "linear"),
], ids=["custom", "reshaped", "dense"])
def test_output_activation_is_read_from_the_layer_that_makes_the_values(layers, expected):
    model = net(64, *layers)
    model.compile(optimizer="adam", loss="mse")
    probe = lossprobe.attach(model, sinks=[])
    model.fit(DIGITS_X[:64], np.zeros((64, model.output_shape[-1]), "float32"), batch_size=32, verbose=0)
    probe.detach()
    assert probe.history.facts.output_activation == expected
