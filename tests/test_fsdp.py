"""FSDP2 (``fully_shard``): two real CPU processes (gloo on 127.0.0.1), every layer sharded.

Each rank measures its own pieces of the parameters and gradients; at each flush the ranks
combine them. Checked against an unsharded copy of the model (same initial weights, the same
global batch): the recorded global gradient norm, per-layer gradient norms, weight norms and
update ratios of step 0 are those of the whole tensors. A deep sigmoid stack (vanishing
gradients) is named on rank 0, its twin with tanh (zero-centred) units is silent, a NaN planted in rank 1's batch is
named with rank 1, only rank 0 keeps its sink, and the probe leaves the sharded training bit
for bit as it is without it.

One ``torch.multiprocessing.spawn`` runs every scenario (start-up and the process group are
paid once); each rank writes what its probe concluded to a JSON file.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lossprobe
from twins import loss_fell

# the spawned ranks import this module: keep it light (the parent hands them the digits as arrays)

WORLD, BATCH, DEPTH, LR = 2, 64, 10, 1e-3     # BATCH per rank: a global batch of 128
STEPS = {"vanishing": 120, "twin": 120, "nan_rank1": 20, "plain": 12, "probed": 12}
NAN_STEP = 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deep(act) -> nn.Sequential:
    """64 -> DEPTH hidden layers of 64 units with ``act`` -> 10, seeded: every rank and the
    unsharded reference start from the same weights."""
    torch.manual_seed(0)
    layers, d = [], 64
    for _ in range(DEPTH):
        layers += [nn.Linear(d, 64), act()]
        d = 64
    return nn.Sequential(*layers, nn.Linear(d, 10))


def _indices(rank: int, steps: int) -> list[torch.Tensor]:
    """Rank ``rank``'s batch indices (its half of the data, as DistributedSampler splits it)."""
    gen = torch.Generator().manual_seed(100 + rank)
    shard = torch.arange(rank, 1400, WORLD)
    return [shard[torch.randint(0, len(shard), (BATCH,), generator=gen)] for _ in range(steps)]


def _scenario(name: str, rank: int, X: torch.Tensor, Y: torch.Tensor) -> dict:
    from torch.distributed.fsdp import fully_shard

    model = _deep(nn.Sigmoid if name == "vanishing" else nn.Tanh)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    probe = None
    if name != "plain":
        probe = lossprobe.attach(model, optimizer=opt, config=lossprobe.Config(flush_every=10), sinks=["console"])
    kept_sinks = len(probe.sinks) if probe else 0
    loss_fn = nn.CrossEntropyLoss()
    for step, idx in enumerate(_indices(rank, STEPS[name])):
        x = X[idx].clone()
        if name == "nan_rank1" and rank == 1 and step == NAN_STEP:
            x[3, 5] = float("nan")
        loss = loss_fn(model(x), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {"weights": [p.to_local().detach().numpy().tolist() for p in model.parameters()]} \
        if name in ("plain", "probed") else {}
    if probe is None:
        return out
    probe.detach()
    h = probe.history
    out.update(findings={f.code: f.to_dict() for f in probe.findings}, health=probe.health, kept_sinks=kept_sinks,
               steps=h.n_steps, gathers=probe._backend.dist.n_gathers, loss=h.loss_sketch()[1].tolist())
    if name == "twin":
        out.update(grad_norm=float(h.series("grad_norm")[0]), layer_grads=h.matrix("param_grad_norms")[0].tolist(),
                   param_norms=h.matrix("param_norms")[0].tolist(), update_ratios=h.matrix("update_ratios")[0].tolist(),
                   unmeasured=bool(h.matrix("param_grad_unmeasured").any()))
    return out


def _worker(rank: int, port: int, out: str, x: np.ndarray, y: np.ndarray) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    X, Y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    try:
        res = {name: _scenario(name, rank, X, Y) for name in STEPS}
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    from torch_helpers import X, Y
    mp.spawn(_worker, args=(_free_port(), str(root), X.numpy(), Y.numpy()), nprocs=WORLD, join=True)
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _unsharded_step0():
    """The twin's first step on one process: the whole model, both ranks' batches at once."""
    from torch_helpers import X, Y
    model = _deep(nn.Tanh)
    idx = torch.cat([_indices(r, 1)[0] for r in range(WORLD)])
    nn.CrossEntropyLoss()(model(X[idx]), Y[idx]).backward()
    grads = [p.grad.norm().item() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.Adam(model.parameters(), lr=LR).step()
    ratios = [((p.detach() - b).norm() / b.norm()).item() for p, b in zip(model.parameters(), before)]
    return grads, [b.norm().item() for b in before], ratios


def test_step0_norms_are_those_of_the_whole_tensors(fsdp):
    grads, norms, ratios = _unsharded_step0()
    weights = [i for i, p in enumerate(_deep(nn.Tanh).parameters()) if p.ndim >= 2]
    for r in fsdp:     # every rank holds the combined values, not its own pieces'
        t = r["twin"]
        assert not t["unmeasured"]
        assert t["grad_norm"] == pytest.approx(float(np.sqrt(np.sum(np.square(grads)))), rel=0.01)
        assert t["layer_grads"] == pytest.approx(grads, rel=0.01)
        assert t["param_norms"] == pytest.approx(norms, rel=0.01)
        assert np.array(t["update_ratios"])[weights] == pytest.approx(np.array(ratios)[weights], rel=0.01)


def test_vanishing_gradients_named_on_rank0_and_its_twin_is_silent(fsdp):
    rank0 = fsdp[0]
    assert "vanishing_gradients" in rank0["vanishing"]["findings"]
    for r in fsdp:
        assert r["vanishing"]["steps"] == STEPS["vanishing"] and r["twin"]["steps"] == STEPS["twin"]
    twin = rank0["twin"]
    alarms = {c: f["evidence"] for c, f in twin["findings"].items() if f["severity"] != "info"}
    assert not alarms, alarms
    assert loss_fell(twin["loss"]).ok, loss_fell(twin["loss"])    # it learns: its silence means something


def test_nan_on_rank1_is_named_with_rank1(fsdp):
    for r in fsdp:     # the ranks exchange their summaries: every rank reaches the same verdict
        f = r["nan_rank1"]["findings"]
        assert f["nonfinite_inputs"]["evidence"]["rank"] == 1 and f["nonfinite_inputs"]["step"] == NAN_STEP
        assert f["nan_loss"]["evidence"]["ranks"] == [1]
        assert r["nan_rank1"]["health"] == "critical"


def test_only_rank0_publishes_and_the_exchange_runs_at_flush_only(fsdp):
    assert [r[s]["kept_sinks"] for r in fsdp for s in ("vanishing", "twin")] == [1, 1, 0, 0]
    for r in fsdp:
        assert r["twin"]["gathers"] == STEPS["twin"] // 10      # one per flush, never one per step


def test_probe_leaves_sharded_training_bit_for_bit(fsdp):
    for r in fsdp:
        assert r["plain"]["weights"] == r["probed"]["weights"]
