"""Diagnosis accuracy on the fault zoo: recall per code, false alarms, detection latency.

Runs every scenario in ``tests/zoo`` (real PyTorch training on one CPU thread) and prints

* one line per scenario (what was found, and when),
* a per-code table: scenarios, detected, recall, mean steps from the fault's onset to the
  flush at which the probe reported it, and mean ``Finding.step - onset`` (how well the
  finding dates the fault),
* the false alarms: warning/critical findings on healthy runs (and unrelated criticals
  on faulty ones),
* the corrected twins (``twin/<fault>``: every faulty script with its one mistake fixed,
  see ``tests/twins.py``), in a table of their own: per fault code, how many twins stayed
  silent, which codes fired on the others, and whether each twin learned,
* the root-cause figure: of the faulty runs with two or more warning/critical findings, how
  many report the planted fault as their root cause (``benchmarks/root_cause.py``), and the
  runs that do not,

then the planted-fault, healthy and twin scenarios of the TensorFlow
(``tests/tf/test_keras.py``) and Paddle (``tests/paddle/test_paddle.py``) test suites, each
framework in a subprocess of its own (``benchmarks/accuracy_tensorflow.py``,
``benchmarks/accuracy_paddle.py``: importing TensorFlow and then Paddle in one process
segfaults), with the same tables for each, and at the end one line per framework and one
summary line over all of them::

    torch: recall=R root_cause=C/M false_alarms=F scenarios=N twins=T twin_alarms=A
    tensorflow: recall=R root_cause=C/M false_alarms=F scenarios=N twins=T twin_alarms=A
    paddle: recall=R root_cause=C/M false_alarms=F scenarios=N twins=T twin_alarms=A
    recall=R root_cause=C/M false_alarms=F scenarios=N twins=T twin_alarms=A

``false_alarms`` counts every run with a finding it should not have: a warning or critical
on a healthy run *or on a corrected twin*, and a critical on a faulty run that its fault does
not explain. ``twin_alarms`` is the twins' share of it, ``twins`` how many twins ran, and
``scenarios`` every run, twins included. A twin whose loss did not fall is listed as not
learning (its silence would prove nothing) and fails the run like a false alarm does.
``root_cause=C/M``: M faulty runs had two or more warning/critical findings, and C of them
reported the planted fault as their root cause (``benchmarks/root_cause.py``).

Usage::

    python benchmarks/accuracy.py                 # everything, every installed framework
    python benchmarks/accuracy.py --frameworks torch          # the PyTorch zoo only
    python benchmarks/accuracy.py --frameworks tensorflow,paddle
    python benchmarks/accuracy.py --fast          # the CI subset of the zoo (+ all TF/Paddle scenarios)
    python benchmarks/accuracy.py -k dead_relu    # scenarios whose name contains a string
    python benchmarks/accuracy.py --seeds 0 1 2   # every zoo scenario on several seeds (torch only)
    python benchmarks/accuracy.py --set rules_every=20   # a Config field for every probe

This module imports no framework at import time: the runners import its scoring helpers.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
FRAMEWORKS = ("torch", "tensorflow", "paddle")
RUNNERS = {"tensorflow": HERE / "accuracy_tensorflow.py", "paddle": HERE / "accuracy_paddle.py"}
sys.path.insert(0, str(TESTS))

from lossprobe import Config  # noqa: E402
from lossprobe.catalog import CATALOG  # noqa: E402
from twins import TWIN, loss_fell  # noqa: E402

sys.path.insert(0, str(HERE))
from root_cause import RootCauseTally, accepted  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", action="append", default=[], help="only scenarios whose name contains this (repeatable)")
    ap.add_argument("--fast", action="store_true", help="only the zoo's CI subset (TF/Paddle: all scenarios)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="zoo seeds (torch only)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-scenario lines")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a lossprobe.Config field for every probe, e.g. --set rules_every=20")
    ap.add_argument("--frameworks", default=None,
                    help=f"comma-separated subset of {','.join(FRAMEWORKS)} (default: every one installed)")
    args = ap.parse_args(argv)
    overrides = parse_sets(args.set)  # fail early on a bad field name
    if args.frameworks:
        frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
        unknown = [f for f in frameworks if f not in FRAMEWORKS]
        if unknown:
            ap.error(f"unknown framework(s) {unknown}; choose from {','.join(FRAMEWORKS)}")
    else:  # find_spec looks the package up without importing it
        frameworks = [f for f in FRAMEWORKS if importlib.util.find_spec(f) is not None]

    t0 = time.perf_counter()
    results: dict[str, dict | None] = {}
    if "torch" in frameworks:
        results["torch"] = run_torch(args, overrides)
    for fw in frameworks:
        if fw != "torch":
            results[fw] = run_runner(fw, args)
            if results[fw] is not None:
                print()
                print(f"== {fw} ==")
                print(framework_table(results[fw]))
                print(twin_table(results[fw]["twin_runs"]))
    print(f"\nwall time {time.perf_counter() - t0:.0f}s")

    total = {"faulty": 0, "detected": 0, "alarms": 0, "scenarios": 0, "twins": 0, "twin_alarms": 0,
             "roots_right": 0, "roots_counted": 0}
    failed = False
    for fw, res in results.items():
        if res is None:
            print(f"{fw}: runner failed (see above)")
            failed = True
            continue
        counts = {"faulty": res["faulty"], "detected": res["detected"], "alarms": len(res["false_alarms"]),
                  "scenarios": res["scenarios"], "twins": len(res["twin_runs"]),
                  "twin_alarms": sum(bool(t["alarms"]) for t in res["twin_runs"]),
                  "roots_right": res["root_cause"][0], "roots_counted": res["root_cause"][1]}
        print(f"{fw}: {summary(counts)}")
        total = {k: total[k] + counts[k] for k in total}
        failed |= any(not t["learns"] for t in res["twin_runs"])
    print(summary(total))
    ok = total["detected"] == total["faulty"] and total["alarms"] == 0 and not failed
    return 0 if ok else 1


def summary(c: dict[str, int]) -> str:
    """``recall=R root_cause=C/M false_alarms=F scenarios=N twins=T twin_alarms=A`` (false_alarms
    counts the twins')."""
    return (f"recall={_ratio(c['detected'], c['faulty']):.3f} root_cause={c['roots_right']}/{c['roots_counted']} "
            f"false_alarms={c['alarms']} "
            f"scenarios={c['scenarios']} twins={c['twins']} twin_alarms={c['twin_alarms']}")


def _ratio(hits: int, total: int) -> float:
    return hits / total if total else 1.0


def parse_sets(items: Iterable[str]) -> dict:
    """``["rules_every=20", "background=false"]`` -> Config field overrides, typed like the defaults."""
    defaults, out = Config(), {}
    for item in items:
        key, _, value = item.partition("=")
        if not hasattr(defaults, key):
            raise SystemExit(f"--set {item}: lossprobe.Config has no field {key!r}")
        kind = type(getattr(defaults, key))
        out[key] = value.lower() in ("1", "true", "yes", "on") if kind is bool else kind(value)
    return out


# ---------------------------------------------------------------------- torch (the zoo, in this process)
def run_torch(args, overrides: dict) -> dict:
    import torch
    sys.path.insert(0, str(TESTS))
    import zoo
    import zoo.common

    zoo.common.CONFIG_OVERRIDES.update(overrides)
    torch.set_num_threads(1)
    scenarios = [s for s in zoo.load().values()
                 if (not args.fast or s.fast) and (not args.k or any(k in s.name for k in args.k))]
    outcomes = []
    roots = RootCauseTally()
    for s in scenarios:
        for seed in args.seeds:
            probes: list = []
            try:
                out = zoo.run(dataclasses.replace(s, script=_keeping(s.script, probes)), seed)
            except Exception as exc:  # a broken scenario is reported, the rest still run
                print(f"CRASH {s.name} (seed {seed}): {type(exc).__name__}: {exc}", flush=True)
                out = zoo.crashed(s, seed, exc)
            outcomes.append(out)
            if probes and s.expect and not s.silent:
                roots.add(f"{s.name} (seed {seed})", probes[0].findings, accepted(s.name, s.expect[0]))
            if not args.quiet:
                print(out.describe(), flush=True)
    twin_runs = [twin_run(f"{o.scenario.name} (seed {o.seed})", o.scenario.fault_code, o.unexpected, o.learned)
                 for o in outcomes if o.scenario.twin_of]
    print()
    print("== torch ==")
    print(table(outcomes, Config(**zoo.common.CONFIG_OVERRIDES)))
    print(twin_table(twin_runs))
    print(roots.report())
    faulty = [o for o in outcomes if o.scenario.expect]
    return {"faulty": len(faulty), "detected": sum(not o.missing for o in faulty),
            "false_alarms": [f"{o.scenario.name} (seed {o.seed}): {', '.join(o.unexpected)}"
                             for o in outcomes if o.unexpected],
            "scenarios": len(outcomes), "twin_runs": twin_runs, "root_cause": [roots.right, roots.counted]}


def _keeping(script, probes: list):
    """``script`` that also keeps the probe it returns (for its findings)."""
    def run(seed):
        probe = script(seed)
        probes.append(probe)
        return probe
    return run


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
    lines = _aligned(rows)
    healthy = [o for o in outcomes if o.scenario.silent and not o.scenario.expect and not o.scenario.twin_of]
    alarms = [o for o in outcomes if o.unexpected and not o.scenario.twin_of]   # twins: see twin_table
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
    cfg = cfg or Config()
    lines.append(f"latency: steps from onset to the evaluation that reported the code (rules run every "
                 f"{getattr(cfg, 'rules_every', cfg.flush_every)} steps at a flush, at once on non-finite values); "
                 "onset_err: Finding.step - onset")
    return "\n".join(lines)


def twin_run(name: str, fault_code: str, alarms: list[str], learned) -> dict:
    """One corrected twin's result, as every framework reports it (JSON-safe)."""
    return {"name": name, "code": fault_code, "alarms": list(alarms),
            "learns": bool(learned is not None and learned.ok),
            "loss": learned.describe() if learned is not None else "no loss"}


def twin_table(twin_runs: list[dict]) -> str:
    """The corrected twins, per fault code: how many ran, how many stayed silent, and the codes
    that fired on the others; then one line per alarmed twin and per twin that did not learn."""
    if not twin_runs:
        return "(no corrected twins)"
    by_code = defaultdict(list)
    for t in twin_runs:
        by_code[t["code"]].append(t)
    order = list(CATALOG)
    rows = [("twins of", "twins", "silent", "learn", "codes fired on twins")]
    for code in sorted(by_code, key=lambda c: order.index(c) if c in order else len(order)):
        ts = by_code[code]
        fired = sorted({a for t in ts for a in t["alarms"]})
        rows.append((code, str(len(ts)), str(sum(not t["alarms"] for t in ts)), str(sum(t["learns"] for t in ts)),
                     ", ".join(fired) or "-"))
    lines = [""] + _aligned(rows, left=(0, 4)) + [""]
    alarmed = [t for t in twin_runs if t["alarms"]]
    lines.append(f"corrected twins: {len(twin_runs)}, with a warning/critical finding: {len(alarmed)}, "
                 f"not learning: {sum(not t['learns'] for t in twin_runs)}")
    lines += [f"  twin alarm: {t['name']}: {', '.join(t['alarms'])} ({t['loss']})" for t in alarmed]
    lines += [f"  twin not learning: {t['name']}: {t['loss']}" for t in twin_runs if not t["learns"]]
    return "\n".join(lines)


def _aligned(rows: list[tuple[str, ...]], left: tuple[int, ...] = (0,)) -> list[str]:
    """Rows as aligned text columns: the ``left`` ones left-aligned, the others (numbers) right."""
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(f"{v:<{w[i]}}" if i in left else f"{v:>{w[i]}}" for i, v in enumerate(r)).rstrip()
             for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return lines


# ---------------------------------------------------------------------- TensorFlow / Paddle (subprocesses)
def run_runner(framework: str, args) -> dict | None:
    """Run one framework's runner in a fresh process, echo its lines, return its RESULT."""
    cmd = [sys.executable, str(RUNNERS[framework])]
    for k in args.k:
        cmd += ["-k", k]
    for item in args.set:
        cmd += ["--set", item]
    if args.quiet:
        cmd.append("-q")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    print(f"\n-- {framework}: {' '.join(cmd[1:])}", flush=True)
    result = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
            else:
                print(line, end="", flush=True)
    if proc.returncode != 0 or result is None:
        print(f"{framework} runner exited with {proc.returncode} and "
              f"{'no' if result is None else 'a'} RESULT line", flush=True)
        return None
    return result


def framework_table(res: dict) -> str:
    """Per-code table for a runner's RESULT: scenarios, detected, recall (codes with scenarios only)."""
    rows = [("code", "scenarios", "detected", "recall")]
    for code, (n, det) in res["codes"].items():
        rows.append((code, str(n), str(det), f"{det / n:.2f}" if n else "-"))
    lines = _aligned(rows) if len(rows) > 1 else ["(no faulty scenarios)"]
    lines.append("")
    lines.append(f"healthy runs: {res['healthy']}, with a warning/critical finding: {res['healthy_alarms']}")
    lines += [f"  false alarm: {a}" for a in res["false_alarms"] if not a.startswith(TWIN)]  # twins: twin_table
    lines += [f"  missed: {m}" for m in res["missed"]]
    lines += [f"  note: {n}" for n in res.get("notes", [])]
    right, counted = res["root_cause"]
    lines.append(f"root_cause={right}/{counted}")
    lines += [f"  wrong root: {w}" for w in res["wrong_roots"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------- shared by the runners
def runner_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The options every framework runner takes: ``-k`` (repeatable), ``-q``, ``--set F=V``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("-k", action="append", default=[])
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    return ap.parse_args(argv)


def apply_config_overrides(lossprobe_module, overrides: dict) -> None:
    """Make every ``lossprobe.attach`` in this process use the ``--set`` Config fields (the test
    modules call ``lossprobe.attach`` through the module, so replacing it there reaches them)."""
    if not overrides:
        return
    import dataclasses
    original = lossprobe_module.attach

    def attach(model, *, config=None, **kwargs):
        config = dataclasses.replace(config, **overrides) if config is not None else Config(**overrides)
        return original(model, config=config, **kwargs)
    lossprobe_module.attach = attach


def score_scenarios(items: list[tuple[str, tuple[str, ...], tuple[str, ...] | None, Callable[[], object]]],
                    quiet: bool = False, framework: str = "torch") -> dict:
    """Run ``(name, expect, allow, run)`` scenarios; ``run()`` returns a finished probe.

    A faulty scenario (``expect`` not empty) is detected when every expected code was found.
    A healthy one (``expect == ()``) is a false alarm if it has any warning/critical finding;
    so is a corrected twin (``expect == ()`` and a name ``twin/<code>/...``), which must also
    learn (``twins.loss_fell``): its result goes to ``twin_runs`` too.
    On a faulty one, a critical code outside ``expect + allow`` is a false alarm too (as in
    the zoo) when the scenario declares ``allow``; with ``allow=None`` (the suite declares no
    consequences) such codes are listed as notes only. A crash counts as missed + false alarm,
    and so does a run whose probe recorded no training step (it switched itself off).
    A faulty run with two or more warning/critical findings also counts toward the root-cause
    figure (``root_cause``: [right, counted]; ``wrong_roots``: the runs whose root is neither
    the headline code nor a code that names the plant, ``root_cause.accepted`` for
    ``framework``). Returns the dict a runner prints as ``RESULT {json}``.
    """
    codes: dict[str, list[int]] = {}
    res = {"codes": codes, "faulty": 0, "detected": 0, "healthy": 0, "healthy_alarms": 0,
           "false_alarms": [], "missed": [], "notes": [], "scenarios": 0, "runs": [], "twin_runs": []}
    roots = RootCauseTally()
    for name, expect, allow, run in items:
        t0 = time.perf_counter()
        learned = None
        try:
            probe = run()
            if expect:
                roots.add(name, probe.findings, accepted(name, expect[0], framework))
            found = {f.code: f.severity for f in probe.findings}
            steps = {f.code: int(f.step) for f in probe.findings}
            learned = loss_fell(probe.history.loss_sketch()[1])
            # a probe that switched itself off records nothing: silence then proves nothing
            crash = "" if probe.history.n_steps > 0 else "crash: the probe recorded no training step"
        except Exception as exc:  # a broken scenario is reported, the rest still run
            found, steps, crash = {}, {}, f"crash: {type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
        missing = [c for c in expect if c not in found]
        if not expect:
            unexpected = [c for c, sev in found.items() if sev != "info"]
        else:
            unexpected = [c for c, sev in found.items()
                          if sev == "critical" and c not in expect and c not in (allow or ())]
        stray = []
        if expect and allow is None:
            stray, unexpected = unexpected, []
        if crash:
            unexpected.append(crash)
        res["scenarios"] += 1
        is_twin = not expect and name.startswith(TWIN)
        if expect:
            res["faulty"] += 1
            res["detected"] += not missing
            for c in expect:
                n_det = codes.setdefault(c, [0, 0])
                n_det[0] += 1
                n_det[1] += c not in missing
            if missing:
                res["missed"].append(f"{name}: {', '.join(missing)}; found {sorted(found) or '-'}")
        elif is_twin:
            twin = twin_run(name, name[len(TWIN):].split("/")[0], unexpected, learned)
            res["twin_runs"].append(twin)
        else:
            res["healthy"] += 1
            res["healthy_alarms"] += bool(unexpected)
        if unexpected:
            res["false_alarms"].append(f"{name}: {', '.join(unexpected)}")
        if stray:
            res["notes"].append(f"{name}: also critical {', '.join(stray)} (no allowed consequences declared)")
        ok = not missing and not unexpected and (not is_twin or twin["learns"])
        res["runs"].append({"name": name, "ok": ok, "found": found, "seconds": round(seconds, 2)})
        if not quiet:
            shown = ", ".join(f"{c}@{steps[c]}" for c in found) or "-"
            extra = (f" missing={missing}" if missing else "") + (f" unexpected={unexpected}" if unexpected else "")
            if is_twin:
                extra += f" {twin['loss']}" + ("" if twin["learns"] else " (NOT LEARNING)")
            print(f"{'ok  ' if ok else 'FAIL'} {name:<45} found: {shown}{extra} ({seconds:.1f}s)", flush=True)
    res["root_cause"], res["wrong_roots"] = [roots.right, roots.counted], roots.wrong
    order = list(CATALOG)
    res["codes"] = dict(sorted(codes.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return res


def runner_main(framework: str, doc: str, scenarios: Callable[[], list], argv: list[str] | None,
                foreign: tuple[str, ...]) -> int:
    """The whole of a per-framework runner: parse its options, apply ``--set``, score the
    selected scenarios and print ``RESULT {json}``; ``foreign`` frameworks must not have been
    imported along the way (TensorFlow and Paddle in one process segfault)."""
    import lossprobe
    args = runner_args(doc.splitlines()[0], argv)
    apply_config_overrides(lossprobe, parse_sets(args.set))
    items = scenarios()
    keep = select([i[0] for i in items], args.k)
    res = score_scenarios([i for i in items if i[0] in keep], quiet=args.quiet, framework=framework)
    res["framework"] = framework
    imported = [m for m in foreign if m in sys.modules]
    assert not imported, f"the {framework} runner imported {imported}"
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def select(names: Iterable[str], patterns: list[str]) -> set[str]:
    """The names that contain any of ``patterns`` (all of them when there are none)."""
    return {n for n in names if not patterns or any(k in n for k in patterns)}


if __name__ == "__main__":
    sys.exit(main())
