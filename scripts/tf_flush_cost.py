"""What one flush of the Keras backend costs under MirroredStrategy: time on the training
thread per flush and bytes copied from the devices to the host, at 1 or 2 replicas.

    python scripts/tf_flush_cost.py --replicas 2      # the CPU split into two logical devices
    python scripts/tf_flush_cost.py --replicas 1      # the same model without a strategy

A 4-layer MLP (64-256-256-256-10) on scikit-learn digits, global batch 64, 10 epochs of
model.fit, flush_every 20 (the default); prints the median and max flush time and the bytes
of the one packed host copy of each flush.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    cpu = tf.config.list_physical_devices("CPU")[0]
    if args.replicas > 1:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas)
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    else:
        strategy = tf.distribute.get_strategy()

    import keras
    from sklearn.datasets import load_digits
    import lossprobe

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype("float32"), y.astype("int64")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(256, activation="relu") for _ in range(3)]
                                 + [keras.layers.Dense(10)])
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    probe = lossprobe.attach(model, sinks=[])
    backend = probe.backend
    times, sizes = [], []
    flush, pack = backend.flush, backend._pack

    def timed_flush():   # only the flushes that read the devices count
        reads, t = backend.n_host_reads, time.perf_counter()
        flush()
        if backend.n_host_reads > reads:
            times.append(time.perf_counter() - t)

    def sized_pack(extra):
        packed = pack(extra)
        sizes.append(int(packed.shape[0]) * packed.dtype.size)
        return packed

    backend.flush, backend._pack = timed_flush, sized_pack
    model.fit(x, y, batch_size=64, epochs=args.epochs, verbose=0)
    probe.detach()
    t_ms = np.array(times) * 1e3
    print(f"replicas={strategy.num_replicas_in_sync} steps={probe.history.n_steps} host reads={backend.n_host_reads} "
          f"flush_every={probe.config.flush_every} ring={backend.R}x{backend.K}")
    print(f"bytes per flush: {sizes[0] if sizes else 0}; time per flush (ms): median {np.median(t_ms):.2f}, "
          f"max {t_ms.max():.2f} over {len(times)} flushes")


if __name__ == "__main__":
    main()
