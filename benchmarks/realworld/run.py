"""Real programs with their published fixes: does lossprobe name the fault, and stay silent on the fix?

Each case in ``cases/<id>/`` is a published buggy training program (``buggy.py``), its
published fix (``fixed.py``) and ``case.toml`` (source, licence, the published fault, its
kind, every adaptation made to run it here). The runner runs both programs with the probe
attached (``harness.py``: one subprocess each, one CPU thread, only the case's framework
imported) and scores them:

* **matched**: the buggy program got a warning or critical finding whose code *names* the
  published fault kind (``NAMES`` below, written down before any case was run). A finding
  that only shows a symptom of it (``SYMPTOMS``) is counted apart, as ``symptom_only``.
* **fixed_silent**: a fixed program that learns (its loss fell, see :func:`learns`) ended
  with health ``healthy`` (no active warning, never a critical).
* **root_cause**: of the buggy programs with two or more warning/critical findings, those whose
  reported root cause (``lossprobe.rootcause.attribute``, first) names the published fault
  (a code in ``NAMES[kind]``); ``benchmarks/root_cause.py``.

Prints one line per case and ends with::

    matched=M/N fixed_silent=S/F symptom_only=K root_cause=R/C

Usage::

    python benchmarks/realworld/run.py                  # every case
    python benchmarks/realworld/run.py --fast           # the cases marked fast (CI subset)
    python benchmarks/realworld/run.py -k deepfd --framework keras --jobs 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

from lossprobe.catalog import SEVERITY_RANK  # noqa: E402
from lossprobe.findings import Finding  # noqa: E402
from root_cause import RootCauseTally  # noqa: E402

CASES = HERE / "cases"
HARNESS = HERE / "harness.py"

# Published fault kinds -> the diagnosis codes that name that fault (the cause, or the
# exact mechanism). Fixed before running any case; a new kind is added here with its reason.
NAMES: dict[str, tuple[str, ...]] = {
    # the last layer's activation does not fit the loss (softmax on one unit, sigmoid under
    # categorical CE, softmax under binary CE, linear/ReLU head under a probability loss)
    "output_activation": ("output_activation_mismatch", "double_softmax"),
    # the loss does not fit the output or the labels (categorical CE on one unit, a
    # regression loss on class labels, CE on probabilities, sparse CE on float labels)
    "loss_function": ("output_activation_mismatch", "double_softmax", "label_problem"),
    "learning_rate_high": ("learning_rate_too_high",),
    "learning_rate_low": ("learning_rate_too_low",),
    # the loss is summed over the batch where it should be averaged: every gradient, and so
    # every step, is batch_size times too large -- to the optimizer, a learning rate batch_size
    # times too high (added with the first such case, defects4dl-fault1-sum-loss, before it ran)
    "loss_reduction": ("learning_rate_too_high",),
    # hidden activations that saturate or die (sigmoid/tanh stacks, ReLU with a bad init)
    "hidden_activation": ("vanishing_gradients", "saturated_activations", "dead_relu"),
    "weight_initialization": ("bad_initialization", "vanishing_gradients", "dead_relu", "saturated_activations"),
    "input_scaling": ("unnormalized_inputs",),
    "target_scaling": ("unscaled_targets",),
    "labels": ("label_problem",),
    "data_order": ("unshuffled_data",),
    "nonfinite_data": ("nonfinite_inputs",),
    "numerics": ("nan_loss", "nonfinite_gradients", "softmax_overflow"),
    "gradient_accumulation": ("stale_gradients",),          # zero_grad() missing
    "disconnected_graph": ("frozen_parameters", "zero_gradients"),
    "dropout": ("excessive_dropout",),
    "regularization": ("over_regularization",),
    "batchnorm_mode": ("frozen_batchnorm",),
    "train_eval_mode": ("frozen_batchnorm",),
}
# Codes that show a consequence of a fault kind without naming it: reported, not matched.
SYMPTOMS: dict[str, tuple[str, ...]] = {
    "output_activation": ("zero_gradients", "chance_level_loss", "loss_plateau", "dead_relu", "softmax_overflow"),
    "loss_function": ("zero_gradients", "chance_level_loss", "loss_plateau", "loss_divergence"),
    "learning_rate_high": ("loss_divergence", "exploding_gradients", "nan_loss", "softmax_overflow",
                           "loss_oscillation", "dead_relu", "loss_spike", "chance_level_loss"),
    "learning_rate_low": ("loss_plateau", "chance_level_loss"),
    "loss_reduction": ("loss_divergence", "exploding_gradients", "nan_loss", "nonfinite_gradients",
                       "softmax_overflow", "loss_oscillation"),
    "hidden_activation": ("loss_plateau", "chance_level_loss"),
    "weight_initialization": ("loss_plateau", "chance_level_loss", "exploding_gradients"),
    "input_scaling": ("saturated_activations", "exploding_gradients", "dead_relu", "loss_plateau", "softmax_overflow"),
    "target_scaling": ("exploding_gradients", "loss_divergence", "nan_loss", "loss_plateau"),
    "gradient_accumulation": ("loss_divergence", "exploding_gradients", "loss_oscillation"),
}


@dataclass
class Case:
    id: str
    path: Path
    framework: str
    kind: str
    fault: str
    source: str
    licence: str
    fast: bool = False
    learns_below: float = 0.7
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> "Case":
        meta = tomllib.loads((folder / "case.toml").read_text())
        if meta["kind"] not in NAMES:
            raise ValueError(f"{folder.name}: fault kind {meta['kind']!r} is not in run.NAMES")
        return cls(id=meta.get("id", folder.name), path=folder, framework=meta["framework"], kind=meta["kind"],
                   fault=meta["fault"], source=meta["source"], licence=meta["licence"],
                   fast=bool(meta.get("fast", False)), learns_below=float(meta.get("learns_below", 0.7)),
                   meta=meta)


def discover(pattern: str = "", framework: str = "", fast: bool = False, root: Path = CASES) -> list[Case]:
    cases = [Case.load(d) for d in sorted(root.iterdir()) if (d / "case.toml").is_file()]
    return [c for c in cases if pattern in c.id and (not framework or c.framework == framework)
            and (c.fast or not fast)]


def run_program(case: Case, which: str, seed: int, timeout: float, record: Path | None = None) -> dict:
    """One program in its own process; the harness's JSON (or a failure record)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONHASHSEED=str(seed), MPLBACKEND="Agg", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join([str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(HARNESS), str(case.path / f"{which}.py"), "--framework", case.framework,
               "--out", str(out), "--seed", str(seed)]
        if record is not None:
            cmd += ["--record", str(record / f"{case.id}.{which}.pkl")]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ran": False, "error": f"timed out after {timeout:.0f} s", "probes": [], "seconds": timeout}
        if not out.exists():
            tail = (proc.stderr or proc.stdout or "")[-1500:]
            return {"ran": False, "error": f"harness exited {proc.returncode}: {tail}", "probes": [],
                    "seconds": round(time.perf_counter() - t0, 2)}
        return json.loads(out.read_text())


