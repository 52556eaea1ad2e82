"""What the flush-time cross-rank exchange costs under Paddle ``DataParallel``: bytes and time
per flush (one ``all_gather_object`` of every rank's per-step summaries).

Run on CPU with 2 ranks (gloo)::

    python -m paddle.distributed.launch --nproc_per_node 2 --log_dir /tmp/exlog \\
        benchmarks/exchange_paddle.py --steps 200 --flush-every 10

Rank 0 prints one line: the pickled summary each rank sends (``all_gather_object`` pads it to
the largest rank's and gathers an 8-byte length first), the median and 90th percentile of the
gather alone and of the whole merge (summaries, gather, rank table), per flush, and the median
wall time of a training step for scale. The gather's time includes waiting for the slower rank.
"""
from __future__ import annotations

import argparse
import json
import pickle
import time

import numpy as np
import paddle

import lossprobe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--flush-every", type=int, default=10)
    args = ap.parse_args()
    paddle.set_device("cpu")
    dist = paddle.distributed
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    X, Y = (x / 16.0).astype("float32"), y.astype("int64")
    paddle.seed(0)
    nn = paddle.nn
    model = paddle.DataParallel(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    opt = paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters())
    probe = lossprobe.attach(model, optimizer=opt, config=lossprobe.Config(flush_every=args.flush_every), sinks=[])
    ex = probe._backend.dist
    sent, gather_s, flush_s = [], [], []
    gather, on_flush = ex._gather, ex.on_flush

    def timed_gather(mine):
        sent.append(len(pickle.dumps(list(mine))))
        t = time.perf_counter()
        out = gather(mine)
        gather_s.append(time.perf_counter() - t)
        return out

    def timed_flush(*a):
        t = time.perf_counter()
        out = on_flush(*a)
        flush_s.append(time.perf_counter() - t)
        return out

    ex._gather, ex.on_flush = timed_gather, timed_flush
    rng = np.random.default_rng(rank)
    loss_fn = nn.CrossEntropyLoss()
    step_s = []
    for _ in range(args.steps):
        t = time.perf_counter()
        idx = rng.integers(0, len(Y), 32)
        loss = loss_fn(model(paddle.to_tensor(X[idx])), paddle.to_tensor(Y[idx]))
        loss.backward()
        opt.step()
        opt.clear_grad()
        step_s.append(time.perf_counter() - t)
    probe.detach()
    if rank == 0:
        ms = lambda v, q: round(1e3 * float(np.percentile(v, q)), 3)  # noqa: E731
        print(json.dumps({
            "world": world, "flush_every": args.flush_every, "flushes": len(gather_s),
            "bytes_sent_per_rank": int(np.median(sent)),
            "gather_ms_median": ms(gather_s, 50), "gather_ms_p90": ms(gather_s, 90),
            "merge_ms_median": ms(flush_s, 50), "merge_ms_p90": ms(flush_s, 90),
            "step_ms_median": ms(step_s, 50)}))


if __name__ == "__main__":
    main()
