"""The fast Keras cases of the real-program corpus (``benchmarks/realworld``), run as its runner runs them.

Each published program runs unchanged in its own subprocess through the corpus harness (one
CPU thread, lossprobe attached at the first ``fit``), exactly as
``python benchmarks/realworld/run.py --fast --framework keras`` does. What is asserted is what
holds today and must keep holding: every fast buggy program runs to its end, and every fast
fixed program runs and learns by the runner's own criterion (``run.learns``). Which codes the
probe reports is the corpus's measurement (``matched`` / ``fixed_silent`` in its README), not
asserted here.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.realworld import run as corpus

pytestmark = pytest.mark.tensorflow

FAST = corpus.discover(framework="keras", fast=True)
PROGRAM_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], dict]:
    """Every fast program's harness result, keyed by (case id, 'buggy' | 'fixed')."""
    jobs = [(case, which) for case in FAST for which in ("buggy", "fixed")]
    with ThreadPoolExecutor(2) as pool:
        out = list(pool.map(lambda job: corpus.run_program(job[0], job[1], seed=0, timeout=PROGRAM_TIMEOUT_S),
                            jobs))
    return {(case.id, which): result for (case, which), result in zip(jobs, out)}


def test_fast_subset_spans_several_fault_kinds():
    kinds = {case.kind for case in FAST}
    assert 4 <= len(FAST) <= 6, [case.id for case in FAST]
    assert len(kinds) == len(FAST), "each fast case should cover a different fault kind"


@pytest.mark.parametrize("case", FAST, ids=lambda case: case.id)
def test_buggy_program_runs_with_the_probe_attached(case, results):
    result = results[(case.id, "buggy")]
    assert result["ran"], result["error"]
    assert any(probe.get("n_steps", 0) > 0 for probe in result["probes"]), "the probe saw no training step"


@pytest.mark.parametrize("case", FAST, ids=lambda case: case.id)
def test_fixed_program_runs_and_learns(case, results):
    result = results[(case.id, "fixed")]
    assert result["ran"], result["error"]
    learned, note = corpus.learns(result, case.learns_below)
    assert learned, f"{case.id}: the published fix should learn ({note})"
