"""How a run's result is read, the same way everywhere: root cause first, its consequences under it.

The console summary, the HTML report, the MLflow description, the W&B findings table and
``lossprobe diagnose`` all list findings through :func:`ordered`: each root cause (in the
order :func:`lossprobe.rootcause.attribute` gives, worst and earliest first), the findings it
explains indented under it, then the rest (``info`` findings such as ``converged``).

Example::

    for row in ordered(probe.findings):
        print("  " * row.depth + row.finding.code, row.status, row.root)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .findings import Finding
from .rootcause import RootCause, attribute


@dataclass(frozen=True)
class Row:
    finding: Finding
    depth: int          # 0: a root cause (or an info finding); 1+: explained by the row above it
    root: str           # code of the root cause this row belongs to (its own code for a root)
    status: str         # see status()


def status(f: Finding) -> str:
    """``resolved``: a warning that cleared and stayed clear (not in the final health);
    ``active``: still firing at the last evaluation; ``ended``: no longer firing."""
    if f.resolved:
        return "resolved"
    return "active" if f.active else "ended"


def ordered(findings: list[Finding], roots: list[RootCause] | None = None) -> list[Row]:
    """Every finding exactly once, root causes first with their consequences under them."""
    roots = attribute(findings) if roots is None else roots
    by_code = {f.code: f for f in findings}
    children: dict[str, list[Finding]] = {}
    for f in findings:
        if f.caused_by and f.caused_by in by_code and f.caused_by != f.code:
            children.setdefault(f.caused_by, []).append(f)
    rows: list[Row] = []
    seen: set[str] = set()

    def walk(f: Finding, depth: int, root: str) -> None:
        if f.code in seen:
            return
        seen.add(f.code)
        rows.append(Row(f, depth, root, status(f)))
        for c in sorted(children.get(f.code, []), key=lambda c: (c.step, c.code)):
            walk(c, depth + 1, root)

    for rc in roots:
        if rc.code in by_code:
            walk(by_code[rc.code], 0, rc.code)
    for f in findings:          # what no root explains (info findings, a cause outside the findings)
        if f.code not in seen:
            walk(f, 0, f.code)
    return rows


def format_value(v: object, max_items: int = 6) -> str:
    """An evidence value for people: numbers to 4 significant digits, dicts as ``key: value``
    pairs and lists shortened (``...(+n more)``), never a Python repr."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        from .plot import tick_label
        return tick_label(v, digits=4) if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        items = [f"{k}: {format_value(x, max_items)}" for k, x in list(v.items())[:max_items]]
        more = len(v) - max_items
        return ", ".join(items) + (f", ...(+{more} more)" if more > 0 else "")
    if isinstance(v, (list, tuple)):
        items = [format_value(x, max_items) for x in v[:max_items]]
        more = len(v) - max_items
        return "[" + ", ".join(items) + (f", ...(+{more} more)" if more > 0 else "") + "]"
    return str(v)


def evidence_items(evidence: dict) -> list[tuple[str, str]]:
    """(name, readable value) pairs of a finding's evidence, in the rule's order."""
    return [(str(k), format_value(v)) for k, v in evidence.items()]


def evidence_line(evidence: dict, limit: int = 3) -> str:
    """The first ``limit`` evidence items on one line: ``name=value; name=value``."""
    return "; ".join(f"{k}={v}" for k, v in evidence_items(evidence)[:limit])
