"""lossprobe under DistributedDataParallel: two CPU processes (gloo), one probe per rank.

Run it (CPU, a few seconds)::

    torchrun --nproc_per_node=2 examples/ddp_torchrun.py --fault shard
    .venv/bin/python examples/ddp_torchrun.py --fault nan          # no torchrun: spawns 2 ranks itself
    .venv/bin/python examples/ddp_torchrun.py --mlflow sqlite:////tmp/ddp.db

``--fault``:

* ``none``: healthy training; rank 0 prints the gradient noise scale (measured from each
  rank's gradient before the all-reduce and the averaged one after it) and batch advice;
* ``shard``: rank 1 reads a shard whose labels are scrambled -> ``rank_divergence`` naming rank 1;
* ``nan``: one NaN pixel in rank 1's batch at step 30 -> ``nonfinite_inputs``/``nan_loss``,
  with ``evidence["rank"] == 1``.

Every rank attaches (after ``init_process_group``) and trains as usual; the ranks exchange a
few numbers per step at each flush, so each probe reaches the same verdict, but only rank 0
prints and publishes (``--mlflow URI``: exactly one MLflow run).
"""
from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import lossprobe
from lossprobe.backends.torch_dist import noise_scale_summary


def train(fault: str, mlflow_uri: str | None, steps: int = 120) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sinks: list = ["console"]
    if mlflow_uri:
        from lossprobe.integrations.mlflow import MlflowSink
        sinks.append(MlflowSink(tracking_uri=mlflow_uri, experiment="lossprobe-ddp", run_name=f"ddp-{fault}"))
    probe = lossprobe.attach(model, optimizer=opt, sinks=sinks)   # only rank 0 keeps its sinks
    loss_fn = nn.CrossEntropyLoss()                               # an nn.Module loss is captured by itself
    shard = torch.arange(rank, len(X), world)                     # what DistributedSampler does
    gen = torch.Generator().manual_seed(rank)
    for step in range(steps):
        idx = shard[torch.randint(0, len(shard), (32,), generator=gen)]
        xb, yb = X[idx].clone(), y[idx]
        if fault == "shard" and rank == 1:
            yb = torch.randint(0, 10, yb.shape, generator=gen)
        if fault == "nan" and rank == 1 and step == 30:
            xb[0, 0] = float("nan")
        loss = loss_fn(model(xb), yb)                             # (functional loss: probe.observe(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.detach()                                                # on every rank: a flush is collective
    if rank == 0:
        for f in probe.findings:
            print(f"{f.code}: rank={f.evidence.get('rank')} step={f.step} {f.message}")
        print("gradient noise scale:", noise_scale_summary(probe))


def _spawned(rank: int, world: int, port: int, fault: str, mlflow_uri: str | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    main_worker(fault, mlflow_uri)


def main_worker(fault: str, mlflow_uri: str | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        train(fault, mlflow_uri)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fault", choices=["none", "shard", "nan"], default="shard")
    ap.add_argument("--mlflow", metavar="URI", help="also publish to MLflow (e.g. sqlite:////tmp/ddp.db)")
    a = ap.parse_args()
    if "RANK" in os.environ:          # started by torchrun
        main_worker(a.fault, a.mlflow)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(_spawned, args=(2, port, a.fault, a.mlflow), nprocs=2, join=True)
