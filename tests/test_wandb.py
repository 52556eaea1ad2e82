"""W&B integration against the real thing: real torch training, offline W&B runs, and the
written ``run-<id>.wandb`` files read back with tests/wandb_reader.py (not our own output).

The faulty runs multiply the loss by inf from step 60 on, so ``nan_loss`` surely fires; the
healthy run is a small MLP on load_digits that learns normally.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
wandb = pytest.importorskip("wandb")
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

import lossprobe  # noqa: E402
from lossprobe.integrations.wandb import STEP_KEY, TABLE_COLUMNS, TABLE_KEY, WandbSink, _fold  # noqa: E402
from lossprobe.rootcause import attribute  # noqa: E402

from wandb_reader import iter_payloads, read_run, run_file  # noqa: E402

STEPS = 150
FAULT_STEP = 60
CFG = lossprobe.Config(flush_every=20)


@pytest.fixture(scope="module", autouse=True)
def offline_wandb(tmp_path_factory):
    """Offline, silent, no console capture, runs under a temporary directory; torch on one
    thread (these models are tiny, and two threads on a busy 2-core box are ~20x slower)."""
    root = tmp_path_factory.mktemp("wandb")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root))
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_CONSOLE", "off")
    mp.setenv("WANDB_DISABLE_GIT", "true")
    mp.setenv("WANDB_DISABLE_CODE", "true")
    mp.delenv("WANDB_API_KEY", raising=False)
    yield root
    if wandb.run is not None:
        wandb.finish()
    mp.undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def train(digits, sinks, *, fault: bool, steps: int = STEPS, user_log=None, seed: int = 0,
          model=None, opt=None, val_every: int = 0):
    """Plain torch loop; ``user_log(step, loss)`` stands for the user's own wandb.log calls;
    every ``val_every`` steps a validation loss under no_grad (the probe captures it)."""
    X, y = digits
    if model is None:
        model, opt = make_model(seed)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    probe = lossprobe.attach(model, optimizer=opt, config=CFG, sinks=sinks)
    for s in range(steps):
        idx = torch.randint(0, len(X), (64,), generator=g)
        loss = loss_fn(model(X[idx]), y[idx])
        if fault and s >= FAULT_STEP:
            loss = loss * float("inf")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if user_log is not None:
            user_log(s, loss)
        if val_every and s % val_every == val_every - 1:
            with torch.no_grad():
                loss_fn(model(X[-300:]), y[-300:])
    probe.detach()
    return probe


def _codes(probe, severities=("critical", "warning", "info")) -> set[str]:
    return {f.code for f in probe.findings if f.severity in severities}


def _tables(run) -> list[dict]:
    """Every findings table logged into the run's history (a reference per log call)."""
    return [row[TABLE_KEY] for row in run.history if TABLE_KEY in row]


# -- a run lossprobe starts itself ------------------------------------------------------

@pytest.fixture(scope="module")
def own_runs(digits):
    """A faulty and a healthy run, each started (and finished) by the sink itself."""
    out = {}
    for kind in ("faulty", "healthy"):
        sink = WandbSink(project="lossprobe-tests", name=f"{kind}-run", alert=True)
        probe = train(digits, [sink], fault=(kind == "faulty"), val_every=25)
        out[kind] = (probe, sink, read_run(sink.run_dir))
    return out


def test_faulty_run_reads_back_with_codes(own_runs):
    probe, sink, run = own_runs["faulty"]
    assert "nan_loss" in _codes(probe)
    assert sink.owned and wandb.run is None                 # started by the sink, and finished by it
    assert "exit" in run.record_types
    assert sink.sync_command == f"wandb sync {sink.run_dir}"
    # summary: health and the diagnoses, as the tracker tag contract says
    assert run.summary["lossprobe/health"] == "critical"
    assert run.summary["lossprobe/diagnoses"] == ",".join(sorted(_codes(probe)))
    assert run.summary["lossprobe/diagnosis/nan_loss"] == "critical"
    assert "nan_loss" in run.summary["lossprobe/active_diagnoses"].split(",")
    roots = attribute(probe.findings)
    assert run.summary["lossprobe/root_cause"] == roots[0].code
    assert run.summary["lossprobe/fix_first"] == roots[0].fix_first
    # run tags: the health, and every code found
    assert set(run.tags) == _codes(probe) | {"lossprobe:health=critical"}
    # findings table as W&B wrote it under files/: logged on the first critical and at the end
    assert len(_tables(run)) == 2
    table = run.table(TABLE_KEY)
    assert table["columns"] == TABLE_COLUMNS
    rows = {r[1]: dict(zip(table["columns"], r)) for r in table["data"]}
    assert set(rows) == _codes(probe) and len(table["data"]) == len(rows)
    nan = rows["nan_loss"]
    f = next(f for f in probe.findings if f.code == "nan_loss")
    assert nan["severity"] == "critical" and FAULT_STEP <= nan["first_step"] <= nan["last_step"]
    assert nan["status"] in ("active", "ended") and nan["root_cause"] and nan["caused_by"] == (f.caused_by or "")
    # all causes and all fixes, ranked; evidence as name=value, not JSON
    assert nan["fixes"].splitlines() == [f"{i}. {x}" for i, x in enumerate(f.fixes, 1)]
    assert nan["causes"].splitlines() == [f"{i}. {x}" for i, x in enumerate(f.causes, 1)]
    assert "{" not in nan["evidence"] and all(f"{k}=" in nan["evidence"] for k in f.evidence)
    # one alert, for the first critical finding (alert=True: recorded in an offline run too)
    assert len(run.alerts) == 1 and run.alerts[0].level == "ERROR"
    assert run.alerts[0].title.startswith("lossprobe: ") and "at step" in run.alerts[0].title
    # the HTML report panel, written to files/
    report = run.summary["lossprobe/report"]
    assert report["_type"] == "html-file"
    assert "nan_loss" in (run.dir / "files" / report["path"]).read_text()


