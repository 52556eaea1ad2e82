"""Paddle ``DataParallel``: two real CPU processes (``paddle.distributed.spawn``, gloo on
127.0.0.1) train an MLP on digits, each scenario with a fault planted on rank 1 only, and a
healthy twin; plus rank detection from the launcher's environment.

One spawn runs every scenario in sequence (start-up and the process group are paid once);
each rank writes what its probe concluded to a JSON file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

import lossprobe

STEPS = 40
FLUSH = 10
FAULT_STEP = 23
SCENARIOS = ("healthy", "nan_inputs_rank1", "nan_grads_rank1")


def _mlp() -> paddle.nn.Layer:
    nn = paddle.nn
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _scenario(name: str, rank: int, world: int, db: str, spool: str, X: np.ndarray, Y: np.ndarray) -> dict:
    from lossprobe.integrations.mlflow import MlflowSink

    paddle.seed(0)
    net = _mlp()
    model = paddle.DataParallel(net)
    opt = paddle.optimizer.Adam(learning_rate=2e-3, parameters=model.parameters())
    sink = MlflowSink(tracking_uri=db, experiment="paddle-dp", run_name=name, spool_dir=spool)
    probe = lossprobe.attach(model, optimizer=opt, config=lossprobe.Config(flush_every=FLUSH), sinks=[sink])
    kept_sinks = len(probe.sinks)
    rng = np.random.default_rng(100 + rank)
    shard = np.arange(rank, len(Y), world)            # a DistributedBatchSampler-like split
    loss_fn = paddle.nn.CrossEntropyLoss()
    for step in range(STEPS):
        idx = shard[rng.integers(0, len(shard), 32)]
        x = X[idx].copy()
        if name == "nan_inputs_rank1" and rank == 1 and step == FAULT_STEP:
            x[5, 7] = np.nan                           # one corrupt sample in rank 1's batch
        out = model(paddle.to_tensor(x))
        loss = loss_fn(out, paddle.to_tensor(Y[idx]))
        if name == "nan_grads_rank1" and rank == 1 and step == FAULT_STEP:
            # adds exactly 0 to the loss, but d/dz sqrt(z) at z = 0 is 0/0: a NaN in rank 1's
            # own gradient while every loss stays finite
            loss = loss + 0.0 * paddle.sqrt(out[0, 0] - out[0, 0])
        loss.backward()
        opt.step()
        opt.clear_grad()
    probe.detach()
    return {"findings": {f.code: f.to_dict() for f in probe.findings}, "health": probe.health,
            "kept_sinks": kept_sinks, "gathers": probe._backend.dist.n_gathers,
            "layout_rank": probe.layout.rank, "world": probe.layout.world_size,
            "steps": probe.history.n_steps, "loss": [float(v) for v in probe.history.series("loss")]}


def _worker(out: str, db: str, X: np.ndarray, Y: np.ndarray) -> None:
    paddle.set_device("cpu")
    dist = paddle.distributed
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    res = {name: _scenario(name, rank, world, db, str(Path(out, "spool")), X, Y) for name in SCENARIOS}
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("paddle_dp")
    db = f"sqlite:///{root / 'mlflow.db'}"
    x, y = load_digits(return_X_y=True)
    paddle.distributed.spawn(_worker, args=(str(root), db, (x / 16.0).astype("float32"), y.astype("int64")),
                             nprocs=2, join=True)
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)], db


def test_nan_in_one_ranks_inputs_is_named_with_that_rank(dp):
    ranks, _ = dp
    for r in ranks:  # every rank reaches the same verdict (they exchange summaries at flush)
        res = r["nan_inputs_rank1"]
        f = res["findings"]["nonfinite_inputs"]
        assert f["step"] == FAULT_STEP and f["evidence"]["ranks"] == [1]
        assert "rank 1" in f["message"]
        assert res["health"] == "critical"


def test_nan_in_one_ranks_own_gradient_is_named_with_that_rank(dp):
    ranks, _ = dp
    for r in ranks:
        f = r["nan_grads_rank1"]["findings"]
        # the reduced gradient is NaN on both ranks: only the local (pre all-reduce) norms say rank 1
        g = f["nonfinite_gradients"]
        assert g["evidence"]["ranks"] == [1] and g["evidence"]["rank_step"] == FAULT_STEP
        assert "nan_loss" in f   # the NaN weights break the loss on every rank from the next step


def test_healthy_data_parallel_run_is_silent(dp):
    ranks, _ = dp
    for r in ranks:
        h = r["healthy"]
        assert h["health"] == "healthy", h["findings"].keys()
        assert h["steps"] == STEPS and h["world"] == 2
        # at flush time only: one exchange per flush, never one per step
        assert h["gathers"] == STEPS // FLUSH
    # each record holds the cross-rank mean loss, so both ranks' histories agree although
    # the ranks trained on different batches
    a, b = (np.asarray(r["healthy"]["loss"]) for r in ranks)
    assert len(a) == STEPS and np.allclose(a, b, rtol=1e-6)


def test_only_rank0_publishes_exactly_one_tracker_run(dp):
    import mlflow

    ranks, db = dp
    for i, r in enumerate(ranks):
        assert all(r[s]["layout_rank"] == i and r[s]["kept_sinks"] == (1 if i == 0 else 0) for s in SCENARIOS)
    client = mlflow.MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("paddle-dp").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(SCENARIOS)   # one run per training, not two
    tags = {r.info.run_name: r.data.tags for r in runs}
    assert tags["healthy"]["lossprobe.health"] == "healthy"
    assert tags["nan_grads_rank1"]["lossprobe.diagnosis.nonfinite_gradients"] == "critical"
    assert tags["nan_inputs_rank1"]["lossprobe.diagnosis.nonfinite_inputs"] == "critical"


# -- rank detection from the launcher's environment (no process group) ----------------------
@pytest.mark.parametrize("env, rank", [
    ({}, 0),
    ({"PADDLE_TRAINER_ID": "1"}, 1),                      # paddle.distributed.launch / spawn
    ({"RANK": "2"}, 2),
    ({"PADDLE_LOCAL_RANK": "1", "LOCAL_RANK": "1"}, 0),   # a local rank alone is not a global one
])
def test_rank_from_the_launchers_environment_decides_who_publishes(monkeypatch, env, rank):
    for key in ("PADDLE_TRAINER_ID", "RANK", "PADDLE_LOCAL_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    probe = lossprobe.attach(_mlp(), sinks=["console"])
    try:
        assert probe.layout.rank == rank
        assert len(probe.sinks) == (1 if rank == 0 else 0)
        assert probe._backend.dist is None   # no initialised process group: nothing to exchange
    finally:
        probe.detach()
