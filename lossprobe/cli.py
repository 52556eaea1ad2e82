"""Command line: ``lossprobe demo | diagnose FILE | tag --experiment NAME | codes``.

Example::

    lossprobe diagnose history.csv          # a table of findings
    lossprobe diagnose history.json --json  # the same as JSON
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _cmd_diagnose(args) -> int:
    from .posthoc import diagnose
    from .sinks import format_table
    from .catalog import worst
    findings = diagnose(args.file, n_classes=args.classes)
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        print(format_table(findings, worst(f.severity for f in findings)))
    return 0


def _cmd_codes(args) -> int:
    from .catalog import CATALOG
    for d in CATALOG.values():
        print(f"{d.code:<24} {d.severity:<9} {d.meaning}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(out_dir=args.out, steps=args.steps, trackers=not args.no_trackers)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lossprobe", description="Diagnose why training loss will not fall.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train a healthy and a faulty model and print the diagnosis")
    d.add_argument("--out", default="lossprobe-demo", help="folder for the MLflow store, W&B run and reports")
    d.add_argument("--steps", type=int, default=300)
    d.add_argument("--no-trackers", action="store_true", help="skip MLflow and W&B publishing")
    d.set_defaults(fn=_cmd_demo)
    g = sub.add_parser("diagnose", help="diagnose a CSV/JSON loss history of a run that was never probed")
    g.add_argument("file")
    g.add_argument("--json", action="store_true")
    g.add_argument("--classes", type=int, default=0, help="number of classes (enables the ln(C) check)")
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
