"""Data-parallel training: two real CPU processes (gloo on 127.0.0.1) training a DDP-wrapped
MLP on digits, with a fault planted on rank 1 only; plus the gradient noise scale against a
brute-force per-sample computation, and the rank rules on their own.

One ``torch.multiprocessing.spawn`` runs all DDP scenarios in sequence (process start-up and
the process group are paid once); each rank writes what its probe concluded to a JSON file.
"""
from __future__ import annotations

import json
import math
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
from lossprobe.backends.torch_dist import noise_scale_summary
from lossprobe.record import Layout, StepRecord
from lossprobe.rules import RULES
from lossprobe.rules.distributed import NoiseScale, RankTable

# the spawned ranks import this module: keep it light (no scikit-learn there; the parent
# hands them the digits data as arrays)

STEPS = 80
SCENARIOS = ("healthy", "nan_inputs_rank1", "shard_rank1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _scenario(name: str, rank: int, world: int, db: str, X: torch.Tensor, Y: torch.Tensor) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from lossprobe.integrations.mlflow import MlflowSink

    torch.manual_seed(0)
    model = DDP(_mlp())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sink = MlflowSink(tracking_uri=db, experiment="ddp", run_name=name, spool_dir=str(Path(db[10:]).parent / "spool"))
    probe = lossprobe.attach(model, optimizer=opt, config=lossprobe.Config(flush_every=10), sinks=[sink])
    kept_sinks = len(probe.sinks)
    gen = torch.Generator().manual_seed(100 + rank)
    loss_fn = nn.CrossEntropyLoss()
    shard = torch.arange(rank, 1400, world)          # a DistributedSampler-like split
    for step in range(STEPS):
        idx = shard[torch.randint(0, len(shard), (32,), generator=gen)]
        x, y = X[idx].clone(), Y[idx]
        if name == "nan_inputs_rank1" and rank == 1 and step == 33:
            x[5, 7] = float("nan")                   # one corrupt sample in rank 1's batch
        if name == "shard_rank1" and rank == 1:
            y = torch.randint(0, 10, y.shape, generator=gen)   # rank 1 reads a shard with broken labels
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.detach()
    return {"findings": {f.code: f.to_dict() for f in probe.findings}, "health": probe.health,
            "kept_sinks": kept_sinks, "gathers": probe._backend.dist.n_gathers,
            "noise": noise_scale_summary(probe), "run_id": sink.run_id if rank == 0 else None,
            "steps": probe.history.n_steps}


def _worker(rank: int, world: int, port: int, out: str, db: str, x: np.ndarray, y: np.ndarray) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    X, Y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    try:
        res = {name: _scenario(name, rank, world, db, X, Y) for name in SCENARIOS}
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    db = f"sqlite:///{root / 'mlflow.db'}"
    from torch_helpers import X, Y
    mp.spawn(_worker, args=(2, _free_port(), str(root), db, X.numpy(), Y.numpy()), nprocs=2, join=True)
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks, db


def test_nan_on_rank1_is_a_finding_that_names_rank1(ddp):
    ranks, _ = ddp
    for r in ranks:  # every rank reaches the same verdict (they exchange summaries at flush)
        f = r["nan_inputs_rank1"]["findings"]
        assert f["nonfinite_inputs"]["evidence"]["rank"] == 1
        assert f["nonfinite_inputs"]["step"] == 33
        assert f["nan_loss"]["evidence"]["ranks"] == [1]
        assert "rank 1" in f["nan_loss"]["message"]
        assert f["nonfinite_gradients"]["evidence"]["rank"] == 1   # from the local (pre all-reduce) grads
        assert r["nan_inputs_rank1"]["health"] == "critical"


def test_rank_with_a_different_shard_is_rank_divergence(ddp):
    ranks, _ = ddp
    for r in ranks:
        f = r["shard_rank1"]["findings"]
        assert "rank_divergence" in f
        ev = f["rank_divergence"]["evidence"]
        assert ev["rank"] == 1 and ev["world_size"] == 2
        assert ev["rank_loss"] > ev["other_ranks_loss"] + 0.5


def test_healthy_ddp_is_silent_and_measures_the_noise_scale(ddp):
    ranks, _ = ddp
    for r in ranks:
        h = r["healthy"]
        assert "rank_divergence" not in h["findings"]
        assert h["health"] != "critical", h["findings"].keys()
        assert h["steps"] == STEPS
        ns = h["noise"]
        assert ns["source"] == "ddp" and ns["batch"] == 64.0 and ns["updates"] >= STEPS // 2
        assert 1.0 < ns["noise_scale"] < 1e5
    # at flush time only: one exchange per flush (STEPS / flush_every), never one per step
    assert ranks[0]["healthy"]["gathers"] == ranks[1]["healthy"]["gathers"] == STEPS // 10


def test_only_rank0_publishes_exactly_one_tracker_run(ddp):
    import mlflow

    ranks, db = ddp
    assert all(r[s]["kept_sinks"] == (1 if i == 0 else 0) for i, r in enumerate(ranks) for s in SCENARIOS)
    client = mlflow.MlflowClient(db)
    exp = client.get_experiment_by_name("ddp")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(SCENARIOS)   # one run per training, not two
    by_name = {r.info.run_name: r for r in runs}
    assert by_name["nan_inputs_rank1"].data.tags["lossprobe.health"] == "critical"
    assert by_name["shard_rank1"].data.tags.get("lossprobe.diagnosis.rank_divergence") == "warning"
    assert "lossprobe.diagnosis.rank_divergence" not in by_name["healthy"].data.tags
    hist = client.get_metric_history(by_name["healthy"].info.run_id, "lossprobe/noise_scale")
    assert len(hist) >= STEPS // 2 and all(m.value > 0 for m in hist)


# -- the gradient noise scale on one device (gradient accumulation) ------------------------
def _true_noise_scale(model) -> float:
    """B_simple = tr(Sigma) / |G|^2 from every per-sample gradient of the training set."""
    from torch.func import functional_call, grad, vmap
    from torch_helpers import X, Y

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, y):
        return nn.functional.cross_entropy(functional_call(model, p, (x[None],)), y[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, X[:1400], Y[:1400])
    g = torch.cat([v.reshape(1400, -1) for v in g.values()], 1).double()
    mean = g.mean(0)
    return float(((g - mean) ** 2).sum(1).mean() / (mean ** 2).sum())


def test_noise_scale_from_micro_batches_matches_per_sample_truth():
    from torch_helpers import X, Y
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)   # parameters held fixed: one true value to hit
    cfg = lossprobe.Config(activation_every=1, extra={"noise_scale_beta": 0.995})
    probe = lossprobe.attach(model, optimizer=opt, config=cfg, sinks=[])
    gen = torch.Generator().manual_seed(0)
    k, b = 4, 16
    for _ in range(300):
        for _ in range(k):
            idx = torch.randint(0, 1400, (b,), generator=gen)
            (nn.functional.cross_entropy(model(X[idx]), Y[idx]) / k).backward()
        opt.step()
        opt.zero_grad()
    probe.detach()
    s = noise_scale_summary(probe)
    truth = _true_noise_scale(model)
    assert s["source"] == "micro-batches" and s["batch"] == k * b and s["updates"] == 300
    assert probe._backend.n_host_reads == 300 // 20   # the micro-batch norms ride in each flush's one copy
    assert abs(s["noise_scale"] / truth - 1) < 0.25, (s, truth)


