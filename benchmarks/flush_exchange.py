"""What the flush-time exchange between ranks costs: bytes and seconds per flush, at 2 ranks.

Two CPU processes (gloo on 127.0.0.1) train an MLP of ``--layers`` hidden layers of
``--width`` units under FSDP2 (every layer sharded) and under DDP, with the probe attached;
the one ``all_gather_object`` of each flush (``DistHelper._gather``) is timed and its payload
(what each rank pickles) measured, after a barrier so that the time is the exchange's and not
the wait for the slower rank; and so is the whole cross-rank part of the flush
(``DistHelper.on_flush``: summaries, the exchange, the merge; with that barrier's wait)::

    .venv/bin/python benchmarks/flush_exchange.py                      # 10 x 64, flush_every 20
    .venv/bin/python benchmarks/flush_exchange.py --layers 40 --width 256

Prints, per mode, the medians over the flushes of rank 0 (the first flush, which sets up
gloo's buffers, is left out).
"""
from __future__ import annotations

import argparse
import os
import pickle
import socket
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import lossprobe


def _timed(fn, log: list):
    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        log.append(time.perf_counter() - t)
        return out
    return timed


def _run(mode: str, layers: int, width: int, flush_every: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())],
                          nn.Linear(width, 10))
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for m in model:
            if isinstance(m, nn.Linear):
                fully_shard(m)
        fully_shard(model)
    else:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[], config=lossprobe.Config(flush_every=flush_every))
    helper = probe._backend.dist
    gathers, flushes, payload = [], [], []
    gather, on_flush = helper._gather, helper.on_flush

    def measured_gather(mine):
        payload.append(len(pickle.dumps(mine)))
        dist.barrier()      # both ranks at the exchange: its time, not the wait for the slower rank
        t = time.perf_counter()
        out = gather(mine)
        gathers.append(time.perf_counter() - t)
        return out
    helper._gather = measured_gather
    helper.on_flush = _timed(on_flush, flushes)
    gen = torch.Generator().manual_seed(dist.get_rank())
    for _ in range(steps):
        x = torch.randn(64, width, generator=gen)
        y = torch.randint(0, 10, (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.detach()
    n = len(probe.layout.params)
    return {"mode": mode, "params": n, "sharded": len(helper.sharded), "flushes": len(gathers),
            "payload_bytes": int(np.median(payload[1:])),
            "gathered_bytes": int(np.median(payload[1:])) * dist.get_world_size(),
            "gather_ms": 1e3 * float(np.median(gathers[1:])), "on_flush_ms": 1e3 * float(np.median(flushes[1:]))}


def _worker(rank: int, world: int, port: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = [_run(mode, args.layers, args.width, args.flush_every, args.steps) for mode in ("fsdp", "ddp")]
    finally:
        dist.destroy_process_group()
    if rank == 0:
        print(f"2 ranks (gloo, CPU), MLP {args.layers} x {args.width}, flush_every={args.flush_every}, "
              f"{args.steps} steps; medians over rank 0's flushes after the first")
        for r in rows:
            print(f"{r['mode']:>4}: {r['params']} params ({r['sharded']} sharded), {r['flushes']} flushes: "
                  f"payload {r['payload_bytes']} B/rank/flush ({r['gathered_bytes']} B gathered), "
                  f"all_gather_object {r['gather_ms']:.2f} ms, cross-rank part of the flush {r['on_flush_ms']:.2f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--flush-every", type=int, default=20)
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(2, free, a), nprocs=2, join=True)
