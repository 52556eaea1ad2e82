"""Diagnose a Keras model trained with ``model.fit`` under ``tf.distribute.MirroredStrategy``.

    python examples/keras_mirrored.py              # ten sigmoid layers: vanishing gradients
    python examples/keras_mirrored.py healthy      # the same depth with ReLU, trained soundly

With two or more GPUs the strategy uses them all; otherwise the CPU is split into two
logical devices, so the example runs anywhere with two replicas. Attach after building
and compiling the model inside ``strategy.scope()``; the probe finds the strategy itself,
keeps one statistics ring per replica inside the compiled step and, at each flush, combines
the replicas' rows into one record per step (see lossprobe/backends/tf_dist.py).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import lossprobe  # noqa: E402


def two_replicas() -> tf.distribute.MirroredStrategy:
    """Every GPU when there are two or more, else two logical CPU devices (this must run
    before TensorFlow's first operation)."""
    if len(tf.config.list_physical_devices("GPU")) >= 2:
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def build(fault: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    act = "relu" if fault == "healthy" else "sigmoid"
    return keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(64, activation=act) for _ in range(10)]
                            + [keras.layers.Dense(10)])


def main(fault: str = "vanishing_gradients") -> lossprobe.Probe:
    strategy = two_replicas()
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    with strategy.scope():
        model = build(fault)
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    probe = lossprobe.attach(model)                      # console sink by default
    model.fit(x[:1400], y[:1400], validation_data=(x[1400:], y[1400:]), epochs=4, batch_size=64, verbose=0)
    probe.detach()

    print(f"\n{strategy.num_replicas_in_sync} replicas; health: {probe.health}")
    for f in probe.findings:
        print(f"- {f.code} ({f.severity}, from step {f.step}): {f.message}")
        print(f"  first fix to try: {f.fixes[0]}")
    return probe


if __name__ == "__main__":
    main(*sys.argv[1:2])
