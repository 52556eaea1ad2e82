"""Probe: owns one backend, the history, the verdict and the sinks.

Data flows one way: backend hooks -> on-device reductions -> (every ``flush_every``
steps, one host copy) -> Flush -> Channel -> StepRecords -> History -> rules -> Verdict
-> sinks. The backend talks to the probe only through its :class:`~lossprobe.channel.Channel`;
flush processing runs on a :class:`~lossprobe.worker.Worker` thread (inline when
``on_critical="raise"``).

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
from pathlib import Path
from typing import Any, Iterable

from . import __version__
from .channel import Channel
from .config import Config
from .findings import Finding
from .history import History
from .metrics import metric_rows
from .record import Flush, Layout
from .rules import RuleRunner
from .sinks import ConsoleSink, FinalReport, FlushUpdate, RunInfo, Sink
from .tags import tracker_tags
from .verdict import Verdict
from .worker import RuleSchedule, Worker, yield_gil

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
        self._layout = layout
        self._history = History(layout, window=self.config.window)
        raising = self.config.on_critical == "raise"
        # on_critical="raise" promises the error at the very next step boundary after the flush
        # that saw the fault: that needs the rules inline, not on a worker a step or two behind
        self._worker = Worker(self._worker_error, lambda msg: self._warn_once("drain", msg)) \
            if self.config.background and not raising else None
        self._runner = RuleRunner()
        self._schedule = RuleSchedule(self.config.rules_every)
        self._verdict = Verdict(collect_critical=raising, resolve_steps=self.config.resolve_steps)
        self._pending_raise: list[Finding] = []
        self._backend: Any = None
        self._closed = False
        self._warned: set[str] = set()
        self._main_calls: collections.deque = collections.deque()
        if sinks is None:
            sinks = ["console"]
        elif isinstance(sinks, (str, Sink)):
            sinks = [sinks]          # attach(model, sinks="mlflow"): one sink
        sinks = [resolve_sink(s) for s in sinks]
        if layout.rank != 0:  # data parallelism: one publisher; a sink with all_ranks stays everywhere
            sinks = [s for s in sinks if getattr(s, "all_ranks", False)]
        self.sinks: list[Sink] = sinks
        self.channel = Channel(self._ingest, self._boundary, self._warn_once)

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
            self._guard("backend finish", self._backend.finish)  # a step still open (no optimizer.step())
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
    def attached(self) -> bool:
        """True until :meth:`detach`."""
        return not self._closed

    @property
    def backend(self) -> Any:
        """The framework backend (its public methods serve the framework integrations)."""
        return self._backend

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def history(self) -> History:
        """The bounded history (waits for pending flush work first, so it is current)."""
        self._drain()
        return self._history

    def _drain(self) -> None:
        if self._worker is not None:
            self._worker.drain()

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
        return self._verdict.findings()

    @property
    def health(self) -> str:
        self._drain()
        return self._verdict.health

    @property
    def step(self) -> int:
        h = self.history
        return h.last_step if h.last_step is not None else -1

    @property
    def validation_losses_seen(self) -> int:
        """Validation losses the hooks captured so far (an integration that also has the
        trainer's logged validation loss adds it only when this did not move)."""
        return int(getattr(self._backend, "validation_losses_seen", 0) or 0)

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

    # -- the channel's side ------------------------------------------------------
    def _ingest(self, flush: Flush) -> None:
        """A flush from the backend: processed on the worker thread (or inline)."""
        if self._worker is not None and not self._worker.here():
            self._worker.submit(self._process, flush)
        else:
            self._guard("flush processing", self._process, flush)

    def _boundary(self, raise_pending: bool = True) -> None:
        """A step boundary (training thread): deliver queued sink updates, raise a pending
        TrainingHealthError."""
        if self._main_calls:
            self._deliver()
        if raise_pending and self._pending_raise:
            pending, self._pending_raise = self._pending_raise, []
            raise TrainingHealthError(pending)

    # -- flush processing --------------------------------------------------------
    def _process(self, flush: Flush) -> None:
        """Decode, append to the history, run the rules when due, publish."""
        records, extra_rows = flush.decoded(yield_gil if self._worker is not None and self._worker.here() else None)
        if flush.layout is not None and flush.layout != self._layout:
            self._adopt(flush.layout)
        if flush.facts is not None:
            self._history.set_facts(flush.facts)
        self._history.extend(records)
        for step, v in flush.val_points:
            self._history.add_val(step, v)
        previous = self._verdict.health
        new = self._evaluate() if self._schedule.due(records) else []
        rows: list = []
        if any(getattr(s, "wants_metrics", True) for s in self.sinks):
            rows = metric_rows(records, self.layout, self.config.max_layer_metrics)
            for step, v in flush.val_points:
                rows.append((int(step), {"lossprobe/val_loss": float(v)}))
        if extra_rows:
            at = {s: m for s, m in rows}
            for step, m in extra_rows:
                if int(step) in at:
                    at[int(step)].update(m)
                else:
                    rows.append((int(step), dict(m)))
        update = FlushUpdate(rows, self._verdict.findings(), new, self._verdict.health, previous, self.tags(),
                             self._history.last_step if self._history.last_step is not None else -1)
        on_worker = self._worker is not None and self._worker.here()
        for sink in list(self.sinks):
            if on_worker and getattr(sink, "on_training_thread", False):
                self._main_calls.append((sink, "on_flush", update))  # delivered at the next step boundary
            else:
                self._call_sink(sink, "on_flush", update)

    def _adopt(self, layout: Layout) -> None:
        """The complete layout of a model that was not built at attach, sent with its first flush."""
        if self._history.n_steps:
            self._warn_once("layout", "the backend sent a second layout after steps were recorded; ignored")
            return
        self._layout = layout
        self._history = History(layout, window=self.config.window, facts=self._history.facts)

    def _evaluate(self, final: bool = False) -> list[Finding]:
        if self._history.n_steps == 0:
            return []
        on_worker = self._worker is not None and self._worker.here()
        dets = self._runner.run(self._history, self.config, pause=yield_gil if on_worker else None)
        new = self._verdict.apply(dets, self._history.last_step, final=final)
        self._pending_raise.extend(self._verdict.take_critical())
        return new

    def _deliver(self) -> None:
        """On the training thread: hand sinks that must not be called from another thread
        (W&B's step counter is shared with the user's own wandb.log) their queued updates."""
        while self._main_calls:
            sink, method, arg = self._main_calls.popleft()
            if sink in self.sinks:
                self._call_sink(sink, method, arg)

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

    def _worker_error(self, what: str, exc: BaseException) -> None:
        self._warn_once(what, f"{what} failed ({type(exc).__name__}: {exc})")

    def _warn_once(self, key: str, msg: str) -> None:
        """Say it once, through the ``lossprobe`` logger only (never also ``warnings``: one
        message, one channel; with no logging configured Python prints it to stderr)."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning("lossprobe: %s", msg)


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
