"""MLflow integration against the real thing: a real ``mlflow server`` (sqlite) on 127.0.0.1,
real torch training on load_digits with planted faults, read back through MlflowClient.

Faults: the loss multiplied by inf from step FAULT_STEP on (the weights go NaN, so
``nan_loss`` surely fires), and NaN planted in the inputs. Healthy: the same MLP, plain SGD.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
import time
import uuid

import pytest

torch = pytest.importorskip("torch")
mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

import lossprobe  # noqa: E402
from lossprobe.cli_tag import main_tag  # noqa: E402
from lossprobe.integrations.mlflow import MlflowSink, filter_string, find_runs, metric_key, upload_spool  # noqa: E402

from lossprobe.sinks import FinalReport, FlushUpdate, RunInfo  # noqa: E402

from mlflow_server import Gateway, SlowServer, free_port, mlflow_server  # noqa: E402,F401  (module-scoped fixture)

STEPS = 120
FAULT_STEP = 40
CFG = lossprobe.Config(flush_every=20)
_X, _Y = load_digits(return_X_y=True)
X = torch.tensor(_X / 16.0, dtype=torch.float32)
Y = torch.tensor(_Y)


class Trainer:
    """A small MLP on digits with ``sink`` attached, trained step by step (runs can interleave)."""

    def __init__(self, sink, *, fault=None, seed=0):
        torch.manual_seed(seed)
        self.sink, self.fault = sink, fault
        self.model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.gen = torch.Generator().manual_seed(seed)
        self.step, self.losses, self.times = 0, {}, []      # losses: as the loop saw them
        self.probe = lossprobe.attach(self.model, optimizer=self.opt, config=CFG, sinks=[sink])

    def run(self, until, on_step=None):
        loss_fn = nn.CrossEntropyLoss()
        while self.step < until:
            step = self.step
            if on_step:
                on_step(step, self.probe)
            t0 = time.perf_counter()
            idx = torch.randint(0, len(X), (64,), generator=self.gen)
            x, y = X[idx], Y[idx]
            if self.fault == "nan_input" and step >= FAULT_STEP:
                x = x.clone()
                x[0, 0] = float("nan")
            loss = loss_fn(self.model(x), y)
            self.losses[step] = loss.item()
            if self.fault == "inf_loss" and step >= FAULT_STEP:
                loss = loss * float("inf")
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.times.append(time.perf_counter() - t0)
            self.step += 1
        return self

    def sync(self):
        """Flush the probe and wait until the sink has sent (or spooled) everything."""
        self.probe.flush()
        assert self.sink.drain(30)


def train(sink, *, fault=None, steps=STEPS, seed=0, on_step=None):
    t = Trainer(sink, fault=fault, seed=seed).run(steps, on_step)
    return t.probe, t.losses, t.times


def history(client, run_id, key="lossprobe/loss"):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


@pytest.fixture(scope="module")
def fleet(mlflow_server, tmp_path_factory):
    """Two healthy and two faulty runs in one experiment; one healthy run inside the user's own run."""
    exp = f"digits-{uuid.uuid4().hex[:8]}"
    spool = tmp_path_factory.mktemp("spool")
    client = MlflowClient(mlflow_server.uri)
    runs = {}
    for name, fault, seed in [("healthy-0", None, 0), ("inf-loss", "inf_loss", 0), ("nan-input", "nan_input", 1)]:
        sink = MlflowSink(mlflow_server.uri, experiment=exp, run_name=name, spool_dir=spool)
        mid = {}

        def look(step, probe, sink=sink, mid=mid):
            # tags are current while training runs, not only at the end
            if step == STEPS - 20:
                probe.flush()
                assert sink.drain(30)
                run = client.get_run(sink.run_id)
                mid.update(status=run.info.status, health=run.data.tags.get("lossprobe.health"),
                           description=run.data.tags.get("mlflow.note.content"))

        probe, losses, _ = train(sink, fault=fault, seed=seed, on_step=look)
        probe.detach()
        runs[name] = dict(sink=sink, probe=probe, losses=losses, mid=mid, run_id=sink.run_id)
    # the user's own active run: lossprobe publishes into it and leaves it open
    eid = client.get_experiment_by_name(exp).experiment_id
    with tracking(mlflow_server.uri):
        with mlflow.start_run(experiment_id=eid, run_name="healthy-user") as active:
            mlflow.log_param("lr", 0.1)
            sink = MlflowSink(spool_dir=spool)
            probe, losses, _ = train(sink, seed=2)
            probe.detach()
            status_after_detach = client.get_run(active.info.run_id).info.status
        runs["healthy-user"] = dict(sink=sink, probe=probe, losses=losses, run_id=active.info.run_id,
                                    status_after_detach=status_after_detach)
    return exp, client, runs


