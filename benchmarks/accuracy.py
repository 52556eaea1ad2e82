"""Diagnosis accuracy on the fault zoo: recall per code, false alarms, detection latency.

Runs every scenario in ``tests/zoo`` (real PyTorch training on one CPU thread) and prints

* one line per scenario (what was found, and when),
* a per-code table: scenarios, detected, recall, mean steps from the fault's onset to the
  flush at which the probe reported it, and mean ``Finding.step - onset`` (how well the
  finding dates the fault),
* the false alarms: warning/critical findings on healthy runs (and unrelated criticals
  on faulty ones),
* one summary line ``recall=R false_alarms=F scenarios=N``.

Usage::

    python benchmarks/accuracy.py                 # everything
    python benchmarks/accuracy.py --fast          # the CI subset
    python benchmarks/accuracy.py -k dead_relu    # scenarios whose name contains a string
    python benchmarks/accuracy.py --seeds 0 1 2   # every scenario on several seeds
    python benchmarks/accuracy.py --set rules_every=20   # a Config field for every probe
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import zoo  # noqa: E402
import zoo.common  # noqa: E402
from lossprobe import Config  # noqa: E402
from lossprobe.catalog import CATALOG  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", action="append", default=[], help="only scenarios whose name contains this (repeatable)")
    ap.add_argument("--fast", action="store_true", help="only the CI subset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-scenario lines")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a lossprobe.Config field for every probe, e.g. --set rules_every=20")
    args = ap.parse_args(argv)
    for item in args.set:
        key, _, value = item.partition("=")
        zoo.common.CONFIG_OVERRIDES[key] = type(getattr(Config(), key))(value)

    torch.set_num_threads(1)
    scenarios = [s for s in zoo.load().values()
                 if (not args.fast or s.fast) and (not args.k or any(k in s.name for k in args.k))]
    t0 = time.perf_counter()
    outcomes = []
    for s in scenarios:
        for seed in args.seeds:
            try:
                out = zoo.run(s, seed)
            except Exception as exc:  # a broken scenario is reported, the rest still run
                print(f"CRASH {s.name} (seed {seed}): {type(exc).__name__}: {exc}", flush=True)
                out = zoo.crashed(s, seed, exc)
            outcomes.append(out)
            if not args.quiet:
                print(out.describe(), flush=True)
    print()
    print(table(outcomes))
    print(f"\nwall time {time.perf_counter() - t0:.0f}s for {len(outcomes)} runs")
    faulty = [o for o in outcomes if o.scenario.expect]
    hits = sum(not o.missing for o in faulty)
    recall = hits / len(faulty) if faulty else 1.0
    alarms = sum(bool(o.unexpected) for o in outcomes)
    print(f"recall={recall:.3f} false_alarms={alarms} scenarios={len(outcomes)}")
    return 0 if recall == 1.0 and alarms == 0 else 1


SLOW = 50  # target: every fault reported within 50 steps of its onset


def table(outcomes, cfg: Config | None = None) -> str:
    by_code = defaultdict(list)
    for o in outcomes:
        for c in o.scenario.expect[:1]:
            by_code[c].append(o)
    rows = [("code", "scenarios", "detected", "recall", "latency", "onset_err", "max_lat")]
    for code in CATALOG:
        outs = by_code.get(code)
        if not outs:
            if code != "rank_divergence":
                rows.append((code, "0", "-", "-", "-", "-", "-"))
            continue
        det = [o for o in outs if code in o.codes]
        lat = [o.latency[code] for o in det if code in o.latency]
        err = [o.onset_error[code] for o in det if code in o.onset_error]
        rows.append((code, str(len(outs)), str(len(det)), f"{len(det) / len(outs):.2f}",
                     f"{np.mean(lat):.0f}" if lat else "-", f"{np.mean(err):+.0f}" if err else "-",
                     f"{max(lat)}" if lat else "-"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(f"{v:<{w[i]}}" if i == 0 else f"{v:>{w[i]}}" for i, v in enumerate(r)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    healthy = [o for o in outcomes if o.scenario.silent and not o.scenario.expect]
    alarms = [o for o in outcomes if o.unexpected]
    lines.append("")
    lines.append(f"healthy runs: {len(healthy)}, with a warning/critical finding: "
                 f"{sum(bool(o.unexpected) for o in healthy)}")
    for o in alarms:
        lines.append(f"  false alarm: {o.scenario.name} (seed {o.seed}): {', '.join(o.unexpected)}")
    for o in outcomes:
        if o.missing:
            lines.append(f"  missed: {o.scenario.name} (seed {o.seed}): {', '.join(o.missing)}; "
                         f"found {sorted(o.codes) or '-'}")
    for o in outcomes:
        for c, lat in o.latency.items():
            if lat > SLOW:
                lines.append(f"  slow: {o.scenario.name} (seed {o.seed}): {c} reported {lat} steps after onset {o.onset}")
    cfg = cfg or Config(**zoo.common.CONFIG_OVERRIDES)
    lines.append(f"latency: steps from onset to the evaluation that reported the code (rules run every "
                 f"{getattr(cfg, 'rules_every', cfg.flush_every)} steps at a flush, at once on non-finite values); "
                 "onset_err: Finding.step - onset")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
