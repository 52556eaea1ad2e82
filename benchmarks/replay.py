"""Replay the diagnosis rules on recorded runs: judge a rule change in seconds, not minutes.

A rule is a pure function of the history, so a run recorded once (its StepRecords, validation
points and facts) can be diagnosed again by the current rules exactly as a live probe would:
flush by flush (``flush_every`` records at a time), with the rules evaluated every
``rules_every`` steps and once more at the end.

Record the zoo (PyTorch scenarios and their twins) and replay it::

    python benchmarks/replay.py record --zoo --out .lossprobe/replay      # ~1-2 min
    python benchmarks/replay.py replay .lossprobe/replay                   # seconds

The real-program corpus records its runs with ``benchmarks/realworld/run.py --record DIR``.
A recording is a pickle of :class:`Recording`; recordings are local artefacts (ignored by git).
The replay ends with the faults found, the silent runs kept silent, and the root-cause figure
(``root_cause=R/M``, see ``benchmarks/root_cause.py``) with each run whose root cause is wrong.
"""
from __future__ import annotations

import argparse
import dataclasses
import pickle
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from lossprobe import Config  # noqa: E402
from lossprobe.history import History  # noqa: E402
from lossprobe.record import ACTIVATION_FIELDS, MASK_FIELDS, PARAM_FIELDS, SCALAR_FIELDS, StepRecord  # noqa: E402
from root_cause import RootCauseTally, accepted  # noqa: E402


@dataclass
class Recording:
    name: str
    layout: Any
    facts: Any
    records: list[StepRecord]
    val_points: list[tuple[int, float]]
    expect: tuple[str, ...] = ()      # codes that must be found (a planted fault)
    allow: tuple[str, ...] = ()       # other codes that are consequences of it
    names: tuple[str, ...] = ()       # corpus: codes that name the published fault
    silent: bool = False              # a healthy run or a fixed program: no warning/critical allowed
    meta: dict = field(default_factory=dict)


# pickles name the class by its module: the same whether this file runs as a script or is imported
Recording.__module__ = "replay"
sys.modules.setdefault("replay", sys.modules[__name__])


def records_of(h: History) -> list[StepRecord]:
    """The StepRecords a history still holds (all of them while the run fits its window)."""
    steps = h.steps()
    out = []
    scal = {n: h.series(n) for n in SCALAR_FIELDS}
    mats = {n: h.matrix(n) for n in (*PARAM_FIELDS, *ACTIVATION_FIELDS, *MASK_FIELDS)}
    for i, s in enumerate(steps):
        rec = StepRecord.empty(int(s), h.layout)
        for n, v in scal.items():
            setattr(rec, n, float(v[i]))
        for n, m in mats.items():
            setattr(rec, n, np.array(m[i]))
        out.append(rec)
    return out


def recording_of(probe, name: str, taps: tuple[list, list] | None = None, **kw) -> Recording:
    """A probe's run as a Recording: from its history, or from ``taps`` (every record and
    validation point the history received, kept beside it: see realworld/harness.py)."""
    h = probe.history
    if taps is not None:
        return Recording(name, h.layout, getattr(h, "facts", None), list(taps[0]), list(taps[1]), **kw)
    if h.n_steps > h.window:
        raise ValueError(f"{name}: {h.n_steps} steps do not fit the history window ({h.window}); raise Config.window")
    vs, vv = h.val_sketch()
    return Recording(name, h.layout, getattr(h, "facts", None), records_of(h),
                     [(int(s), float(v)) for s, v in zip(vs, vv)], **kw)


def diagnose(rec: Recording, config: Config | None = None):
    """(findings, health) of a recorded run under the current rules, flushed as live: the
    records go through the probe's channel ``flush_every`` at a time, as a backend sends them."""
    from lossprobe.probe import Probe
    from lossprobe.record import Flush
    cfg = dataclasses.replace(config or Config(), background=False)
    probe = Probe(rec.layout, cfg, sinks=[])
    vals = sorted(rec.val_points)
    k = cfg.flush_every
    for i in range(0, len(rec.records), k):
        chunk = rec.records[i:i + k]
        vp = [v for v in vals if v[0] <= chunk[-1].step]
        vals = vals[len(vp):]
        probe.channel.ingest(Flush(records=chunk, val_points=vp, facts=rec.facts))
    if vals:
        probe.channel.ingest(Flush(val_points=vals))
    probe.detach()
    return probe.findings, probe.health