FAULTY = {"inf-loss", "nan-input"}
HEALTHY = {"healthy-0", "healthy-user"}


@contextlib.contextmanager
def tracking(uri):
    """Point MLflow's fluent API at ``uri`` for a while, restoring exactly what was set before."""
    from mlflow.tracking._tracking_service import utils
    prev = utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = prev


def names(runs):
    return {r.info.run_name for r in runs}


def test_filters_return_exactly_the_faulty_runs(fleet, mlflow_server):
    exp, client, runs = fleet
    eid = client.get_experiment_by_name(exp).experiment_id
    for name in FAULTY | HEALTHY:
        assert runs[name]["sink"].run_id == runs[name]["run_id"]
        assert runs[name]["sink"].stats["spooled"] == 0, runs[name]["sink"].messages
    for name in FAULTY:
        assert runs[name]["probe"].health == "critical"
    for name in HEALTHY:
        assert runs[name]["probe"].health == "healthy", runs[name]["probe"].findings
    queries = {
        "tags.`lossprobe.health` = 'critical'": FAULTY,
        "tags.`lossprobe.health` != 'healthy'": FAULTY,
        "tags.`lossprobe.health` = 'healthy'": HEALTHY,
        "tags.`lossprobe.diagnoses` LIKE '%nan_loss%'": FAULTY,
        "tags.`lossprobe.diagnosis.nan_loss` LIKE '%'": FAULTY,
        "tags.`lossprobe.diagnosis.nan_loss` = 'critical'": FAULTY,
    }
    for q, want in queries.items():
        assert names(client.search_runs([eid], q)) == want, q
        with tracking(mlflow_server.uri):          # the fluent API users call
            assert names(mlflow.search_runs(experiment_ids=[eid], filter_string=q, output_format="list")) == want
    assert names(find_runs(exp, diagnosis="nan_loss", tracking_uri=mlflow_server.uri)) == FAULTY
    assert names(find_runs(exp, health="critical", tracking_uri=mlflow_server.uri)) == FAULTY
    assert names(find_runs(exp, health="unhealthy", tracking_uri=mlflow_server.uri)) == FAULTY
    assert names(find_runs(exp, health="healthy", tracking_uri=mlflow_server.uri)) == HEALTHY
    assert find_runs("no-such-experiment", health="critical", tracking_uri=mlflow_server.uri) == []
    assert filter_string(diagnosis="exploding_gradients") == "tags.`lossprobe.diagnosis.exploding_gradients` LIKE '%'"
    if int(mlflow.__version__.split(".")[0]) >= 3:                 # the same question, MLflow 3's way
        assert names(client.search_runs([eid], "tags.`lossprobe.diagnosis.nan_loss` IS NOT NULL")) == FAULTY


