"""Probe: owns one backend, the history, the rules and the sinks.

Data flows one way: backend hooks -> on-device reductions -> (every ``flush_every``
steps, one host copy) -> StepRecords -> History -> rules -> Findings -> health -> sinks.

Example::

    with lossprobe.attach(model, optimizer=opt) as probe:
        for x, y in loader:
            loss = loss_fn(model(x), y)      # nn.Module losses are captured automatically
            opt.zero_grad(); loss.backward(); opt.step()
    print(probe.health, [f.code for f in probe.findings])
"""
from __future__ import annotations

import collections
import json
import logging
import math
import queue
import threading
import time
from pathlib import Path

import numpy as np
from typing import Any, Iterable

from . import __version__
from .catalog import SEVERITY_RANK, worst
from .config import Config
from .findings import Detection, Finding
from .history import History
from .metrics import metric_rows
from .record import Layout, StepRecord
from .rules import RuleRunner
from .sinks import ConsoleSink, FinalReport, FlushUpdate, RunInfo, Sink
from .tags import tracker_tags

log = logging.getLogger("lossprobe")


class TrainingHealthError(RuntimeError):
    """Raised at a step boundary when ``Config(on_critical="raise")`` and a critical finding appeared."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        codes = ", ".join(f"{f.code} (step {f.step})" for f in findings)
        super().__init__(f"lossprobe: critical training fault: {codes}. {findings[0].message}")


class Probe:
    """Training-health probe bound to one model. Create it with :func:`lossprobe.attach`."""

    def __init__(self, layout: Layout, config: Config | None = None,
                 sinks: Iterable[Sink | str] | Sink | str | None = None):
        self.config = config or Config()
        self.layout = layout
        self._history = History(layout, window=self.config.window)
        # on_critical="raise" promises the error at the very next step boundary after the flush
        # that saw the fault: that needs the rules inline, not on a worker a step or two behind
        self._worker = _Worker(self) if self.config.background and self.config.on_critical != "raise" else None
        self._runner = RuleRunner()
        self._findings: dict[str, Finding] = {}
        self._health = "healthy"
        self._pending_raise: list[Finding] = []
        self._raised: set[str] = set()
        self._backend = None
        self._closed = False
        self._warned: set[str] = set()
        self._since_eval = 0
        self._main_calls: collections.deque = collections.deque()
        if sinks is None:
            sinks = ["console"]
        elif isinstance(sinks, (str, Sink)):
            sinks = [sinks]          # attach(model, sinks="mlflow"): one sink
        self.sinks: list[Sink] = [resolve_sink(s) for s in sinks]

    # -- lifecycle --------------------------------------------------------
    def _start(self, backend) -> None:
        self._backend = backend
        info = RunInfo(self.layout.framework, __version__, self.layout.to_dict(), self.config.to_dict())
        for sink in list(self.sinks):
            self._call_sink(sink, "open", info)

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def detach(self) -> None:
        """Flush what is pending, remove every hook, publish the final report. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._backend is not None:
            if hasattr(self._backend, "finish"):  # close a step still open (no optimizer.step() after it)
                self._guard("backend finish", self._backend.finish)
            self._guard("backend flush", self._backend.flush)
            self._guard("backend detach", self._backend.detach)
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self._deliver()
        self._evaluate(final=True)
        final = FinalReport(self.report(), self.html(), self.findings, self.health, self.tags())
        for sink in list(self.sinks):
            self._call_sink(sink, "close", final)

    @property
    def history(self) -> History:
        """The bounded history (waits for pending flush work first, so it is current)."""
        self._drain()
        return self._history

    @history.setter
    def history(self, value: History) -> None:
        self._drain()
        self._history = value

    def _drain(self) -> None:
        w = self._worker
        if w is not None and threading.current_thread() is not w.thread:
            w.drain()

    # -- user-facing ---------------------------------------------------------
    def observe(self, loss: Any = None, *, targets: Any = None, val_loss: Any = None,
                gradients: Any = None, step: int | None = None) -> None:
        """Hand the probe what its hooks cannot see.

        ``loss``/``targets``: the training loss of this step (a tensor or float) and its
        targets, for functional losses. A loss the hooks already captured is not counted
        twice. ``val_loss``: a validation loss (float or tensor), recorded at the current
        step. ``gradients``: for frameworks without hooks (a TensorFlow GradientTape loop).
        """
        if self._backend is None or self._closed:
            return
        self._guard("observe", self._backend.observe, loss, targets, val_loss, gradients, step)

    def flush(self) -> None:
        """Force a host read of pending statistics and run the rules now."""
        if self._backend is not None and not self._closed:
            self._guard("backend flush", self._backend.flush)

    @property
    def findings(self) -> list[Finding]:
        self._drain()
        return sorted(self._findings.values(), key=lambda f: (-SEVERITY_RANK[f.severity], f.step, f.code))

    @property
    def health(self) -> str:
        self._drain()
        return self._health

    @property
    def step(self) -> int:
        h = self.history
        return h.last_step if h.last_step is not None else -1

    def tags(self) -> dict[str, str]:
        return tracker_tags(self.findings, self.health, self.layout.framework, __version__)

    def report(self) -> dict[str, Any]:
        """Everything known about the run as a JSON-serialisable dict."""
        from .report import build_report
        return build_report(self)

    def html(self) -> str:
        from .report import render_html
        return render_html(self.report())

    def save_report(self, path: str | Path) -> Path:
        """Write ``.json`` or ``.html`` (self-contained, with plots) by the file suffix."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in (".html", ".htm"):
            path.write_text(self.html(), encoding="utf-8")
        elif path.suffix.lower() == ".json":
            path.write_text(json.dumps(self.report(), indent=2), encoding="utf-8")
        else:
            raise ValueError(f"save_report: use a .json or .html path, got {path.name!r}")
        return path

    # -- called by backends ----------------------------------------------------
    def _ingest(self, records: list[StepRecord], val_points: list[tuple[int, float]] = (),
                extra_rows: list[tuple[int, dict[str, float]]] = ()) -> None:
        """A flush from a backend: processed on the probe's worker thread (or inline)."""
        self._submit(self._process, records, val_points, extra_rows)

    def _submit(self, fn, *args) -> None:
        """Run host-side flush work (decoding, rules, sinks) off the training thread.

        The device->host copy has already happened on the training thread; what is left is
        numpy and Python, which the worker overlaps with the next steps' device compute."""
        w = self._worker
        if w is not None and threading.current_thread() is not w.thread:
            w.submit(fn, *args)
        else:
            self._guard("flush processing", fn, *args)

    def _process(self, records: list[StepRecord], val_points: list[tuple[int, float]] = (),
                 extra_rows: list[tuple[int, dict[str, float]]] = ()) -> None:
        """A flush: append host records, run the rules, publish. Never raises into training.

        ``extra_rows``: (step, {"lossprobe/<name>": value}) metrics a backend measured beyond
        the StepRecord (e.g. the gradient noise scale); merged into the rows of their step."""
        for rec in records:
            self._history.append(rec)
        for step, v in val_points:
            self._history.add_val(step, v)
        previous = self._health
        self._since_eval += len(records)
        new: list[Finding] = []
        if self._since_eval >= self.config.rules_every or _urgent(records):
            self._since_eval = 0
            new = self._evaluate()
        rows: list = []
        if any(getattr(s, "wants_metrics", True) for s in self.sinks):
            rows = metric_rows(records, self.layout, self.config.max_layer_metrics)
            for step, v in val_points:
                rows.append((int(step), {"lossprobe/val_loss": float(v)}))
        if extra_rows:
            at = {s: m for s, m in rows}
            for step, m in extra_rows:
                if int(step) in at:
                    at[int(step)].update(m)
                else:
                    rows.append((int(step), dict(m)))
        update = FlushUpdate(rows, self.findings, new, self._health, previous, self.tags(),
                             self.step)
        on_worker = self._worker is not None and threading.current_thread() is self._worker.thread
        for sink in list(self.sinks):
            if on_worker and getattr(sink, "on_training_thread", False):
                self._main_calls.append((sink, "on_flush", update))  # delivered at the next step boundary
            else:
                self._call_sink(sink, "on_flush", update)

    def _deliver(self) -> None:
        """On the training thread: hand sinks that must not be called from another thread
        (W&B's step counter is shared with the user's own wandb.log) their queued updates."""
        while self._main_calls:
            sink, method, arg = self._main_calls.popleft()
            if sink in self.sinks:
                self._call_sink(sink, method, arg)

    def _boundary(self) -> None:
        """Called by backends at each step boundary (training thread): delivers queued sink
        updates and raises a pending TrainingHealthError."""
        if self._main_calls:
            self._deliver()
        if self._pending_raise:
            pending, self._pending_raise = self._pending_raise, []
            raise TrainingHealthError(pending)

    # -- internals ---------------------------------------------------------
    def _evaluate(self, final: bool = False) -> list[Finding]:
        if self._history.n_steps == 0:
            return []
        try:
            on_worker = self._worker is not None and threading.current_thread() is self._worker.thread
            dets = self._runner.run(self._history, self.config, pause=_yield_gil if on_worker else None)
        except Exception as exc:  # pragma: no cover - RuleRunner already guards each rule
            self._warn_once("rules", f"rule evaluation failed: {exc}")
            return []
        dets = _resolve_conflicts(dets)
        new: list[Finding] = []
        fired = set()
        for det in dets:
            fired.add(det.code)
            if det.code in self._findings:
                self._findings[det.code].update(det, self._history.last_step)
            else:
                f = Finding.from_detection(det)
                self._findings[det.code] = f
                new.append(f)
        for code, f in self._findings.items():
            if code not in fired:
                f.active = False
        # converged is healthy; a stale plateau superseded by convergence stays in the record
        self._health = worst(f.severity for f in self._findings.values())
        if self.config.on_critical == "raise" and not final:
            crit = [f for f in new if f.severity == "critical" and f.code not in self._raised]
            self._raised.update(f.code for f in crit)
            self._pending_raise.extend(crit)
        return new

    def _call_sink(self, sink: Sink, method: str, arg) -> None:
        try:
            getattr(sink, method)(arg)
        except Exception as exc:
            self._warn_once(f"sink:{sink.name}", f"sink {sink.name!r} failed in {method} "
                            f"({type(exc).__name__}: {exc}); it is switched off, training continues")
            if sink in self.sinks:
                self.sinks.remove(sink)

    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except TrainingHealthError:
            raise
        except Exception as exc:
            self._warn_once(what, f"{what} failed ({type(exc).__name__}: {exc})")
            return None

    def _warn_once(self, key: str, msg: str) -> None:
        """Say it once, through the ``lossprobe`` logger only (never also ``warnings``: one
        message, one channel; with no logging configured Python prints it to stderr)."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning("lossprobe: %s", msg)


def _yield_gil() -> None:
    """Let a waiting training thread take the interpreter now. Without this, a worker busy
    for milliseconds holds it for up to the switch interval (5 ms) while the training thread,
    back from a device op, waits."""
    time.sleep(0)


class _Worker:
    """One daemon thread that runs flush processing in order. ``drain()`` waits until all
    submitted work is done (bounded: a stuck sink cannot hang training for ever)."""

    def __init__(self, probe: "Probe", drain_timeout: float = 60.0):
        self.probe = probe
        self.queue: queue.Queue = queue.Queue()
        self.drain_timeout = drain_timeout
        self.thread = threading.Thread(target=self._run, name="lossprobe-flush", daemon=True)
        self.thread.start()

    def submit(self, fn, *args) -> None:
        self.queue.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                fn, args = item
                self.probe._guard("flush processing", fn, *args)
            finally:
                self.queue.task_done()

    def drain(self) -> None:
        deadline = time.monotonic() + self.drain_timeout
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.probe._warn_once("drain", "flush processing is taking too long; reading what is done")
                    return
                self.queue.all_tasks_done.wait(min(left, 0.5))

    def stop(self) -> None:
        self.drain()
        self.queue.put(None)
        self.thread.join(timeout=5)


def _urgent(records: list[StepRecord]) -> bool:
    """A non-finite loss, gradient or input: run the rules now, not at the next rules_every."""
    for r in records:
        if (r.loss_seen and not math.isfinite(r.loss)) or (r.input_nonfinite > 0) or (
                not math.isnan(r.grad_norm) and not math.isfinite(r.grad_norm)):
            return True
        g = r.param_grad_norms[~r.param_grad_missing] if r.param_grad_norms.size else r.param_grad_norms
        # a row that is all NaN means "not measured on this step"; any Inf, or NaN beside
        # finite values, is a gradient that broke
        if g.size and not np.isfinite(g).all() and not np.isnan(g).all():
            return True
    return False


def _resolve_conflicts(dets: list[Detection]) -> list[Detection]:
    """Keep the verdicts consistent: a converged run has no plateau; a NaN run's curve rules
    (divergence, spike, plateau, oscillation) are noise around the real cause."""
    codes = {d.code for d in dets}
    drop = set()
    if "converged" in codes:
        drop |= {"loss_plateau", "learning_rate_too_low"}
    if "nan_loss" in codes:
        drop |= {"loss_plateau", "loss_oscillation", "converged"}
    if "loss_divergence" in codes:
        drop |= {"loss_plateau"}
    if "chance_level_loss" in codes:
        drop |= {"converged", "loss_plateau"}  # the plateau at ln(C) is the chance-level finding
    if codes & {"dead_relu", "vanishing_gradients", "frozen_parameters"}:
        # tiny updates there come from gradients that do not arrive, not from the learning rate
        drop |= {"learning_rate_too_low"}
    return [d for d in dets if d.code not in drop]


def resolve_sink(s: Sink | str) -> Sink:
    if isinstance(s, Sink):
        return s
    if not isinstance(s, str):
        if hasattr(s, "on_flush"):
            return s  # duck-typed sink
        raise TypeError(f"sinks: expected a Sink or one of 'console', 'mlflow', 'wandb'; got {type(s).__name__}")
    name = s.lower()
    if name == "console":
        return ConsoleSink()
    if name == "mlflow":
        from .integrations.mlflow import MlflowSink
        return MlflowSink()
    if name == "wandb":
        from .integrations.wandb import WandbSink
        return WandbSink()
    raise ValueError(f"unknown sink {s!r}: use 'console', 'mlflow', 'wandb' or a Sink instance")