def score(rec: Recording, findings, health) -> tuple[bool, list[str], list[str]]:
    """(passed, missing, unexpected) as the zoo and the corpus count them."""
    codes = {f.code: f.severity for f in findings}
    serious = {c for c, s in codes.items() if s != "info"}
    missing = [c for c in rec.expect if c not in codes]
    if rec.names:
        missing = [] if serious & set(rec.names) else list(rec.names)
    if rec.silent:
        unexpected = [c for c in serious if c not in rec.expect] if health != "healthy" else []
    elif rec.names:   # a published buggy program: what else it shows is not held against it (as run.py)
        unexpected = []
    else:
        unexpected = [c for c, s in codes.items() if s == "critical" and c not in rec.expect and c not in rec.allow]
    return not missing and not unexpected, missing, unexpected


def replay(folder: Path, pattern: str = "", config: Config | None = None, quiet: bool = False) -> int:
    recs = []
    for p in sorted(folder.glob("**/*.pkl")):
        with p.open("rb") as fh:
            for r in pickle.load(fh):
                if pattern in r.name:
                    recs.append(r)
    t0 = time.perf_counter()
    tally: Counter = Counter()
    roots = RootCauseTally()
    for r in recs:
        findings, health = diagnose(r, config)
        ok, missing, unexpected = score(r, findings, health)
        group = "silent" if r.silent else "fault"
        tally[group, ok] += 1
        if not r.silent and (r.names or r.expect):
            roots.add(r.name, findings, planted(r))
        if not quiet or not ok:
            found = ", ".join(f"{f.code}{'' if f.severity != 'info' else '(i)'}{'(r)' if getattr(f, 'resolved', False) else ''}@{f.step}"
                              f"{'<' + f.caused_by if f.caused_by else ''}"
                              for f in findings) or "-"
            flag = "ok  " if ok else "FAIL"
            extra = (f" missing={missing}" if missing else "") + (f" unexpected={unexpected}" if unexpected else "")
            print(f"{flag} {r.name:<55} {health:<8} {found}{extra}")
    n_fault = tally["fault", True] + tally["fault", False]
    n_silent = tally["silent", True] + tally["silent", False]
    print(f"\nfaults found {tally['fault', True]}/{n_fault}   silent runs silent {tally['silent', True]}/{n_silent}"
          f"   ({len(recs)} runs replayed in {time.perf_counter() - t0:.1f} s)")
    print(roots.report())
    return 0


def planted(rec: Recording) -> tuple[str, ...]:
    """The codes that name a recording's planted or published fault: a corpus case's ``names``,
    or a zoo scenario's headline code and :data:`root_cause.ZOO_NAMES`."""
    if rec.names:
        return rec.names
    return accepted(rec.name.removeprefix("zoo/"), rec.expect[0])


def record_zoo(out: Path, pattern: str = "") -> int:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import zoo
    from zoo import common
    common.CONFIG_OVERRIDES["window"] = 4096
    out.mkdir(parents=True, exist_ok=True)
    recs = []
    for name, s in zoo.load().items():
        if pattern not in name:
            continue
        t0 = time.perf_counter()
        try:
            probe = s.script(0)
        except Exception as exc:  # a crashing scenario is reported by the accuracy benchmark
            print(f"skip {name}: {type(exc).__name__}: {exc}")
            continue
        recs.append(recording_of(probe, f"zoo/{name}", expect=s.expect, allow=s.allow, silent=s.silent))
        print(f"recorded {name} ({time.perf_counter() - t0:.1f} s)")
    with (out / "zoo.pkl").open("wb") as fh:
        pickle.dump(recs, fh)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run scenarios and save their records")
    r.add_argument("--zoo", action="store_true", required=True)
    r.add_argument("--out", default=".lossprobe/replay")
    r.add_argument("-k", default="")
    p = sub.add_parser("replay", help="diagnose saved records with the current rules")
    p.add_argument("folder", nargs="?", default=".lossprobe/replay")
    p.add_argument("-k", default="")
    p.add_argument("-q", "--quiet", action="store_true", help="only the runs that fail")
    args = ap.parse_args(argv)
    if args.cmd == "record":
        return record_zoo(Path(args.out), args.k)
    return replay(Path(args.folder), args.k, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
