"""Overhead of lossprobe on a Paddle dygraph loop: step time with the probe / step time without.

Run on its own (Paddle only; this process never imports torch or TensorFlow)::

    python benchmarks/overhead_paddle.py                 # 7 blocks x 4 chunks of 20 steps per copy
    python benchmarks/overhead_paddle.py --blocks 3 --rounds 2
    python benchmarks/overhead.py --frameworks paddle     # the same, from the driver

The model is the design note's anchor: a 4-layer MLP (784-512-512-512-10, ReLU), batch 128,
random numpy data, SGD, one CPU thread. The loop is the ordinary dygraph loop; the probed
configuration adds the one documented line::

    loss = loss_fn(net(x), y)
    loss.backward(); opt.step(); opt.clear_grad()
    probe.observe(loss, targets=y)          # only when probed

Each configuration is timed against an un-probed twin in the same process: two copies of the
network (same seed) train in alternating chunks of ``--chunk`` steps, ``--rounds`` chunks each
per block, and which copy is probed alternates from block to block (``_ratio.alternate``).
``lossprobe.attach(net, optimizer=opt, sinks=[])`` / ``detach()`` happen outside the timed
chunks. "plain" is the A/A pair (neither copy probed): the method's own bias and spread. The
median over every block's chunk pairs is reported (``_ratio.Paired``); the last stdout line is
``RESULT {"paddle-loop-lossprobe-default": ratio, ...}`` for ``benchmarks/overhead.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

# one thread, set before Paddle loads its math libraries
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", message="No ccache found")

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from paddle import nn  # noqa: E402

import lossprobe  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ratio import GLIBC_DEFAULT_FLAG, Paired, alternate, fixed_malloc, malloc_note, twin_step  # noqa: E402

BATCH = 128


def set_one_thread() -> None:
    try:
        paddle.base.core.set_num_threads(1)
    except Exception:  # not in every build; the environment variables above still apply
        pass


def make_net() -> nn.Layer:
    paddle.seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def block_pairs(probed: bool, flip: bool, x: paddle.Tensor, y: paddle.Tensor, args) -> tuple[list, float]:
    """(the chunk pairs' (twin, configured) seconds, twin seconds per step) of one block."""
    pair = []
    for _ in range(2):
        net = make_net()
        pair.append((net, paddle.optimizer.SGD(learning_rate=0.01, parameters=net.parameters())))
    if flip:
        pair.reverse()
    loss_fn = nn.CrossEntropyLoss()
    probe = lossprobe.attach(pair[1][0], optimizer=pair[1][1], sinks=[]) if probed else None   # untimed

    def run_chunk(i: int) -> float:
        net, opt = pair[i]
        observe = probe.observe if (probe is not None and i == 1) else None
        t0 = time.perf_counter()
        for _ in range(args.chunk):
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            opt.clear_grad()
            if observe is not None:
                observe(loss, targets=y)
        float(loss)  # the chunk's last step has finished (a no-op wait on CPU)
        return time.perf_counter() - t0

    try:
        pairs = alternate(run_chunk, args.rounds)
    finally:
        if probe is not None:
            probe.detach()                                                                  # untimed
    if probe is not None:  # the probe must really have recorded the steps it was timed on
        seen, ran = len(probe.history.steps()), (args.rounds + 2) * args.chunk
        if seen < min(ran, probe.config.window):
            print(f"  warning: probe recorded {seen} of {ran} steps")
    return pairs, twin_step(pairs, args.chunk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=4, help="timed chunks per copy in a block")
    ap.add_argument("--chunk", type=int, default=20, help="steps per chunk (the probe's flush_every)")
    ap.add_argument(GLIBC_DEFAULT_FLAG, action="store_true", help="keep glibc's heap trimming (benchmarks/_ratio.py)")
    args = ap.parse_args()
    fixed_malloc()
    print(f"# {malloc_note()}")
    paddle.set_device("cpu")
    set_one_thread()

    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((BATCH, 784), dtype=np.float32))
    y = paddle.to_tensor(rng.integers(0, 10, BATCH).astype(np.int64))

    configs = {"paddle-loop-plain": False, "paddle-loop-lossprobe-default": True}
    names = list(configs)
    pairs: dict[str, list[list[tuple[float, float]]]] = {c: [] for c in configs}   # per block, its chunk pairs
    twin: list[float] = []
    t_start = time.perf_counter()
    for block in range(args.blocks):
        k = block % len(names)
        for name in names[k:] + names[:k]:  # rotate the order so no configuration always goes first
            ps, step = block_pairs(configs[name], bool(block % 2), x, y, args)
            pairs[name].append(ps)
            twin.append(step)

    base = statistics.median(twin)
    print(f"\n[paddle mlp dygraph loop, paddle {paddle.__version__}, 1 thread] un-probed step = {base * 1e3:.3f} ms; "
          f"{args.blocks} blocks, each {args.rounds} alternating chunks of {args.chunk} steps per copy, "
          f"{time.perf_counter() - t_start:.0f} s")
    results: dict[str, dict] = {}
    for name, ps in pairs.items():
        r = Paired.from_pairs(ps)
        label = "A/A: both copies un-probed" if not configs[name] else name
        print(f"  {label:<34} ratio {r}  added {(r.median - 1) * base * 1e6:7.0f} us/step")
        results[name] = r.as_dict()
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