def test_tags_follow_the_contract_and_stay_current(fleet):
    exp, client, runs = fleet
    for name in FAULTY:
        r = runs[name]
        tags = client.get_run(r["run_id"]).data.tags
        assert tags == {**tags, **r["probe"].tags()}            # every contract tag, same value
        f = next(f for f in r["probe"].findings if f.code == "nan_loss")
        assert tags["lossprobe.first_step.nan_loss"] == str(f.step) and f.step >= FAULT_STEP - 1
        assert int(tags["lossprobe.last_step.nan_loss"]) >= f.step
        assert tags["lossprobe.framework"] == "torch" and tags["lossprobe.version"] == lossprobe.__version__
        assert tags["lossprobe.source"] == "probe"
        # while training ran (step 100), the run was already searchable as critical
        assert {k: r["mid"][k] for k in ("status", "health")} == {"status": "RUNNING", "health": "critical"}
        assert r["mid"]["description"].startswith("**lossprobe: critical** after ")   # kept current
        assert client.get_run(r["run_id"]).info.status == "FINISHED"     # a run the sink started is ended
    healthy = client.get_run(runs["healthy-0"]["run_id"]).data.tags
    assert healthy["lossprobe.health"] == "healthy"
    assert not [k for k in healthy if k.startswith("lossprobe.diagnosis.")]
    assert runs["healthy-0"]["mid"]["health"] == "healthy"
    # the user's own run: used, not ended by lossprobe, user's data kept
    user = runs["healthy-user"]
    assert user["sink"].owns_run is False
    assert user["status_after_detach"] == "RUNNING"
    run = client.get_run(user["run_id"])
    assert run.data.params["lr"] == "0.1" and run.data.tags["lossprobe.health"] == "healthy"
    assert "mlflow.note.content" not in run.data.tags          # the user's description is the user's


def test_runs_read_well_in_the_ui(fleet):
    """What a person sees on a run the sink created: who/what made it, a description that
    leads with the root cause, the config as params, per-layer charts named by layer."""
    from mlflow.tracking.context.registry import resolve_tags
    from lossprobe.rootcause import attribute
    exp, client, runs = fleet
    context = resolve_tags()             # what mlflow.start_run would set in this process
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(context)
    for name in ("inf-loss", "healthy-0"):
        r = runs[name]
        run = client.get_run(r["run_id"])
        tags = run.data.tags
        assert {k: tags.get(k) for k in context} == context, name
        assert run.info.user_id == context["mlflow.user"]
        note = tags["mlflow.note.content"]
        health = r["probe"].health
        assert note.startswith(f"**lossprobe: {health}** after {STEPS} steps")
        roots = attribute(r["probe"].findings)
        if roots:
            assert tags["lossprobe.root_cause"] == roots[0].code
            assert f"Root cause: `{roots[0].code}`" in note and f"Fix first: {roots[0].fix_first}" in note
            assert all(f"`{f.code}`" in note for f in r["probe"].findings)
        else:
            assert tags["lossprobe.root_cause"] == "" and "no warnings" in note
        params = run.data.params
        assert params["lossprobe.flush_every"] == str(CFG.flush_every) and params["lossprobe.window"] == "1024"
        assert params["lossprobe.on_critical"] == "warn"
        assert set(params) == {f"lossprobe.{k}" for k in CFG.to_dict() if k != "extra"}
        keys = set(run.data.metrics)
        assert {"lossprobe/dead_fraction/1.ReLU", "lossprobe/grad_norm/0.Linear.weight",
                "lossprobe/grad_norm/2.Linear.weight"} <= keys, sorted(keys)
        assert "lossprobe/dead_fraction/1" not in keys


def test_metrics_have_steps_and_are_batched(fleet):
    exp, client, runs = fleet
    for name in ("healthy-0", "inf-loss"):
        r = runs[name]
        got = history(client, r["run_id"])
        assert sorted(got) == list(range(STEPS))
        for step, v in r["losses"].items():
            assert same(got[step], v), (name, step, got[step], v)
        grad = history(client, r["run_id"], "lossprobe/grad_norm")
        # NaN gradient norms are not logged as points; before the fault every step has one
        assert set(range(FAULT_STEP)) <= set(grad) <= set(got)
        if name == "healthy-0":
            assert sorted(grad) == list(range(STEPS))
        keys = client.get_run(r["run_id"]).data.metrics
        assert any(k.startswith("lossprobe/grad_norm/") for k in keys)
        assert any(k.startswith("lossprobe/dead_fraction/") for k in keys)
        stats = r["sink"].stats
        flushes = STEPS // CFG.flush_every + 2
        # one log_batch per flush (plus run creation, artifacts, end), never one call per metric
        assert stats["requests"] <= flushes + 8, stats
        assert stats["metrics_sent"] >= 10 * stats["requests"], stats
    bad = history(client, runs["inf-loss"]["run_id"])
    assert all(math.isnan(bad[s]) for s in range(FAULT_STEP + 1, STEPS))   # NaN kept as NaN
    assert all(math.isfinite(bad[s]) for s in range(FAULT_STEP))


