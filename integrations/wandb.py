"""Weights & Biases sink: a ``lossprobe/`` section, a findings table, tags and alerts.

Example::

    import wandb, lossprobe
    run = wandb.init(project="mnist")                       # optional: else lossprobe starts one
    probe = lossprobe.attach(model, sinks=["console", "wandb"])
    ...train as usual, wandb.log(...) / wandb.watch(...) as you already do...
    probe.detach()                                          # before run.finish()

    # or explicitly, e.g. offline with no account:
    from lossprobe.integrations.wandb import WandbSink
    lossprobe.attach(model, sinks=[WandbSink(project="demo", mode="offline")])

What a run gets:

* history: every metric of the probe under ``lossprobe/`` (loss, global and per-layer
  gradient norms, update ratios, dead/saturated fractions), each logged once, with its own
  x-axis ``lossprobe/step`` (``define_metric("lossprobe/*", step_metric="lossprobe/step")``),
  so the section never fights the user's own ``wandb.log`` steps. Per-layer keys keep the
  layer's path, with its type where the path is a bare index (``lossprobe/dead_fraction/1.ReLU``);
* ``lossprobe/findings``: a ``wandb.Table`` grouped by root cause -- each root cause, then the
  findings it explains -- with columns root_cause, code, caused_by, severity, status
  (active | ended | resolved), first/last step, evidence, explanation, and every likely cause
  and fix (numbered). Logged once at the end, and once more on the first critical finding so
  a run that dies early still shows it;
* summary: ``lossprobe/health``, ``lossprobe/root_cause`` (where to start), ``lossprobe/fix_first``,
  ``lossprobe/diagnoses`` (sorted, comma-separated codes ever raised),
  ``lossprobe/active_diagnoses`` (those still firing), ``lossprobe/diagnosis/<code>`` =
  severity, ``lossprobe/findings_count``;
* run tags: ``lossprobe:health=<healthy|warning|critical>`` (kept current: the old one is
  replaced) and one tag per code found, so the project's run table filters by health and by
  diagnosis (code tags are only ever added);
* a ``wandb.alert`` (level ERROR) on the first critical finding of an online run (W&B sends
  it by e-mail/Slack as configured). Offline runs get none by default: wandb writes an alert
  into the offline run file and it would be replayed at ``wandb sync`` time, long after it
  mattered; ``alert=True`` records it anyway, ``alert=False`` never alerts;
* at the end: ``lossprobe/report`` (the HTML report as ``wandb.Html``).

How rows are committed (W&B keeps one history row per ``_step``; a ``log`` call that
commits advances it, and a later ``log(step=s)`` with ``s`` below it is dropped with a
"Steps must be monotonically increasing" warning):

* lossprobe never passes ``step=``; its x-axis is the ``lossprobe/step`` value in the row;
* a run lossprobe started itself, while nothing else commits rows into it: one committed
  row per probe step (full resolution), written in a burst at each flush (about 0.1 ms of
  CPU per row). "Nothing else" is checked at each flush on the client's step counter
  (``run._local_step``; if a wandb release drops it, lossprobe always rides along);
* a run the user owns (or one the user starts logging into): one ``log(..., commit=False)``
  call per flush, exactly as ``wandb.watch`` does. The batch is folded into one row (last
  value of each metric, a NaN/Inf anywhere in the batch wins) that rides on the user's next
  committed row. The user's step counter is never moved, so explicit ``step=`` logging keeps
  working; the section then has one point per flush (``Config.flush_every`` steps), the
  HTML report has the finer curves. If the user commits no row between two flushes, the
  later flush's values replace the earlier ones in the pending row.

If you log with explicit ``step=`` yourself, create the run (``wandb.init``) before
``attach``: then lossprobe rides along from the first flush. Call ``probe.detach()``
before ``run.finish()`` so the final summary, table and report land in the run.

Every W&B call is guarded: a failure is reported once and the sink switches itself off
(extras such as the alert or the HTML panel just skip themselves), training goes on.
"""
from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

