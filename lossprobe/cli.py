"""Command line: ``lossprobe demo | diagnose FILE | tag --experiment NAME | codes``.

Example::

    lossprobe diagnose history.csv          # root causes first, then one "fix first"
    lossprobe diagnose history.json --json  # the same as JSON (findings, root_causes, fix_first)
    lossprobe diagnose history.csv --fail-on critical   # exit 1 on a critical finding (CI gate)

Exit status: 0 done, 1 ``--fail-on`` matched, 2 bad input (one line on stderr says why).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _cmd_diagnose(args) -> int:
    from .posthoc import HistoryError, diagnose
    from .verdict import health_of
    from .report import findings_report
    from .sinks import format_table
    try:
        findings = diagnose(args.file, n_classes=args.classes)
    except HistoryError as exc:
        print(f"lossprobe diagnose: {exc}", file=sys.stderr)
        return 2
    health = health_of(findings)
    if args.json:
        print(json.dumps(findings_report(findings, health), indent=2))
    else:
        print(format_table(findings, health))
    return 1 if args.fail_on and _at_least(findings, args.fail_on) else 0


def _at_least(findings, severity: str) -> bool:
    """A finding of ``severity`` or worse that still counts (not resolved)?"""
    from .catalog import SEVERITY_RANK
    return any(SEVERITY_RANK[f.severity] >= SEVERITY_RANK[severity] for f in findings if not f.resolved)


def _cmd_codes(args) -> int:
    from .catalog import CATALOG
    for d in CATALOG.values():
        print(f"{d.code:<24} {d.severity:<9} {d.meaning}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(out_dir=args.out, steps=args.steps, trackers=not args.no_trackers)


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="lossprobe", description="Diagnose why training loss will not fall.")
    p.add_argument("--version", action="version", version=f"lossprobe {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train a healthy and a faulty model and print the diagnosis")
    d.add_argument("--out", default="lossprobe-demo", help="folder for the MLflow store, W&B run and reports")
    d.add_argument("--steps", type=int, default=300)
    d.add_argument("--no-trackers", action="store_true", help="skip MLflow and W&B publishing")
    d.set_defaults(fn=_cmd_demo)
    g = sub.add_parser("diagnose", help="diagnose a CSV/JSON loss history of a run that was never probed")
    g.add_argument("file")
    g.add_argument("--json", action="store_true")
    g.add_argument("--classes", type=_count, default=0, help="number of classes (enables the ln(C) check)")
    g.add_argument("--fail-on", choices=("warning", "critical"), default=None,
                   help="exit 1 when a finding of this severity or worse is present (for CI gates)")
    g.set_defaults(fn=_cmd_diagnose)
    c = sub.add_parser("codes", help="list every diagnosis code")
    c.set_defaults(fn=_cmd_codes)
    try:
        from .cli_tag import add_parser as add_tag
        add_tag(sub)
    except ImportError:
        pass
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