def test_artifacts_exist_and_parse(fleet, tmp_path):
    exp, client, runs = fleet
    for name in ("inf-loss", "healthy-user"):
        r = runs[name]
        listed = {a.path for a in client.list_artifacts(r["run_id"], "lossprobe")}
        assert listed == {"lossprobe/findings.json", "lossprobe/report.html"}
        (tmp_path / name).mkdir()                                   # MLflow 2 wants the folder to exist
        d = client.download_artifacts(r["run_id"], "lossprobe", str(tmp_path / name))
        report = json.loads(open(f"{d}/findings.json").read())
        assert report["health"] == r["probe"].health
        assert [f["code"] for f in report["findings"]] == [f.code for f in r["probe"].findings]
        for f in report["findings"]:
            assert f["causes"] and f["fixes"] and f["evidence"]
        html = open(f"{d}/report.html").read()
        assert html.lstrip().lower().startswith("<!doctype html") and "<svg" in html
        if name == "inf-loss":
            assert "nan_loss" in html


def test_nonfinite_values_and_odd_metric_names(mlflow_server, tmp_path):
    """The sink alone, fed the updates a probe sends: Inf/NaN handling per mode, name cleaning."""
    client = MlflowClient(mlflow_server.uri)
    exp = f"values-{uuid.uuid4().hex[:8]}"
    inf, nan = float("inf"), float("nan")
    rows = [(0, {"lossprobe/loss": 1.5, "lossprobe/grad_norm/enc:0 (q)": 2.0}), (1, {"lossprobe/loss": inf}),
            (2, {"lossprobe/loss": nan}), (3, {"lossprobe/loss": -inf})]
    tags = {"lossprobe.health": "healthy", "lossprobe.diagnoses": "", "lossprobe.framework": "torch"}
    want = {"nan": {0: 1.5, 1: nan, 2: nan, 3: nan}, "drop": {0: 1.5},
            "keep": {0: 1.5, 1: 1.7976931348623157e308, 2: nan, 3: -1.7976931348623157e308}}  # MLflow clamps Inf
    for mode, expect in want.items():
        sink = MlflowSink(mlflow_server.uri, experiment=exp, run_name=mode, nonfinite=mode, spool_dir=tmp_path)
        sink.open(RunInfo("torch", lossprobe.__version__, {}, {}))
        sink.on_flush(FlushUpdate(rows, [], [], "healthy", "healthy", tags, 3))
        sink.close(FinalReport({"health": "healthy", "findings": [], "x": nan}, "<!doctype html>", [], "healthy", tags))
        got = history(client, sink.run_id)
        assert sorted(got) == sorted(expect) and all(same(got[s], v) for s, v in expect.items()), (mode, got)
        assert history(client, sink.run_id, "lossprobe/grad_norm/enc_0 _q_") == {0: 2.0}
        run = client.get_run(sink.run_id)
        assert run.data.tags["lossprobe.diagnoses"] == "" and run.info.status == "FINISHED"
    d = client.download_artifacts(sink.run_id, "lossprobe/findings.json", str(tmp_path))
    assert json.loads(open(d).read())["x"] is None                 # strict JSON: NaN -> null
    assert metric_key("lossprobe/a/../b//c") == "lossprobe/a/_/b/c"


