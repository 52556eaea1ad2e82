"""lossprobe under FSDP2 (``fully_shard``): every layer sharded over the ranks, one probe per rank.

Run it (CPU with gloo, a few seconds; on GPUs, nccl and one GPU per rank are used)::

    torchrun --nproc_per_node 2 examples/fsdp_torchrun.py --fault vanishing
    .venv/bin/python examples/fsdp_torchrun.py --fault nan        # no torchrun: spawns 2 ranks itself

``--fault``:

* ``none``: a 10-layer tanh MLP on digits; healthy, rank 0 prints the global gradient norm
  and the per-layer norms of the first step, combined from the ranks' shards;
* ``vanishing``: the same stack with sigmoid units -> ``vanishing_gradients`` (the first
  layers' gradients are orders of magnitude below the last layers');
* ``nan``: one NaN pixel in rank 1's batch at step 30 -> ``nonfinite_inputs``/``nan_loss``
  with ``evidence["rank"] == 1``.

Attach after ``fully_shard`` (it replaces the parameters with sharded ``DTensor`` ones), on
every rank. Each rank measures its own shards; at each flush the ranks exchange them once
(never per step), so each probe holds the whole tensors' norms and reaches the same verdict,
and only rank 0 prints and publishes (``--mlflow URI``: exactly one MLflow run).
"""
from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.distributed.fsdp import fully_shard

import lossprobe


def deep_mlp(act: type[nn.Module], depth: int = 10) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(64, 64), act()]
    return nn.Sequential(*layers, nn.Linear(64, 10))


def train(fault: str, mlflow_uri: str | None, device: torch.device, steps: int = 120) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32, device=device)
    y = torch.tensor(y, device=device)
    torch.manual_seed(0)                                          # the same initial weights on every rank
    model = deep_mlp(nn.Sigmoid if fault == "vanishing" else nn.Tanh).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)                                    # each layer its own unit...
    fully_shard(model)                                            # ...and the root
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sinks: list = ["console"]
    if mlflow_uri:
        from lossprobe.integrations.mlflow import MlflowSink
        sinks.append(MlflowSink(tracking_uri=mlflow_uri, experiment="lossprobe-fsdp", run_name=f"fsdp-{fault}"))
    probe = lossprobe.attach(model, optimizer=opt, sinks=sinks)   # after fully_shard; only rank 0 keeps sinks
    loss_fn = nn.CrossEntropyLoss()
    shard = torch.arange(rank, len(X), world)                     # what DistributedSampler does
    gen = torch.Generator().manual_seed(rank)
    for step in range(steps):
        idx = shard[torch.randint(0, len(shard), (64,), generator=gen)].to(device)
        xb, yb = X[idx].clone(), y[idx]
        if fault == "nan" and rank == 1 and step == 30:
            xb[0, 0] = float("nan")
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.detach()                                                # on every rank: a flush is collective
    if rank == 0:
        h = probe.history
        print(f"step 0: global gradient norm {h.series('grad_norm')[0]:.4g} (the whole model's, "
              f"combined from {world} ranks' shards)")
        print("step 0: per-layer gradient norms", " ".join(f"{v:.2g}" for v in h.matrix("param_grad_norms")[0][::2]))
        for f in probe.findings:
            print(f"{f.code}: rank={f.evidence.get('rank')} step={f.step} {f.message}")


def main_worker(fault: str, mlflow_uri: str | None) -> None:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
    try:
        train(fault, mlflow_uri, device)
    finally:
        dist.destroy_process_group()


def _spawned(rank: int, world: int, port: int, fault: str, mlflow_uri: str | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    main_worker(fault, mlflow_uri)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fault", choices=["none", "vanishing", "nan"], default="vanishing")
    ap.add_argument("--mlflow", metavar="URI", help="also publish to MLflow (e.g. sqlite:////tmp/fsdp.db)")
    a = ap.parse_args()
    if "RANK" in os.environ:          # started by torchrun
        main_worker(a.fault, a.mlflow)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(_spawned, args=(2, port, a.fault, a.mlflow), nprocs=2, join=True)