def test_faulty_run_history_has_lossprobe_step_axis(own_runs):
    probe, sink, run = own_runs["faulty"]
    assert run.metrics.get("lossprobe/*") == STEP_KEY       # define_metric(..., step_metric=...)
    assert STEP_KEY in run.metrics
    loss = run.series("lossprobe/loss")
    assert [s for s, _ in loss] == list(range(STEPS))       # one committed row per probe step
    assert all(math.isfinite(v) for s, v in loss if s < FAULT_STEP)
    # the probe sees the nn.Module loss (finite at FAULT_STEP, before the user's `* inf`);
    # from the next step on the weights are NaN and so is every loss
    assert all(not math.isfinite(v) for s, v in loss if s > FAULT_STEP)
    # the global grad norm is published while finite (the nan is in lossprobe/loss and the table)
    assert [s for s, _ in run.series("lossprobe/grad_norm")][:FAULT_STEP] == list(range(FAULT_STEP))
    assert any(k.startswith("lossprobe/grad_norm/") for row in run.history for k in row)
    # per-layer values are logged once, as history keys named by layer (no second copy as charts)
    keys = {k for row in run.history for k in row}
    assert {"lossprobe/grad_norm/0.Linear.weight", "lossprobe/dead_fraction/1.ReLU"} <= keys
    assert not any(k.startswith("lossprobe/layers/") for k in keys | set(run.summary))
    # no row carries a W&B step of our choosing: _step just counts rows
    assert [row["_step"] for row in run.history] == list(range(len(run.history)))


def test_healthy_run_has_no_faults(own_runs):
    probe, sink, run = own_runs["healthy"]
    assert probe.health == "healthy" and not _codes(probe, ("critical", "warning"))
    assert run.summary["lossprobe/health"] == "healthy"
    table = run.table(TABLE_KEY)
    assert {r[3] for r in table["data"]} <= {"info"}         # e.g. `converged`, nothing else
    assert len(_tables(run)) == 1                            # the findings table, once, at the end
    assert "nan_loss" not in run.tags and not run.alerts
    assert set(run.tags) == _codes(probe) | {"lossprobe:health=healthy"}
    assert run.summary["lossprobe/root_cause"] == "" and run.summary["lossprobe/fix_first"] == ""
    loss = [v for _, v in run.series("lossprobe/loss")]
    assert len(loss) == STEPS and all(math.isfinite(v) for v in loss)
    assert np.mean(loss[-10:]) < 0.5 * np.mean(loss[:10])   # it really learned
    val = run.series("lossprobe/val_loss")
    assert [s for s, _ in val] == list(range(24, STEPS, 25)) and all(math.isfinite(v) for _, v in val)
    steps = [row[STEP_KEY] for row in run.history if STEP_KEY in row]
    assert steps == sorted(steps)                             # the x-axis never goes backwards


def test_reader_walks_blocks_and_checks_crcs(own_runs):
    _, sink, _ = own_runs["faulty"]
    path = run_file(sink.run_dir)
    assert path.stat().st_size > 2 * 32 * 1024              # spans several 32 KiB blocks
    kinds: list[int] = []
    n = sum(1 for _ in iter_payloads(path, kinds))
    assert n > STEPS
    assert {1, 2, 4} <= set(kinds)                           # FULL, and records split across blocks
    corrupt = bytearray(path.read_bytes())
    corrupt[40] ^= 0xFF                                      # flip a byte in the first record
    bad = path.with_name("corrupt.bin")
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="bad record"):
        list(iter_payloads(bad))


# -- the user's own run: wandb.log(step=...) and wandb.watch alongside the probe ---------

