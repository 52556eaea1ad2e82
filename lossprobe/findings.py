"""Finding: one diagnosis raised on a run, with its evidence, causes and fixes.

A rule returns a :class:`Detection` (code, step, evidence); the probe turns the
first detection of a code into a :class:`Finding` and updates ``last_step`` and
``count`` each time the rule fires again. Findings are never removed: a run that
recovers keeps the record of what happened (``active`` says whether it still fires).

Example::

    for f in probe.findings:
        print(f.code, f.severity, f.step, f.evidence)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .catalog import CATALOG, SEVERITY_RANK


@dataclass
class Detection:
    code: str
    step: int
    evidence: dict[str, Any]
    message: str = ""
    severity: str | None = None   # None: the catalog's; a rule may say less (evidence that is advice only)


@dataclass
class Finding:
    code: str
    severity: str
    step: int                     # first step the rule fired (when the symptom began)
    message: str
    evidence: dict[str, Any]
    causes: list[str]
    fixes: list[str]
    last_step: int = -1
    count: int = 1
    active: bool = True
    resolved: bool = False        # a warning whose condition cleared and stayed clear: not in the final health
    caused_by: str | None = None  # the root cause's code when another finding explains this one

    @classmethod
    def from_detection(cls, det: Detection) -> "Finding":
        entry = CATALOG[det.code]
        msg = entry.meaning + (f" {det.message}" if det.message else "")
        return cls(code=det.code, severity=det.severity or entry.severity, step=int(det.step), message=msg,
                   evidence=_plain(det.evidence), causes=list(entry.causes), fixes=list(entry.fixes),
                   last_step=int(det.step))

    def update(self, det: Detection, seen_through: int | None = None) -> None:
        """The rule fired again on data up to step ``seen_through``: still going on there."""
        self.last_step = max(self.last_step, int(det.step), int(seen_through if seen_through is not None else -1))
        self.count += 1
        self.active = True
        self.evidence = _plain(det.evidence)
        severity = det.severity or CATALOG[det.code].severity
        if SEVERITY_RANK[severity] > SEVERITY_RANK[self.severity]:
            self.severity = severity  # advice that the run's symptoms have since confirmed
            self.message = CATALOG[det.code].meaning + (f" {det.message}" if det.message else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code, "severity": self.severity, "step": self.step,
            "last_step": self.last_step, "count": self.count, "active": self.active,
            "resolved": self.resolved, "caused_by": self.caused_by,
            "message": self.message, "evidence": self.evidence,
            "causes": self.causes, "fixes": self.fixes,
        }


def _plain(value: Any) -> Any:
    """Evidence as JSON-safe Python values (numpy scalars -> float, nan/inf -> strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return float(f"{value:.6g}")
        return str(value)
    return str(value)