def learns(result: dict, below: float) -> tuple[bool, str]:
    """The loss fell: the median of its last tenth is at most ``below`` (0.7) times the median
    of its first twentieth (at least 3 points each). Judged on the probe's own loss outline."""
    probes = [p for p in result.get("probes", []) if p.get("losses")]
    if not probes:
        return False, "no loss recorded"
    losses = max(probes, key=lambda p: len(p["losses"]))["losses"]  # the main model's probe
    y = np.asarray([v for v in losses if np.isfinite(v)], float)
    if y.size < 6:
        return False, "too few losses"
    head = float(np.median(y[: max(3, y.size // 20)]))
    tail = float(np.median(y[-max(3, y.size // 10):]))
    ok = head > 0 and tail <= below * head
    return ok, f"loss {head:.4g} -> {tail:.4g}"


def _alarms(result: dict) -> list[dict]:
    """Every warning/critical finding of the program (over all its probes), with its evidence."""
    keep = ("code", "severity", "step", "last_step", "active", "evidence")
    return [{k: f.get(k) for k in keep} for p in result.get("probes", []) for f in p.get("findings", [])
            if f["severity"] in ("warning", "critical")]


def _codes(result: dict) -> dict[str, str]:
    """code -> worst severity over every probe of the program (warning/critical only)."""
    out: dict[str, str] = {}
    for f in _alarms(result):
        if out.get(f["code"]) != "critical":
            out[f["code"]] = f["severity"]
    return out


def _findings(result: dict) -> list[Finding]:
    """The program's findings as :class:`Finding` objects, one per code over every probe (the
    worst, then the earliest), for root-cause attribution."""
    names = {f.name for f in fields(Finding)}
    best: dict[str, Finding] = {}
    for p in result.get("probes", []):
        for d in p.get("findings", []):
            f = Finding(**{k: v for k, v in d.items() if k in names})
            old = best.get(f.code)
            if old is None or (-SEVERITY_RANK[f.severity], f.step) < (-SEVERITY_RANK[old.severity], old.step):
                best[f.code] = f
    return list(best.values())


def _health(result: dict) -> str:
    order = {"healthy": 0, "info": 0, "warning": 1, "critical": 2}
    hs = [p.get("health", "healthy") for p in result.get("probes", [])]
    return max(hs, key=lambda h: order.get(h, 0)) if hs else "unprobed"


@dataclass
class Score:
    case: Case
    buggy: dict
    fixed: dict
    matched: bool
    symptom_only: bool
    fixed_learns: bool
    fixed_silent: bool
    learn_note: str

    def line(self) -> str:
        def codes(r):
            c = _codes(r)
            if not r.get("ran"):
                return "CRASHED " + (r.get("error") or "").strip().splitlines()[-1][:80] if r.get("error") else "did not run"
            return ", ".join(f"{k}({v[0].upper()})" for k, v in sorted(c.items())) or "none"
        verdict = "MATCH" if self.matched else ("symptom" if self.symptom_only else "MISS")
        if not self.fixed_learns:
            fix = f"does not learn ({self.learn_note})"
        else:
            fix = "silent" if self.fixed_silent else "ALARM"
        return (f"{self.case.id:<28} {self.case.framework:<6} {self.case.kind:<22} buggy: {codes(self.buggy)} -> {verdict}\n"
                f"{'':<58} fixed: {_health(self.fixed)}: {codes(self.fixed)} ({self.learn_note}) -> {fix}")


def score(case: Case, buggy: dict, fixed: dict) -> Score:
    got = set(_codes(buggy))
    matched = bool(got & set(NAMES[case.kind]))
    symptom = not matched and bool(got & set(SYMPTOMS.get(case.kind, ())))
    fl, note = learns(fixed, case.learns_below) if fixed.get("ran") else (False, "crashed")
    silent = fl and _health(fixed) == "healthy"
    return Score(case, buggy, fixed, matched, symptom, fl, silent, note)


def _label_recordings(folder: Path, cases: list[Case]) -> None:
    """Say in each recording what replay must score: the codes that name a buggy program's
    fault, and that a fixed program must stay silent."""
    import pickle
    sys.path.insert(0, str(HERE.parent))  # recordings are benchmarks/replay.py's Recording
    for c in cases:
        for which in ("buggy", "fixed"):
            p = folder / f"{c.id}.{which}.pkl"
            if not p.exists():
                continue
            recs = pickle.loads(p.read_bytes())
            for r in recs:
                r.names, r.silent = (NAMES[c.kind], False) if which == "buggy" else ((), True)
                r.meta.update(kind=c.kind, framework=c.framework)
            p.write_bytes(pickle.dumps(recs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only cases whose id contains this")
    ap.add_argument("--framework", default="", choices=("", "keras", "torch", "paddle"))
    ap.add_argument("--fast", action="store_true", help="only the cases marked fast = true")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per program")
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--cases", default=str(CASES), help="folder of cases (default: cases/ beside this file)")
    ap.add_argument("--record", help="pickle every run's records into this folder (benchmarks/replay.py replays them)")
    args = ap.parse_args(argv)
    cases = discover(args.k, args.framework, args.fast, Path(args.cases))
    if not cases:
        print("no cases selected")
        return 2
    jobs = [(c, w) for c in cases for w in ("buggy", "fixed")]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        record = Path(args.record).resolve() if args.record else None
        results = list(pool.map(lambda cw: run_program(cw[0], cw[1], args.seed, args.timeout, record), jobs))
    by = {(c.id, w): r for (c, w), r in zip(jobs, results)}
    if record is not None:
        _label_recordings(record, cases)
    scores = [score(c, by[(c.id, "buggy")], by[(c.id, "fixed")]) for c in cases]
    roots = RootCauseTally()
    root_ok = {s.case.id: roots.add(s.case.id, _findings(s.buggy), NAMES[s.case.kind]) for s in scores}
    for s in scores:
        print(s.line())
    n = len(scores)
    m = sum(s.matched for s in scores)
    sym = sum(s.symptom_only for s in scores)
    learning = [s for s in scores if s.fixed_learns]
    silent = sum(s.fixed_silent for s in learning)
    print(f"\n{len(cases)} cases, {len(jobs)} programs in {time.perf_counter() - t0:.0f} s")
    misses = [s.case.id for s in scores if not s.matched]
    alarms = [s.case.id for s in learning if not s.fixed_silent]
    not_learning = [s.case.id for s in scores if not s.fixed_learns]
    print(f"missed: {', '.join(misses) or '-'}")
    print(f"alarms on fixed programs: {', '.join(alarms) or '-'}")
    print(f"fixed programs that do not learn (not counted): {', '.join(not_learning) or '-'}")
    for w in roots.wrong:
        print(f"  wrong root: {w}")
    print(f"matched={m}/{n} fixed_silent={silent}/{len(learning)} symptom_only={sym} {roots.line()}")
    if args.json:
        Path(args.json).write_text(json.dumps([{
            "id": s.case.id, "framework": s.case.framework, "kind": s.case.kind, "matched": s.matched,
            "symptom_only": s.symptom_only, "fixed_learns": s.fixed_learns, "fixed_silent": s.fixed_silent,
            "root_cause_named": root_ok[s.case.id],
            "buggy_codes": _codes(s.buggy), "fixed_codes": _codes(s.fixed), "fixed_health": _health(s.fixed),
            "buggy_findings": _alarms(s.buggy), "fixed_findings": _alarms(s.fixed),
            "learn_note": s.learn_note, "buggy_error": s.buggy.get("error"), "fixed_error": s.fixed.get("error"),
            "seconds": [s.buggy.get("seconds"), s.fixed.get("seconds")]} for s in scores], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