def test_no_accumulation_means_no_noise_scale():
    from torch_helpers import train
    p = train(_mlp(), steps=30)
    assert noise_scale_summary(p) is None
    assert p._backend.dist.n_gathers == 0 and p._backend.dist.table is None


def test_two_forwards_one_backward_are_not_taken_for_micro_batches():
    from torch_helpers import X, Y
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = lossprobe.attach(model, optimizer=opt, config=lossprobe.Config(activation_every=1), sinks=[])
    for step in range(30):  # a siamese-style step; zero_grad after the forwards leaves stale grads there
        a, b = model(X[:16]), model(X[16:32])
        loss = nn.functional.cross_entropy(a, Y[:16]) + nn.functional.cross_entropy(b, Y[16:32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.detach()
    assert noise_scale_summary(probe) is None


def test_noise_scale_estimator_and_advice():
    # exact expectations: |G|^2 = 1, tr(Sigma) = 100 -> E|G_B|^2 = 1 + 100/B
    ns = NoiseScale(beta=0.5)
    for step in range(20):
        ns.update(step, 1 + 100 / 32, 1 + 100 / 128, 32, 128)
    assert ns.value == pytest.approx(100.0)
    assert ns.advice() is None
    big = NoiseScale()
    for step in range(20):
        big.update(step, 1 + 100 / 4096, 1 + 100 / 8192, 4096, 8192)
    assert "82x the gradient noise scale" in big.advice()
    small = NoiseScale()
    for step in range(20):
        small.update(step, 1 + 1e5 / 8, 1 + 1e5 / 16, 8, 16)
    assert "below the gradient noise scale" in small.advice()
    assert math.isnan(NoiseScale().update(0, 1.0, 1.0, 8, 8))   # no second batch size: no estimate
    # the verdict the batch-size rule gives once the catalog has its code
    from lossprobe.rules.distributed import _batch_size_rule

    class H:
        layout = Layout(framework="torch", extra={"noise_scale": big})
    det = _batch_size_rule(H(), lossprobe.Config())
    assert det.evidence["ratio"] == pytest.approx(8192 / 100) and "smaller batch" in det.message
    H.layout = Layout(framework="torch", extra={"noise_scale": ns})
    assert _batch_size_rule(H(), lossprobe.Config()) is None


# -- the rank rules on a RankTable -------------------------------------------------------
class _H:
    def __init__(self, table):
        self.layout = Layout(framework="torch", extra={"dist": table})


def _table(world, offset, rank=1, n=40, seed=0):
    rng = np.random.default_rng(seed)
    t = RankTable(world, window=64)
    for s in range(n):
        base = 2.0 * math.exp(-s / 15) + 0.3
        rows = [{"loss": base + rng.normal(0, 0.08) + (offset if r == rank else 0.0)} for r in range(world)]
        t.append(s, rows)
    return t


@pytest.mark.parametrize("world", [2, 4])
def test_rank_divergence_names_the_odd_rank_and_stays_silent_on_noise(world):
    cfg = lossprobe.Config()
    rule = RULES["rank_divergence"]
    for seed in range(5):
        assert rule(_H(_table(world, 0.0, seed=seed)), cfg) is None
    det = rule(_H(_table(world, 1.0, rank=world - 1)), cfg)
    assert det is not None and det.evidence["rank"] == world - 1
    if world > 2:  # with three or more ranks a rank with a *lower* loss is named too
        det = rule(_H(_table(world, -0.25, rank=2)), cfg)
        assert det is not None and det.evidence["rank"] == 2


def test_first_nonfinite_rank_is_remembered_after_the_window_moves():
    t = RankTable(3, window=8)
    for s in range(30):
        t.append(s, [{"input_nonfinite": float(s >= 5 and r == 2)} for r in range(3)])
    assert t.first_bad["input_nonfinite"] == (5, [2])
    steps, v = t.view("input_nonfinite")
    assert list(steps) == list(range(22, 30)) and v.shape == (8, 3)


# -- which process publishes: the global rank, never LOCAL_RANK taken for it ---------------
@pytest.mark.parametrize("env,rank", [
    ({"RANK": "2", "LOCAL_RANK": "0"}, 2),   # first process of the second node: not a publisher
    ({"RANK": "0", "LOCAL_RANK": "0"}, 0),
    ({"LOCAL_RANK": "1"}, 1),                # a local rank above 0 is never global rank 0
    ({"LOCAL_RANK": "0", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, 4),   # node 1's first process
    ({"LOCAL_RANK": "0", "NODE_RANK": "2"}, 2),
    ({"LOCAL_RANK": "0"}, 0),                # nothing tells the node: it stands in for rank 0
    ({"RANK": "x", "LOCAL_RANK": "1"}, 1),    # an unreadable RANK is no rank
    ({}, 0),
])
def test_publisher_rank_from_the_environment(monkeypatch, env, rank):
    from lossprobe.backends.torch_dist import NODE_INDEX_VARS, publisher_rank
    for key in NODE_INDEX_VARS + ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert publisher_rank() == rank
    probe = lossprobe.attach(_mlp(), sinks=["console"])   # before any init_process_group
    assert len(probe.sinks) == (1 if rank == 0 else 0)
    probe.detach()


# -- combining the pieces of sharded parameters (capture/shards.py) --------------------------
def _piece_record(grads, norms, ratios, carried):
    from lossprobe.capture.buffer import decode_grads
    rec = StepRecord.empty(0, Layout(framework="torch", params=("w", "b")))
    decode_grads(rec, np.array(grads, dtype=float))
    rec.param_norms[:], rec.update_ratios[:], rec.grad_carried = norms, ratios, carried
    return rec


def test_pieces_of_sharded_parameters_combine_into_the_whole_tensors():
    from lossprobe.capture.shards import merge_shards, shard_summary
    from lossprobe.capture.spec import MISSING, UNMEASURED
    # w is split in pieces of norms 3 and 4 (whole: 5); updates |dW| 0.3 and 0.8 (whole: sqrt(0.73))
    recs = [_piece_record([3.0, 1.0], [3.0, 2.0], [0.1, np.nan], 0.5),
            _piece_record([4.0, 1.0], [4.0, 2.0], [0.2, np.nan], 0.0)]
    parts = [shard_summary(r, [0]) for r in recs]          # b is not sharded: left as it is
    merge_shards(recs[0], [0], np.ones(1), parts)
    rec = recs[0]
    assert rec.param_grad_norms[0] == pytest.approx(5.0) and rec.param_grad_norms[1] == 1.0
    assert rec.grad_norm == pytest.approx(math.sqrt(26.0))
    assert rec.param_norms[0] == pytest.approx(5.0)
    assert rec.update_ratios[0] == pytest.approx(math.sqrt(0.73) / 5.0)
    # carried: 0.5 of rank 0's sqrt(10), none of rank 1's sqrt(17)
    assert rec.grad_carried == pytest.approx(0.5 * math.sqrt(10) / math.sqrt(27))
    # a piece held by two ranks (replicated over half the mesh) counts once
    twice = [_piece_record([3.0, 1.0], [3.0, 1.0], [np.nan, np.nan], np.nan) for _ in range(4)]
    merge_shards(twice[0], [0, 1], np.array([4.0, 2.0]), [shard_summary(r, [0, 1]) for r in twice])
    assert twice[0].param_grad_norms == pytest.approx([3.0, math.sqrt(2.0)])
    # a non-finite piece makes the tensor non-finite; no gradient anywhere stays missing; a
    # piece one rank could not read, or a rank that sent nothing, makes it unmeasured
    odd = [_piece_record([np.nan, MISSING], [1, 1], [np.nan] * 2, np.nan),
           _piece_record([1.0, MISSING], [1, 1], [np.nan] * 2, np.nan)]
    merge_shards(odd[0], [0, 1], np.ones(2), [shard_summary(r, [0, 1]) for r in odd])
    assert math.isnan(odd[0].param_grad_norms[0]) and not odd[0].param_grad_unmeasured[0]
    assert odd[0].param_grad_missing[1]
    mixed = [_piece_record([UNMEASURED, 1.0], [1, 1], [np.nan] * 2, np.nan),
             _piece_record([2.0, 1.0], [1, 1], [np.nan] * 2, np.nan)]
    merge_shards(mixed[1], [0], np.ones(1), [shard_summary(r, [0]) for r in mixed])
    assert mixed[1].param_grad_unmeasured[0] and mixed[1].grad_norm == pytest.approx(1.0)
    lost = _piece_record([2.0, 1.0], [1, 1], [0.1, np.nan], 0.3)
    merge_shards(lost, [0], np.ones(1), [shard_summary(lost, [0]), None])
    assert lost.param_grad_unmeasured[0] and math.isnan(lost.param_norms[0]) and math.isnan(lost.grad_carried)