def test_embedded_sqlite_store(tmp_path):
    """No server: a local sqlite:/// URI (what the README demo uses) works the same way."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = MlflowSink(uri, experiment="local", run_name="inf", spool_dir=tmp_path / "spool")
    probe, losses, _ = train(sink, fault="inf_loss", steps=60)
    probe.detach()
    client = MlflowClient(uri)
    assert sorted(history(client, sink.run_id)) == list(range(60))
    assert names(find_runs("local", diagnosis="nan_loss", tracking_uri=uri)) == {"inf"}
    assert sink.stats["spooled"] == 0


def test_hanging_server_never_stalls_training(mlflow_server, tmp_path):
    """A server that accepts requests and never answers: the queue fills, the training thread
    writes to the spool instead of waiting, close gives up after close_timeout, nothing is lost."""
    slow = SlowServer()
    try:
        sink = MlflowSink(slow.uri, experiment="hang", run_name="hang", spool_dir=tmp_path, queue_size=2,
                          close_timeout=2)
        probe, losses, times = train(sink, steps=100)
        t0 = time.perf_counter()
        probe.detach()
        assert time.perf_counter() - t0 < 4
        assert max(times) < 2.0, max(times)
        path = sink.spool_path
        assert path.exists() and any("upload" in m for m in sink.messages)
    finally:
        slow.close()
    res = upload_spool(path, tracking_uri=mlflow_server.uri)       # the records, sent elsewhere later
    (run_id,) = res["runs"]
    client = MlflowClient(mlflow_server.uri)
    got = history(client, run_id)
    assert sorted(got) == list(range(100)) and all(same(got[s], v) for s, v in losses.items())
    run = client.get_run(run_id)
    assert run.info.run_name == "hang" and run.data.tags["lossprobe.health"] == probe.health
    assert {a.path for a in client.list_artifacts(run_id, "lossprobe")} == {"lossprobe/findings.json",
                                                                             "lossprobe/report.html"}


def test_server_killed_mid_training(mlflow_server, tmp_path):
    """The server dies during training: training does not stall, nothing is lost.

    Run A: the server dies at step 40 and is still down when A ends; its records sit in the
    spool file, and the upload command sends them once the server is back (twice is harmless).
    Run B starts while the server is down (even its run cannot be created yet) and the server
    returns at step 40: the sink creates the run and replays its spool by itself.
    """
    exp = f"outage-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(mlflow_server.uri)
    kw = dict(experiment=exp, spool_dir=tmp_path / "spool", backoff=0.05, retry_interval=0.3)
    try:
        a = Trainer(MlflowSink(mlflow_server.uri, run_name="down-at-end", close_timeout=10, **kw), fault="inf_loss")
        a.run(40).sync()
        mlflow_server.kill()
        a.run(STEPS)
        t0 = time.perf_counter()
        a.probe.detach()
        assert time.perf_counter() - t0 < 5.0                          # close does not hang either
        assert not a.sink._thread.is_alive()                          # the sender ended at detach
        path = a.sink.spool_path
        assert path.exists() and a.sink.stats["spooled"] > 0
        said = [m for m in a.sink.messages if "upload" in m]           # once when it began, once at close
        assert len(said) == 2 and all(f"lossprobe.integrations.mlflow upload '{path}'" in m for m in said)

        b = Trainer(MlflowSink(mlflow_server.uri, run_name="back-during", close_timeout=30, **kw), seed=3)
        b.run(40).sync()
        assert b.sink.run_id is None and b.sink.spool_path.exists()
        assert max(a.times[40:] + b.times) < 2.0                       # no step waited for MLflow
        mlflow_server.start()
        b.run(STEPS)
        b.probe.detach()
        assert not b.sink.spool_path.exists(), b.sink.messages
        got = client.get_metric_history(b.sink.run_id, "lossprobe/loss")
        assert sorted(m.step for m in got) == list(range(STEPS))
        run = client.get_run(b.sink.run_id)
        assert run.info.run_name == "back-during" and run.info.status == "FINISHED"
        assert run.data.tags["lossprobe.health"] == b.probe.health

        copy = tmp_path / "copy.jsonl"
        shutil.copy(path, copy)
        out = subprocess.run([sys.executable, "-m", "lossprobe.integrations.mlflow", "upload", str(path)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert not path.exists()
        if int(mlflow.__version__.split(".")[0]) >= 3:
            upload_spool(copy)                                         # again: idempotent
        else:                                                          # MLflow 2 refuses exact duplicate
            with pytest.raises(Exception, match="UNIQUE constraint"):  # points: nothing changes
                upload_spool(copy)
        run_id = a.sink.run_id
        got = history(client, run_id)
        assert sorted(got) == list(range(STEPS))
        assert len(client.get_metric_history(run_id, "lossprobe/loss")) == STEPS
        assert all(same(got[s], v) for s, v in a.losses.items())
        run = client.get_run(run_id)
        assert run.data.tags == {**run.data.tags, **a.probe.tags()} and run.data.tags["lossprobe.health"] == "critical"
        assert run.info.status == "FINISHED"
        assert {x.path for x in client.list_artifacts(run_id, "lossprobe")} == {"lossprobe/findings.json",
                                                                                 "lossprobe/report.html"}
    finally:
        mlflow_server.start()


def test_sender_ends_at_detach_and_never_creates_a_late_run(mlflow_server, tmp_path):
    """The server dies with the sender's first request in flight and is down until after
    detach. MLflow's own client would retry that request for minutes and, once the server is
    back, create the run with the stale tags of the start (a RUNNING 'healthy' run beside the
    one the spool upload makes). The sender must end at detach; the upload then makes the one
    run, with the final tags, and tag searches answer right."""
    exp = f"late-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(mlflow_server.uri)
    gw = Gateway(mlflow_server.uri, mode="hold")
    try:
        c = Trainer(MlflowSink(gw.uri, experiment=exp, run_name="in-flight", close_timeout=4,
                               spool_dir=tmp_path, backoff=0.05, retry_interval=0.3), fault="inf_loss")
        assert gw.held.wait(20)                                        # its first request waits on the server ...
        gw.set("down")                                                 # ... which dies with it in flight
        c.run(60)
        t0 = time.perf_counter()
        c.probe.detach()
        assert time.perf_counter() - t0 < 4 + 1.5                      # within close_timeout
        assert not c.sink._thread.is_alive()                           # the sender ended
        said = [m for m in c.sink.messages if f"upload '{c.sink.spool_path}'" in m]
        assert said and "were not sent" in said[-1]
        seen = gw.requests
        gw.set("up")                                                   # the server is back
        time.sleep(2)
        assert gw.requests == seen                                     # nothing more was asked of it
    finally:
        gw.close()
    key = f"tags.`lossprobe.run_key` = '{c.sink._key}'"
    exp_id = client.get_experiment_by_name(exp)
    assert exp_id is None or client.search_runs([exp_id.experiment_id], key) == []
    upload_spool(c.sink.spool_path, tracking_uri=mlflow_server.uri)
    eid = client.get_experiment_by_name(exp).experiment_id
    (run,) = client.search_runs([eid], key)
    assert run.info.status == "FINISHED" and run.data.tags == {**run.data.tags, **c.probe.tags()}
    assert c.probe.health == "critical"
    assert names(client.search_runs([eid], filter_string(health="critical"))) == {"in-flight"}
    assert client.search_runs([eid], filter_string(health="healthy")) == []


def _log_history(client, exp_id, name, loss, key="loss", val=None, tags=None):
    from mlflow.entities import Metric
    run = client.create_run(exp_id, run_name=name, tags=tags or {})
    ts = int(time.time() * 1000)
    ms = [Metric(key, float(v), ts, i) for i, v in enumerate(loss)]
    if val is not None:
        ms += [Metric("val_loss", float(v), ts, s) for s, v in val]
    for i in range(0, len(ms), 1000):
        client.log_batch(run.info.run_id, metrics=ms[i:i + 1000])
    return run.info.run_id


def test_tag_backfills_unprobed_runs(mlflow_server, capsys):
    import numpy as np
    client = MlflowClient(mlflow_server.uri)
    exp = f"legacy-{uuid.uuid4().hex[:8]}"
    eid = client.create_experiment(exp)
    rng = np.random.default_rng(0)
    s = np.arange(200)
    ids = {
        "healthy": _log_history(client, eid, "healthy", 2.3 * np.exp(-s / 30) + 0.05 + 0.01 * rng.standard_normal(200)),
        "plateau": _log_history(client, eid, "plateau", 2.3 + 0.02 * rng.standard_normal(200)),
        "diverging": _log_history(client, eid, "diverging", np.exp(s / 60) + 0.01 * rng.standard_normal(200)),
        "nan": _log_history(client, eid, "nan", np.where(s < 120, 2.3 * np.exp(-s / 50), np.nan)),
        "overfit": _log_history(client, eid, "overfit", 2.3 * np.exp(-s / 30) + 0.05,
                                val=list(zip(range(0, 200, 20), np.linspace(0.6, 1.5, 10)))),
        "no-loss": _log_history(client, eid, "no-loss", np.ones(50), key="accuracy"),
        "probed": _log_history(client, eid, "probed", 2.3 + 0.02 * rng.standard_normal(200),
                               tags={"lossprobe.source": "probe", "lossprobe.health": "healthy"}),
    }
    assert main_tag(["--experiment", exp, "--tracking-uri", mlflow_server.uri]) == 0
    out = capsys.readouterr().out
    assert "[1/7]" in out and "[7/7]" in out and "5 tagged" in out and "2 skipped" in out

    def tags(name):
        return {k: v for k, v in client.get_run(ids[name]).data.tags.items() if k.startswith("lossprobe.")}

    expect = {"healthy": ("healthy", ""), "plateau": ("warning", "loss_plateau"),
              "diverging": ("critical", "loss_divergence"), "nan": ("critical", "nan_loss"),
              "overfit": ("warning", "overfitting")}
    for name, (health, codes) in expect.items():
        t = tags(name)
        assert (t["lossprobe.health"], t["lossprobe.diagnoses"]) == (health, codes), (name, t)
        assert t["lossprobe.source"] == "posthoc" and "lossprobe.framework" not in t
        for code in filter(None, codes.split(",")):
            assert t[f"lossprobe.diagnosis.{code}"] in ("warning", "critical")
    assert tags("no-loss") == {}
    assert tags("probed") == {"lossprobe.source": "probe", "lossprobe.health": "healthy"}   # left alone
    assert names(client.search_runs([eid], filter_string(health="critical"))) == {"diverging", "nan"}
    assert names(find_runs(exp, diagnosis="loss_plateau", tracking_uri=mlflow_server.uri)) == {"plateau"}

    before = {n: tags(n) for n in ids}
    from lossprobe.cli import main
    assert main(["tag", "--experiment", exp, "--tracking-uri", mlflow_server.uri]) == 0   # safe to re-run
    out = capsys.readouterr().out
    assert "5 unchanged" in out and "tagged" not in out.split("lossprobe tag:")[-1]
    assert {n: tags(n) for n in ids} == before


def test_tag_fails_in_one_line_on_a_dead_server_and_an_unknown_experiment(mlflow_server, capsys):
    dead = f"http://127.0.0.1:{free_port()}"                      # nothing listens: connections refused
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "lossprobe.cli", "tag", "--experiment", "x", "--tracking-uri", dead],
                         capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - t0 < 30
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"lossprobe tag: no MLflow server answers at {dead} "
                                               "(is it running? check --tracking-uri)"]
    from lossprobe.cli import main
    assert main(["tag", "--experiment", "no-such-experiment", "--tracking-uri", mlflow_server.uri]) == 2
    err = capsys.readouterr().err
    assert err == f"lossprobe tag: no experiment named 'no-such-experiment' at {mlflow_server.uri}\n"
