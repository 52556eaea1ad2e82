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
from .readout import evidence_line, ordered
from .rootcause import attribute


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
            why = f" caused by {f.caused_by}" if f.caused_by else ""
            print(f"[lossprobe] step {f.step}: {f.severity.upper()} {f.code}{why} ({evidence_line(f.evidence)})",
                  file=self._out())
        if update.health_changed:
            print(f"[lossprobe] health: {update.previous_health} -> {update.health}", file=self._out())

    def close(self, final: FinalReport) -> None:
        if self.summary:
            print(format_table(final.findings, final.health), file=self._out())


def format_table(findings: list[Finding], health: str) -> str:
    """The plain-text summary: root causes first with what they explain indented under them,
    resolved findings marked, then one "fix first" for the run.

    Example output::

        lossprobe: health = warning (1 root cause)
          code                      severity  status    steps   evidence
          learning_rate_too_high    warning   active    12-299  median_update_ratio=0.8
            dead_relu               warning   active    40-299  layers=1.ReLU: 1
          root cause: learning_rate_too_high - The updates are far too large ...
            explains: dead_relu
          fix first: lower the learning rate ...
    """
    roots = attribute(findings)
    n = len(roots)
    lines = [f"lossprobe: health = {health}" + (f" ({n} root cause{'s' if n != 1 else ''})" if n else "")]
    if not findings:
        lines.append("  no findings")
        return "\n".join(lines)
    table = [("code", "severity", "status", "steps", "evidence")]
    rows = ordered(findings, roots)
    for row in rows:
        f = row.finding
        table.append(("  " * row.depth + f.code, f.severity, row.status, f"{f.step}-{max(f.last_step, f.step)}",
                      _clip(evidence_line(f.evidence), 80)))
    w = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        lines.append(f"  {r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:<{w[3]}}  {r[4]}".rstrip())
    by_code = {f.code: f for f in findings}
    for rc in roots:
        lines.append(f"  root cause: {rc.code} - {by_code[rc.code].message}")
        explained = [r.finding.code for r in rows if r.root == rc.code and r.depth]
        if explained:
            lines.append(f"    explains: {', '.join(explained)}" + (f" ({rc.why})" if rc.why else ""))
    if roots and roots[0].fix_first:
        lines.append(f"  fix first ({roots[0].code}): {roots[0].fix_first}")
    return "\n".join(lines)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."
