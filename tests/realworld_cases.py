"""The real-program corpus' fast cases (``fast = true`` in their case.toml), run through the
corpus runner (``benchmarks/realworld/run.py``: one subprocess per program, one CPU thread)
for the pytest module of each framework's process::

    corpus = FastCases("torch")          # runs every program once, two at a time
    corpus.check_fixed_learns("pt_...")  # asserts: ran, and learned by the runner's criterion
    corpus.check_buggy_runs("pt_...")    # asserts: ran, probe attached, training steps seen

What holds today and must keep holding; which diagnoses the buggy programs get is the
corpus report's business (``python benchmarks/realworld/run.py``), not asserted here.
"""
from __future__ import annotations

import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "realworld" / "run.py"


def load_runner():
    """The corpus runner as a module (registered before it runs: its dataclasses need it)."""
    name = "lossprobe_realworld_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _RUNNER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def fast_case_ids(framework: str) -> list[str]:
    return [c.id for c in load_runner().discover(framework=framework, fast=True)]


class FastCases:
    """Every fast case of one framework, both programs run once (two processes at a time)."""

    def __init__(self, framework: str, timeout: float = 240.0):
        runner = load_runner()
        self.cases = {c.id: c for c in runner.discover(framework=framework, fast=True)}
        jobs = [(c, which) for c in self.cases.values() for which in ("buggy", "fixed")]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda cw: runner.run_program(cw[0], cw[1], seed=0, timeout=timeout), jobs))
        self.results = {(c.id, which): r for (c, which), r in zip(jobs, results)}

    def check_fixed_learns(self, case_id: str) -> None:
        result = self.results[(case_id, "fixed")]
        assert result["ran"], result.get("error")
        learned, note = load_runner().learns(result, self.cases[case_id].learns_below)
        assert learned, f"{case_id}: the fixed program does not learn ({note})"

    def check_buggy_runs(self, case_id: str) -> None:
        result = self.results[(case_id, "buggy")]
        assert result["ran"], result.get("error")
        assert result["probes"], f"{case_id}: no probe was attached"
        assert result["probes"][0]["n_steps"] > 0, f"{case_id}: the probe saw no training step"