from lossprobe.findings import Finding
from lossprobe.readout import evidence_line, ordered
from lossprobe.rootcause import attribute
from lossprobe.sinks import FinalReport, FlushUpdate, RunInfo, Sink

log = logging.getLogger("lossprobe")

STEP_KEY = "lossprobe/step"
TABLE_KEY = "lossprobe/findings"
REPORT_KEY = "lossprobe/report"
TABLE_COLUMNS = ["root_cause", "code", "caused_by", "severity", "status", "first_step", "last_step",
                 "evidence", "explanation", "causes", "fixes"]
HEALTH_TAG = "lossprobe:health="        # + healthy | warning | critical


class WandbSink(Sink):
    """Publish lossprobe's metrics, findings, tags and report to a W&B run.

    ``project``/``mode``/``**init_kwargs``: used only when lossprobe has to start the run
    itself (``wandb.init(project=project or "lossprobe", mode=mode, **init_kwargs)``);
    ``mode`` is ``"online"``, ``"offline"`` or ``"disabled"`` (``None``: W&B's default,
    ``WANDB_MODE``). ``run``: log into this run. Otherwise the current ``wandb.run`` is used,
    looked up at the first flush, so ``wandb.init`` may come before or after ``attach``.
    lossprobe finishes only a run it started.

    ``alert``: ``"online"`` (default): a ``wandb.alert`` on the first critical finding when the
    run is online; ``True``: also record it in offline runs; ``False``: never. ``report``: log the
    HTML report at the end.
    ``row_per_step``: ``None`` (default) decides as described in the module docstring;
    ``True`` forces one committed row per probe step, ``False`` forces riding along.
    """

    name = "wandb"
    on_training_thread = True  # shares wandb.run's step counter with the user's own wandb.log calls

    def __init__(self, project: str | None = None, mode: str | None = None, run: Any = None, *,
                 alert: bool | str = "online", report: bool = True,
                 row_per_step: bool | None = None, **init_kwargs: Any) -> None:
        if run is None and importlib.util.find_spec("wandb") is None:
            raise ImportError("the 'wandb' sink needs the wandb package: pip install wandb "
                              "(or lossprobe[wandb])")
        if alert not in (True, False, "online"):
            raise ValueError(f"alert must be True, False or 'online', got {alert!r}")
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"mode must be 'online', 'offline', 'disabled' or None, got {mode!r}")
        self.project = project
        self.mode = mode
        self.init_kwargs = init_kwargs
        self.alert = alert
        self.report = report
        self.row_per_step = row_per_step
        self.run: Any = run
        self.owned = False              # True when lossprobe started the run (and will finish it)
        self.off = False
        self.run_dir: Path | None = None
        self.sync_command: str | None = None
        self._wandb: Any = None
        self._info: RunInfo | None = None
        self._warned: set[str] = set()
        self._riding = False            # once riding (someone else commits rows), stay riding
        self._expected_step: int | None = None
        self._critical_table = False    # the table logged on the first critical finding
        self._summary_key: tuple | None = None
        self._alerted = False

    # -- Sink interface ------------------------------------------------------------
    def open(self, info: RunInfo) -> None:
        self._info = info
        self._guard("open", self._open)

    def on_flush(self, update: FlushUpdate) -> None:
        if self.off:
            return
        self._guard("log", self._flush, update)

    def close(self, final: FinalReport) -> None:
        if not self.off:
            self._guard("close", self._close, final)
        if self.owned and not getattr(self.run, "_is_finished", True):
            self._extra("finish", self.run.finish)   # a run we started is finished even after a failure

    # -- the work ---------------------------------------------------------------------
    def _open(self) -> None:
        import wandb
        self._wandb = wandb
        if self.run is None and wandb.run is not None:
            self.run = wandb.run
        if self.run is not None:
            self._bind(self.run, owned=False)

    def _ensure_run(self) -> Any:
        if self.run is not None:
            return self.run
        wandb = self._wandb
        if wandb.run is not None:
            self._bind(wandb.run, owned=False)
        else:
            kwargs = dict(self.init_kwargs)
            kwargs.setdefault("project", self.project or "lossprobe")
            if self.mode is not None:
                kwargs.setdefault("mode", self.mode)
            self._bind(wandb.init(**kwargs), owned=True)
        return self.run

    def _bind(self, run: Any, owned: bool) -> None:
        self.run = run
        self.owned = owned
        self._expected_step = getattr(run, "_local_step", None)
        run.define_metric(STEP_KEY)
        run.define_metric("lossprobe/*", step_metric=STEP_KEY)
        if self._info is not None:
            self._extra("config", run.config.update, {"lossprobe": {
                "version": self._info.version, "framework": self._info.framework,
                "flush_every": self._info.config.get("flush_every"),
                "activation_every": self._info.config.get("activation_every")}},
                allow_val_change=True)
        if not self._disabled():
            try:
                self.run_dir = Path(run.dir).parent
                if getattr(run, "offline", False):
                    self.sync_command = f"wandb sync {self.run_dir}"
            except Exception:
                pass

    def _flush(self, update: FlushUpdate) -> None:
        self._ensure_run()
        extra: dict[str, Any] = {}
        if not self._critical_table and any(f.severity == "critical" for f in update.findings):
            self._critical_table = True
            extra[TABLE_KEY] = self._table(update.findings)
        self._log(update.metrics, extra, update.last_step)
        self._publish_state(update.findings, update.health, update.tags)
        crit = [f for f in update.new_findings if f.severity == "critical"]
        if crit and self.alert and not self._alerted:
            self._alerted = True
            self._extra("alert", self._send_alert, crit[0])

    def _close(self, final: FinalReport) -> None:
        if self.run is None and self._wandb.run is None:
            return                        # the probe saw no step: nothing to publish
        run = self._ensure_run()
        if getattr(run, "_is_finished", False):
            self._warn("finished", "the W&B run was finished before probe.detach(): the final "
                       "summary, table and report are not logged (detach before run.finish())")
            return
        extra: dict[str, Any] = {TABLE_KEY: self._table(final.findings)}
        if self.report:
            self._extra("report", lambda: extra.__setitem__(
                REPORT_KEY, self._wandb.Html(final.html, inject=False)))
        last = final.report.get("last_step", -1)
        self._log([], extra, int(last) if last is not None else -1)
        self._publish_state(final.findings, final.health, final.tags, force=True)
        if self.owned:
            run.finish()
            if self.sync_command:
                log.info("lossprobe: offline W&B run written; upload it with: %s", self.sync_command)

    # -- history rows ---------------------------------------------------------------
    def _per_step(self) -> bool:
        if self.row_per_step is not None:
            return self.row_per_step
        if not self.owned or self._riding:
            return False
        now = getattr(self.run, "_local_step", None)
        if now is None or self._expected_step is None or now != self._expected_step:
            # someone else committed rows into this run: never move its step counter again
            self._riding = True
            return False
        return True

    def _log(self, rows: list[tuple[int, dict[str, float]]], extra: dict[str, Any], last_step: int) -> None:
        run = self.run
        rows = _merge_steps(rows)
        if self._per_step():
            if not rows and extra:
                rows = [(last_step, {})]
            for i, (step, m) in enumerate(rows):
                row = {STEP_KEY: int(step), **m}
                if i == len(rows) - 1:
                    row.update(extra)
                run.log(row)
            self._expected_step = getattr(run, "_local_step", None)
        else:
            row = _fold(rows)
            row.setdefault(STEP_KEY, last_step)
            row.update(extra)
            if len(row) > 1:
                run.log(row, commit=False)

    # -- findings, summary, tags, alert -----------------------------------------------
    def _table(self, findings: list[Finding]) -> Any:
        """The findings, root causes first with the findings they explain under them."""
        data = []
        for row in ordered(findings):
            f = row.finding
            data.append([row.root, f.code, f.caused_by or "", f.severity, row.status, int(f.step),
                         int(max(f.last_step, f.step)), evidence_line(f.evidence, limit=len(f.evidence)),
                         f.message, _numbered(f.causes), _numbered(f.fixes)])
        return self._wandb.Table(columns=TABLE_COLUMNS, data=data)

    def _publish_state(self, findings: list[Finding], health: str, tags: dict[str, str],
                       force: bool = False) -> None:
        key = (health, tuple(sorted(tags.items())), tuple(f.active for f in findings))
        if force or key != self._summary_key:
            self._summary_key = key
            summary = {k.replace(".", "/", 2) if k.startswith("lossprobe.") else k: v
                       for k, v in tags.items()}
            roots = attribute(findings)
            summary["lossprobe/fix_first"] = roots[0].fix_first if roots else ""
            summary["lossprobe/active_diagnoses"] = ",".join(sorted(f.code for f in findings if f.active))
            summary["lossprobe/findings_count"] = len(findings)
            self.run.summary.update(summary)
        codes = {f.code for f in findings}
        current = set(self.run.tags or ())
        want = {t for t in current if not t.startswith(HEALTH_TAG)} | codes | {HEALTH_TAG + health}
        if want != current:
            self.run.tags = tuple(sorted(want))

    def _send_alert(self, f: Finding) -> None:
        if self._disabled() or (self.alert == "online" and getattr(self.run, "offline", True)):
            return
        title = f"lossprobe: {f.code} at step {f.step}"[:63]
        text = f"{f.message}\nEvidence: {evidence_line(f.evidence, limit=len(f.evidence))}\nFix first: " \
               f"{f.fixes[0] if f.fixes else '-'}"
        self.run.alert(title=title, text=text, level=self._wandb.AlertLevel.ERROR)

    # -- guards ---------------------------------------------------------------------------
    def _disabled(self) -> bool:
        if self.mode == "disabled":
            return True
        try:
            return bool(getattr(self.run, "disabled", False))
        except Exception:
            return False

    def _guard(self, what: str, fn, *args) -> None:
        """Core publishing: any failure switches the sink off (reported once)."""
        try:
            fn(*args)
        except Exception as exc:
            self.off = True
            self._warn("off", f"W&B sink failed in {what} ({type(exc).__name__}: {exc}); "
                       "it is switched off, training continues")

    def _extra(self, what: str, fn, *args, **kwargs) -> None:
        """Optional extras (alert, HTML panel, config): a failure skips only that extra."""
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            self._warn(what, f"W&B {what} skipped ({type(exc).__name__}: {exc})")

    def _warn(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("lossprobe: %s", msg)


def _merge_steps(rows: list[tuple[int, dict[str, float]]]) -> list[tuple[int, dict[str, float]]]:
    """Rows sorted by step, rows of one step merged (a validation point joins its step's row),
    so ``lossprobe/step`` never goes backwards in the history."""
    merged: dict[int, dict[str, float]] = {}
    for step, m in rows:
        merged.setdefault(int(step), {}).update(m)
    return sorted(merged.items())


def _fold(rows: list[tuple[int, dict[str, float]]]) -> dict[str, Any]:
    """A flush batch as one row: the last value of each metric, except that a NaN/Inf
    anywhere in the batch is kept (a non-finite loss is the news). ``lossprobe/step`` is
    the last step of the batch."""
    out: dict[str, Any] = {}
    for step, m in rows:
        for k, v in m.items():
            if k in out and not math.isfinite(out[k]) and math.isfinite(v):
                continue
            out[k] = v
        out[STEP_KEY] = int(step)
    return out


def _numbered(items: list[str]) -> str:
    """Every item, ranked: ``1. ...`` one per line (a table cell shows them all)."""
    return "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))