@pytest.fixture
def loud_wandb():
    """W&B prints its warnings (e.g. "Steps must be monotonically increasing") to stderr only
    when not silent, and decides that once per process: switch it on for one test."""
    wandb.termsetup(wandb.Settings(silent=False), None)
    yield
    wandb.termsetup(wandb.Settings(silent=True), None)


def _user_run(digits, capfd, sinks_factory):
    """The user's run: explicit step= logging every step, an epoch metric every 50 steps,
    wandb.watch(log="all"); the probe attached with ``sinks_factory()``."""
    run = wandb.init(project="lossprobe-tests", name="user-run", tags=["mine"])
    model, opt = make_model(1)
    wandb.watch(model, log="all", log_freq=10)

    def user_log(step, loss):
        wandb.log({"train/loss": float(loss.detach())}, step=step)
        if step % 50 == 49:
            wandb.log({"epoch/index": step // 50}, step=step)

    capfd.readouterr()
    probe = train(digits, sinks_factory(), fault=True, user_log=user_log, model=model, opt=opt)
    still_active = not run._is_finished
    run_dir = run.dir
    run.finish()
    err = capfd.readouterr().err
    return probe, still_active, err, read_run(Path(run_dir).parent)


def test_coexists_with_user_steps_and_watch(digits, capfd, loud_wandb, caplog):
    with caplog.at_level(logging.WARNING, logger="lossprobe"):
        probe, still_active, err, run = _user_run(digits, capfd, lambda: ["wandb"])
    assert not [r for r in caplog.records if "W&B" in r.getMessage()]   # a failing sink would say so
    assert still_active                                      # the sink never finishes the user's run
    assert "monotonically" not in err and "will be ignored" not in err, err
    # every one of the user's rows is there, at the user's own steps
    user = run.series("train/loss", step_key="_step")
    assert [s for s, _ in user] == list(range(STEPS))
    assert [row["_step"] for row in run.history] == list(range(STEPS))
    assert [v for _, v in run.series("epoch/index", "_step")] == [0, 1, 2]
    # wandb.watch's histograms made it too
    assert any(k.startswith("gradients/") for row in run.history for k in row)
    # lossprobe's section rides on the user's rows: one point per flush, its own step axis
    lp = run.series("lossprobe/loss")
    steps = [s for s, _ in lp]
    assert steps == sorted(steps) and len(steps) >= STEPS // CFG.flush_every
    assert steps[0] == CFG.flush_every - 1 and steps[-1] == STEPS - 1
    assert all(math.isfinite(v) for s, v in lp if s < FAULT_STEP)
    assert not math.isfinite(dict(lp)[STEPS - 1])
    assert run.metrics.get("lossprobe/*") == STEP_KEY
    # findings published into the user's run, next to the user's own tag
    assert {"mine", "nan_loss"} <= set(run.tags) and _codes(probe) <= set(run.tags)
    assert run.summary["lossprobe/health"] == "critical"
    assert {r[1] for r in run.table(TABLE_KEY)["data"]} == _codes(probe)
    assert run.summary["train/loss"] is not None             # the user's summary is intact
    assert not run.alerts                                    # default alert="online": none offline


def test_negative_control_committing_rows_breaks_user_steps(digits, capfd, loud_wandb):
    """Why the sink rides along in a user's run: committing its own rows there (forced
    here with row_per_step=True) moves W&B's step past the user's explicit steps, and W&B
    drops the user's data. This is the failure the coexistence test above guards against."""
    probe, _, err, run = _user_run(digits, capfd, lambda: [WandbSink(row_per_step=True)])
    user_steps = [s for s, _ in run.series("train/loss", step_key="_step")]
    assert len(user_steps) < STEPS
    assert "monotonically" in err


def test_user_logging_into_a_run_the_sink_started(digits, capfd, loud_wandb):
    """The sink started the run at its first flush; the user then logs into ``wandb.run`` with
    explicit steps. The sink sees W&B's step counter move and rides along from then on."""
    sink = WandbSink(project="lossprobe-tests", name="taken-over")

    def user_log(step, loss):
        if wandb.run is not None:
            wandb.log({"train/loss": float(loss.detach())}, step=step)

    capfd.readouterr()
    train(digits, [sink], fault=False, user_log=user_log)
    err = capfd.readouterr().err
    run = read_run(sink.run_dir)
    assert sink.owned and sink._riding
    assert "monotonically" not in err, err
    user_steps = [s for s, _ in run.series("train/loss", step_key="_step")]
    first = user_steps[0]
    # the run starts when the first flush reaches the sink: flush processing runs on the probe's
    # worker and W&B calls are delivered at the next step boundary, so within the next flush period
    assert CFG.flush_every - 1 <= first < 2 * CFG.flush_every and user_steps == list(range(first, STEPS))
    lp = [s for s, _ in run.series("lossprobe/loss")]
    assert lp[:CFG.flush_every] == list(range(CFG.flush_every))   # the first flush: a row per step
    assert lp[-1] == STEPS - 1 and lp == sorted(lp)


# -- modes and failures -------------------------------------------------------------------

def test_disabled_mode_writes_nothing(digits, offline_wandb, caplog):
    before = set(offline_wandb.rglob("run-*.wandb"))
    sink = WandbSink(mode="disabled")
    with caplog.at_level(logging.WARNING, logger="lossprobe"):
        probe = train(digits, [sink], fault=True, steps=80)
    assert not [r for r in caplog.records if "W&B" in r.getMessage()]
    assert "nan_loss" in _codes(probe)
    assert not sink.off and sink.owned and sink.sync_command is None
    assert set(offline_wandb.rglob("run-*.wandb")) == before
    assert wandb.run is None


def test_failure_is_reported_once_and_training_goes_on(digits, caplog):
    dead = wandb.init(project="lossprobe-tests", name="finished-early")
    dead.finish()                                            # logging into it now raises
    sink = WandbSink(run=dead)
    with caplog.at_level(logging.WARNING, logger="lossprobe"):
        probe = train(digits, ["console", sink], fault=True, steps=80)
    assert sum("W&B sink failed" in r.getMessage() for r in caplog.records) == 1
    assert sink.off and "nan_loss" in _codes(probe)          # the probe itself kept working
    assert probe.step == 79


def test_fold_keeps_nonfinite_and_last_values():
    rows = [(0, {"lossprobe/loss": 1.0}), (1, {"lossprobe/loss": float("nan"), "lossprobe/lr": 0.1}),
            (2, {"lossprobe/loss": 0.5})]
    out = _fold(rows)
    assert math.isnan(out["lossprobe/loss"]) and out["lossprobe/lr"] == 0.1 and out[STEP_KEY] == 2
    assert _fold(rows[:1] + rows[2:])["lossprobe/loss"] == 0.5


def test_table_is_grouped_by_root_cause_and_the_health_tag_follows(offline_wandb):
    """The sink alone, fed what a probe sends, with findings whose caused_by is set (as the
    attribution sets it from the causal model): one table on the first critical, one at the end,
    rows grouped by root cause; the health tag is replaced as health changes, never doubled."""
    from lossprobe.findings import Detection, Finding
    from lossprobe.sinks import FinalReport, FlushUpdate, RunInfo
    from lossprobe.tags import tracker_tags

    def finding(code, step, caused_by=None, resolved=False):
        f = Finding.from_detection(Detection(code, step, {"value": 1.0}))
        f.caused_by, f.resolved, f.active = caused_by, resolved, not resolved
        return f

    lr = finding("learning_rate_too_high", 12)
    dead = finding("dead_relu", 40, "learning_rate_too_high")
    regularised = finding("over_regularization", 30, resolved=True)
    plateau = finding("loss_plateau", 70, "learning_rate_too_high")
    bad_batch = finding("nonfinite_inputs", 90)   # nothing here explains a NaN batch
    sink = WandbSink(project="lossprobe-tests", name="grouped")
    sink.open(RunInfo("torch", lossprobe.__version__, {}, {"flush_every": 20}))
    flushes = [([lr, dead], [lr, dead], "warning", "healthy"),
               ([lr, dead, regularised], [regularised], "warning", "warning"),
               ([lr, dead, regularised, plateau, bad_batch], [plateau, bad_batch], "critical", "warning"),
               ([lr, dead, regularised, plateau, bad_batch], [], "critical", "critical")]
    for step, (found, new, health, before) in enumerate(flushes):
        sink.on_flush(FlushUpdate([(step, {"lossprobe/loss": 2.0 - step / 10})], found, new, health, before,
                                  tracker_tags(found, health), step))
    final = flushes[-1][0]
    sink.close(FinalReport({"last_step": 3}, "<!doctype html>", final, "critical", tracker_tags(final, "critical")))
    run = read_run(sink.run_dir)
    assert len(_tables(run)) == 2
    table = run.table(TABLE_KEY)
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [(r["root_cause"], r["code"], r["caused_by"], r["status"]) for r in rows] == [
        ("nonfinite_inputs", "nonfinite_inputs", "", "active"),
        ("learning_rate_too_high", "learning_rate_too_high", "", "active"),
        ("learning_rate_too_high", "dead_relu", "learning_rate_too_high", "active"),
        ("learning_rate_too_high", "loss_plateau", "learning_rate_too_high", "active"),
        ("over_regularization", "over_regularization", "", "resolved")]
    assert set(run.tags) == {f.code for f in final} | {"lossprobe:health=critical"}
    assert run.summary["lossprobe/root_cause"] == "nonfinite_inputs"
    assert run.summary["lossprobe/diagnoses"] == ",".join(sorted(f.code for f in final))   # every code stays
