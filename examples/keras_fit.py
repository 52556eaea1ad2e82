"""Diagnose a Keras model trained with plain ``model.fit``.

    python examples/keras_fit.py                 # softmax output fed to a from_logits=True loss
    python examples/keras_fit.py dead_relu       # ReLU layers whose biases start at -5
    python examples/keras_fit.py healthy         # the same model, trained soundly

The probe attaches to the compiled model; ``fit`` runs unchanged (the statistics are
computed inside the compiled training step and read every ``flush_every`` steps).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import lossprobe  # noqa: E402


def build(fault: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    bias = keras.initializers.Constant(-5.0 if fault == "dead_relu" else 0.0)
    head = "softmax" if fault == "double_softmax" else None   # probabilities, not logits
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu", bias_initializer=bias),
        keras.layers.Dense(64, activation="relu", bias_initializer=bias),
        keras.layers.Dense(10, activation=head),
    ])


def main(fault: str = "double_softmax") -> lossprobe.Probe:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    model = build(fault)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    probe = lossprobe.attach(model)                      # console sink by default
    model.fit(x[:1400], y[:1400], validation_data=(x[1400:], y[1400:]), epochs=6, batch_size=64, verbose=0)
    probe.detach()                                       # restores the model exactly

    print(f"\nhealth: {probe.health}")
    for f in probe.findings:
        print(f"- {f.code} ({f.severity}, from step {f.step}): {f.message}")
        print(f"  evidence: {f.evidence}")
        print(f"  first fix to try: {f.fixes[0]}")
    return probe


if __name__ == "__main__":
    main(*sys.argv[1:2])
