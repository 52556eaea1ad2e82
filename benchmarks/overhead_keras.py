"""Overhead of lossprobe on Keras ``model.fit``: step time with the probe / step time without.

Run on its own (TensorFlow only; this process never imports torch or paddle)::

    python benchmarks/overhead_keras.py                  # 7 blocks x 4 fits of 20 timed steps per copy
    python benchmarks/overhead_keras.py --blocks 3 --rounds 2
    python benchmarks/overhead.py --frameworks keras      # the same, from the driver

The model is the design note's anchor: a 4-layer MLP (784-512-512-512-10, ReLU), batch 128,
random numpy data, SGD, one intra-op thread. Each configuration is timed against an
un-probed twin in the same process: two compiled copies (same seed) take turns, one ``fit``
call of ``--warmup`` + ``--chunk`` batches each, ``--rounds`` turns per block, and which copy
is probed alternates from block to block (``_ratio.alternate``). ``lossprobe.attach(model,
sinks=[])`` happens before the block's first fit and ``detach`` after its last, both untimed.
A timing callback starts the clock at the beginning of batch ``--warmup`` of each fit (tracing
and XLA compilation happen in the first fit and batch, and the fit's own set-up is not a
training step) and stops it at the epoch's end, where Keras has synchronized the logs; it uses
no batch-end hook, so Keras keeps its asynchronous batch-end dispatch, as in a plain ``fit``.
"plain" is the A/A pair (neither copy probed): the method's own bias and spread. The median
over every block's chunk pairs is reported (``_ratio.Paired``); the last stdout line is
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
from _ratio import GLIBC_DEFAULT_FLAG, Paired, alternate, fixed_malloc, malloc_note, twin_step  # noqa: E402

BATCH = 128


def make_model(jit: bool) -> keras.Model:
    """A fresh, compiled 4-layer MLP (same seed every time)."""
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
    """Wall time from the start of batch ``warmup`` to the end of the epoch."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup = warmup
        self.t0: float | None = None
        self.seconds: float | None = None

    def on_train_begin(self, logs=None):
        self.t0 = self.seconds = None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.warmup:
            self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.t0 is not None:
            self.seconds = time.perf_counter() - self.t0


def block_pairs(jit: bool, probed: bool, flip: bool, x: np.ndarray, y: np.ndarray, args) -> tuple[list, float]:
    """(the chunk pairs' (twin, configured) seconds, twin seconds per step) of one block."""
    keras.backend.clear_session()
    pair = [make_model(jit), make_model(jit)]
    if flip:
        pair.reverse()
    probe = lossprobe.attach(pair[1], sinks=[]) if probed else None   # untimed
    timer = StepTimer(args.warmup)

    def run_chunk(i: int) -> float:
        pair[i].fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        if timer.seconds is None:
            raise RuntimeError("the timing callback never started: fewer batches than --warmup?")
        return timer.seconds

    try:
        pairs = alternate(run_chunk, args.rounds)
    finally:
        if probe is not None:
            probe.detach()                                            # untimed
    if probe is not None:  # the probe must really have recorded the steps it was timed on
        seen, ran = len(probe.history.steps()), (args.rounds + 2) * (args.warmup + args.chunk)
        if seen < min(ran, probe.config.window):
            print(f"  warning: probe recorded {seen} of {ran} steps (jit={jit})")
    return pairs, twin_step(pairs, args.chunk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=4, help="timed fits per copy in a block")
    ap.add_argument("--chunk", type=int, default=20, help="timed batches per fit")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches at the start of each fit")
    ap.add_argument("--no-jit", action="store_true", help="skip the jit_compile=True pair")
    ap.add_argument(GLIBC_DEFAULT_FLAG, action="store_true", help="keep glibc's heap trimming (benchmarks/_ratio.py)")
    args = ap.parse_args()
    fixed_malloc()
    print(f"# {malloc_note()}")

    rng = np.random.default_rng(0)
    n = (args.warmup + args.chunk) * BATCH
    x = rng.standard_normal((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)

    # name -> (jit_compile, probed)
    configs = {"keras-fit-plain": (False, False), "keras-fit-lossprobe-default": (False, True)}
    if not args.no_jit:
        try:
            block_pairs(True, True, False, x, y, argparse.Namespace(warmup=args.warmup, chunk=args.chunk, rounds=1))
            configs.update({"keras-fit-jit-plain": (True, False), "keras-fit-jit-lossprobe-default": (True, True)})
        except Exception as e:  # XLA missing or the probe refused it: report and go on
            print(f"[keras] jit_compile=True skipped: {type(e).__name__}: {e}")

    pairs: dict[str, list[list[tuple[float, float]]]] = {c: [] for c in configs}   # per block, its chunk pairs
    twin: dict[str, list[float]] = {c: [] for c in configs}
    names = list(configs)
    t_start = time.perf_counter()
    for block in range(args.blocks):
        k = block % len(names)
        for name in names[k:] + names[:k]:  # rotate the order so no configuration always goes first
            jit, probed = configs[name]
            ps, step = block_pairs(jit, probed, bool(block % 2), x, y, args)
            pairs[name].append(ps)
            twin[name].append(step)

    print(f"\n[keras mlp fit, tensorflow {tf.__version__}, keras {keras.__version__}, 1 thread] "
          f"{args.blocks} blocks, each {args.rounds} fits of {args.chunk} timed steps (+{args.warmup}) per copy, "
          f"{time.perf_counter() - t_start:.0f} s")
    results: dict[str, dict] = {}
    for name, ps in pairs.items():
        r = Paired.from_pairs(ps)
        base = statistics.median(twin[name])
        label = f"A/A ({name}): both un-probed" if not configs[name][1] else name
        print(f"  {label:<40} twin {base * 1e3:7.3f} ms/step  ratio {r}  added {(r.median - 1) * base * 1e6:6.0f} us/step")
        results[name] = r.as_dict()
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
