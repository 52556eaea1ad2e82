"""The sink interface (what trackers implement) and the console sink.

A sink receives, once per flush, the metrics rows computed by the probe, the current
findings and the tracker tags, and at the end the full report. Sinks never compute
statistics: everything they publish arrives ready-made here.

Example (a custom sink)::

    class PrintHealth(lossprobe.Sink):
        def on_flush(self, update):
            print(update.health, [f.code for f in update.new_findings])

    lossprobe.attach(model, sinks=[PrintHealth()])
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from .findings import Finding


@dataclass
class RunInfo:
    framework: str
    version: str
    layout: dict[str, Any]
    config: dict[str, Any]


@dataclass
class FlushUpdate:
    metrics: list[tuple[int, dict[str, float]]]   # (step, {"lossprobe/...": value})
    findings: list[Finding]
    new_findings: list[Finding]
    health: str
    previous_health: str
    tags: dict[str, str]
    last_step: int

    @property
    def health_changed(self) -> bool:
        return self.health != self.previous_health


@dataclass
class FinalReport:
    report: dict[str, Any]
    html: str
    findings: list[Finding]
    health: str
    tags: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


class Sink:
    """Base class: override what you need. Every call is guarded by the probe: an
    exception is reported once and the sink is switched off, training goes on."""

    name = "sink"
    wants_metrics = True  # False: the probe skips building metric rows for this sink
    on_training_thread = False  # True: on_flush is called on the training thread, at a step boundary

    def open(self, info: RunInfo) -> None:
        pass

    def on_flush(self, update: FlushUpdate) -> None:
        pass

    def close(self, final: FinalReport) -> None:
        pass


class ConsoleSink(Sink):
    """One compact line when a finding first appears or health changes; a table at the end."""

    name = "console"
    wants_metrics = False

    def __init__(self, stream: TextIO | None = None, summary: bool = True):
        self.stream = stream
        self.summary = summary

    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def on_flush(self, update: FlushUpdate) -> None:
        for f in update.new_findings:
            ev = ", ".join(f"{k}={v}" for k, v in list(f.evidence.items())[:3])
            print(f"[lossprobe] step {f.step}: {f.severity.upper()} {f.code} ({ev})", file=self._out())
        if update.health_changed:
            print(f"[lossprobe] health: {update.previous_health} -> {update.health}", file=self._out())

    def close(self, final: FinalReport) -> None:
        if self.summary:
            print(format_table(final.findings, final.health), file=self._out())


def format_table(findings: list[Finding], health: str) -> str:
    """A plain-text summary table of findings."""
    lines = [f"lossprobe: health = {health}"]
    if not findings:
        lines.append("  no findings")
        return "\n".join(lines)
    rows = [("code", "severity", "steps", "evidence")]
    for f in findings:
        ev = ", ".join(f"{k}={v}" for k, v in list(f.evidence.items())[:3])
        rows.append((f.code, f.severity, f"{f.step}-{f.last_step}", ev[:70]))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        lines.append(f"  {r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
    for f in findings:
        if f.severity != "info":
            lines.append(f"  -> {f.code}: {f.message} Fix first: {f.fixes[0]}")
    return "\n".join(lines)
