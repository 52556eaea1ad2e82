"""Overhead of lossprobe on Keras ``model.fit``: step time with the probe / step time without.

Run on its own (TensorFlow only; this process never imports torch or paddle)::

    python benchmarks/overhead_keras.py                  # 7 blocks, 120 timed steps per fit
    python benchmarks/overhead_keras.py --blocks 3 --steps 100
    python benchmarks/overhead.py --frameworks keras      # the same, from the driver

The model is the design note's anchor: a 4-layer MLP (784-512-512-512-10, ReLU), batch 128,
random numpy data, SGD, one intra-op thread. Configurations run interleaved in blocks
(the order rotates from block to block); in every block each configuration gets a fresh
model, ``compile``, and (for the probed ones) ``lossprobe.attach(model, sinks=[])`` *before*
``fit`` and ``detach`` after it, both outside the timed region. One ``fit`` call covers
``--warmup`` + ``--steps`` batches in a single epoch; a timing callback starts the clock at the
beginning of batch ``--warmup`` (tracing and XLA compilation happen in the first batch, so they
are excluded) and stops it at the epoch's end, where Keras has synchronized the logs. The timing
callback uses no batch-end hook, so Keras keeps its asynchronous batch-end dispatch, as in a
plain ``fit``. The median over blocks is reported; the last stdout line is
``RESULT {"keras-fit-lossprobe-default": ratio, ...}`` for ``benchmarks/overhead.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# one thread, set before TensorFlow starts its runtime
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402

import lossprobe  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ratio import Paired  # noqa: E402

BATCH = 128


def make_model(jit: bool) -> keras.Model:
    """A fresh, compiled 4-layer MLP (same seed every time)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    return model


class StepTimer(keras.callbacks.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the epoch, per step."""

    def __init__(self, warmup: int, steps: int):
        super().__init__()
        self.warmup, self.steps = warmup, steps
        self.t0: float | None = None
        self.per_step: float | None = None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.warmup:
            self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.t0 is not None:
            self.per_step = (time.perf_counter() - self.t0) / self.steps


def run_once(jit: bool, probed: bool, x: np.ndarray, y: np.ndarray, args) -> float:
    """One fit of warmup + steps batches; seconds per timed step."""
    model = make_model(jit)
    probe = lossprobe.attach(model, sinks=[]) if probed else None   # untimed
    timer = StepTimer(args.warmup, args.steps)
    try:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    finally:
        if probe is not None:
            probe.detach()                                          # untimed
    if timer.per_step is None:
        raise RuntimeError("the timing callback never started: fewer batches than --warmup?")
    if probe is not None:  # the probe must really have recorded the steps it was timed on
        seen = len(probe.history.steps())
        if seen < min(args.warmup + args.steps, probe.config.window):
            print(f"  warning: probe recorded {seen} of {args.warmup + args.steps} steps (jit={jit})")
    return timer.per_step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--steps", type=int, default=120, help="timed steps per fit")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps at the start of each fit")
    ap.add_argument("--no-jit", action="store_true", help="skip the jit_compile=True pair")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n = (args.warmup + args.steps) * BATCH
    x = rng.standard_normal((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)

    # name -> (jit_compile, probed)
    configs = {"keras-fit-plain": (False, False), "keras-fit-lossprobe-default": (False, True)}
    if not args.no_jit:
        try:
            run_once(True, True, x[: (args.warmup + 2) * BATCH], y[: (args.warmup + 2) * BATCH],
                     argparse.Namespace(warmup=args.warmup, steps=2))
            configs.update({"keras-fit-jit-plain": (True, False), "keras-fit-jit-lossprobe-default": (True, True)})
        except Exception as e:  # XLA missing or the probe refused it: report and go on
            print(f"[keras] jit_compile=True skipped: {type(e).__name__}: {e}")

    times: dict[str, list[float]] = {c: [] for c in configs}
    names = list(configs)
    t_start = time.perf_counter()
    for block in range(args.blocks):
        k = block % len(names)
        for name in names[k:] + names[:k]:  # rotate the order so no configuration always goes first
            jit, probed = configs[name]
            times[name].append(run_once(jit, probed, x, y, args))

    print(f"\n[keras mlp fit, tensorflow {tf.__version__}, keras {keras.__version__}, 1 thread] "
          f"{args.blocks} blocks x {args.steps} timed steps (+{args.warmup} warm-up), "
          f"{time.perf_counter() - t_start:.0f} s")
    results: dict[str, dict] = {}
    for name, ts in times.items():
        base_name = "keras-fit-jit-plain" if configs[name][0] else "keras-fit-plain"
        r = Paired.of(ts, times[base_name])   # within each block
        print(f"  {name:<34} {statistics.median(ts) * 1e3:8.3f} ms/step  ratio {r}")
        if configs[name][1]:
            results[name] = r.as_dict()
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
