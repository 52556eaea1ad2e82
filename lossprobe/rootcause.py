"""Root cause first: which finding explains the others.

A fault shows several symptoms (a learning rate far too high kills ReLUs, then the loss sits
at chance). :func:`attribute` groups a run's findings into root causes, each with the
findings it explains under it, so a reader starts with the cause and one fix.

This module holds the data contract every reader of a result uses (console, report, JSON,
trackers, CLI): a list of :class:`RootCause`. The attribution itself is deliberately simple
for now — every warning or critical finding is its own root cause, worst first — until the
catalog's causal model links causes to their consequences.

Example::

    for rc in lossprobe.rootcause.attribute(probe.findings):
        print(rc.code, "->", rc.consequences, "| fix first:", rc.fix_first)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .catalog import SEVERITY_RANK
from .findings import Finding


@dataclass(frozen=True)
class RootCause:
    code: str                    # the finding that explains the others
    severity: str
    step: int                    # when it began
    consequences: tuple[str, ...] = ()   # codes of the findings it explains (each has caused_by == code)
    fix_first: str = ""          # the root's first fix
    why: str = ""                # one sentence: how the cause produced the consequences
    confidence: str = "clear"    # "clear" | "undecided" (the evidence does not decide between causes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["consequences"] = list(self.consequences)
        return d


def attribute(findings: list[Finding]) -> list[RootCause]:
    """Root causes of a run's warning and critical findings, most severe and earliest first.
    A resolved finding (cleared and stayed clear) is no root cause: where to start is among
    what still counts in the final health."""
    serious = [f for f in findings if f.severity != "info" and not f.resolved]
    serious.sort(key=lambda f: (-SEVERITY_RANK[f.severity], f.step, f.code))
    return [RootCause(f.code, f.severity, f.step, fix_first=f.fixes[0] if f.fixes else "")
            for f in serious if f.caused_by is None]
