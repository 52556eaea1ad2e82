"""The fault zoo's fast subset: real PyTorch training runs with one planted fault each must
produce their diagnosis code (and no critical finding the fault does not explain); healthy
runs must end healthy (``converged`` and other info findings allowed).

The whole zoo, with recall, false alarms and detection latency per code, is
``python benchmarks/accuracy.py``; the scenarios themselves are in ``tests/zoo/``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402

SCENARIOS = zoo.load()
FAST = [s for s in SCENARIOS.values() if s.fast]
FAULTS = [s for s in FAST if s.expect]
HEALTHY = [s for s in FAST if not s.expect]


@pytest.mark.parametrize("scenario", FAULTS, ids=[s.name for s in FAULTS])
def test_fault_is_diagnosed(scenario):
    out = zoo.run(scenario, seed=0)
    assert not out.missing, f"{scenario.name}: expected {scenario.expect}, found {out.codes} ({scenario.planted})"
    assert not out.unexpected, f"{scenario.name}: unrelated findings {out.unexpected} ({out.codes})"
    # every finding says when it began, and the expected one is dated at or after the run's start
    for code in scenario.expect:
        assert out.first_step[code] >= 0
        assert out.detected_at[code] >= out.first_step[code]


@pytest.mark.parametrize("scenario", HEALTHY, ids=[s.name for s in HEALTHY])
def test_healthy_run_stays_healthy(scenario):
    out = zoo.run(scenario, seed=0)
    assert out.health == "healthy", f"{scenario.name}: {out.codes}"
    assert not out.unexpected


def test_zoo_covers_every_catalog_code():
    """One scenario at least for every code (rank_divergence needs several processes), and
    at least ten healthy scripts."""
    from lossprobe.catalog import CATALOG
    covered = {s.expect[0] for s in SCENARIOS.values() if s.expect}
    assert set(CATALOG) - covered <= {"rank_divergence"}
    assert sum(1 for s in SCENARIOS.values() if not s.expect) >= 10
    # the CI subset has one faulty script per code it covers and several healthy ones
    assert len({s.expect[0] for s in FAULTS}) >= 20
    assert len(HEALTHY) >= 4
