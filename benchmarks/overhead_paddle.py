"""Overhead of lossprobe on a Paddle dygraph loop: step time with the probe / step time without.

Run on its own (Paddle only; this process never imports torch or TensorFlow)::

    python benchmarks/overhead_paddle.py                 # 7 blocks, 150 timed steps per run
    python benchmarks/overhead_paddle.py --blocks 3 --steps 100
    python benchmarks/overhead.py --frameworks paddle     # the same, from the driver

The model is the design note's anchor: a 4-layer MLP (784-512-512-512-10, ReLU), batch 128,
random numpy data, SGD, one CPU thread. The loop is the ordinary dygraph loop; the probed
configuration adds the one documented line::

    loss = loss_fn(net(x), y)
    loss.backward(); opt.step(); opt.clear_grad()
    probe.observe(loss, targets=y)          # only when probed

Configurations run interleaved in blocks (the order rotates from block to block); in every
block each configuration gets a fresh network and optimizer, and ``lossprobe.attach(net,
optimizer=opt, sinks=[])`` / ``detach()`` happen outside the timed region. The first
``--warmup`` steps are not timed. The median over blocks is reported; the last stdout line is
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
from _ratio import Paired  # noqa: E402

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


def run_once(probed: bool, x: paddle.Tensor, y: paddle.Tensor, args) -> float:
    """warmup + steps training steps on a fresh network; seconds per timed step."""
    net = make_net()
    opt = paddle.optimizer.SGD(learning_rate=0.01, parameters=net.parameters())
    loss_fn = nn.CrossEntropyLoss()
    probe = lossprobe.attach(net, optimizer=opt, sinks=[]) if probed else None   # untimed
    try:
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                t0 = time.perf_counter()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            opt.clear_grad()
            if probe is not None:
                probe.observe(loss, targets=y)
        float(loss)  # make sure the last step has finished (a no-op wait on CPU)
        per_step = (time.perf_counter() - t0) / args.steps
    finally:
        if probe is not None:
            probe.detach()                                                      # untimed
    if probe is not None:  # the probe must really have recorded the steps it was timed on
        seen = len(probe.history.steps())
        if seen < min(args.warmup + args.steps, probe.config.window):
            print(f"  warning: probe recorded {seen} of {args.warmup + args.steps} steps")
    return per_step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--steps", type=int, default=150, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps at the start of each run")
    args = ap.parse_args()
    paddle.set_device("cpu")
    set_one_thread()

    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((BATCH, 784), dtype=np.float32))
    y = paddle.to_tensor(rng.integers(0, 10, BATCH).astype(np.int64))

    configs = {"paddle-loop-plain": False, "paddle-loop-lossprobe-default": True}
    names = list(configs)
    times: dict[str, list[float]] = {c: [] for c in configs}
    t_start = time.perf_counter()
    for block in range(args.blocks):
        k = block % len(names)
        for name in names[k:] + names[:k]:  # rotate the order so no configuration always goes first
            times[name].append(run_once(configs[name], x, y, args))

    print(f"\n[paddle mlp dygraph loop, paddle {paddle.__version__}, 1 thread] "
          f"{args.blocks} blocks x {args.steps} timed steps (+{args.warmup} warm-up), "
          f"{time.perf_counter() - t_start:.0f} s")
    results: dict[str, dict] = {}
    for name, ts in times.items():
        r = Paired.of(ts, times["paddle-loop-plain"])   # within each block
        print(f"  {name:<34} {statistics.median(ts) * 1e3:8.3f} ms/step  ratio {r}")
        if configs[name]:
            results[name] = r.as_dict()
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
