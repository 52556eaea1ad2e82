"""The fault zoo's fast subset: real PyTorch training runs with one planted fault each must
produce their diagnosis code (and no critical finding the fault does not explain); healthy
runs must end healthy (``converged`` and other info findings allowed); each fault's corrected
twin (the same script with the mistake fixed) must learn and end with no warning or critical
finding. A twin the rules alarm today is a strict xfail (``ALARMED``, with the alarm and why),
so the day the rules stop alarming it, its test fails until the mark is removed.

The whole zoo, with recall, false alarms and detection latency per code, is
``python benchmarks/accuracy.py``; the scenarios themselves are in ``tests/zoo/``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402
from twins import TwinAlarm, twin_param  # noqa: E402

SCENARIOS = zoo.load()
FAST = [s for s in SCENARIOS.values() if s.fast]
FAULTS = [s for s in FAST if s.expect]
HEALTHY = [s for s in FAST if not s.expect and not s.twin_of]
TWINS = [s for s in FAST if s.twin_of]

# Fast twins that the rules alarm today: the code that fires, and why it fires on a sound run.
ALARMED: dict[str, str] = {}   # none today


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


@pytest.mark.parametrize("scenario", [twin_param(s, s.name, ALARMED) for s in TWINS])
def test_corrected_twin_learns_and_stays_silent(scenario):
    out = zoo.run(scenario, seed=0)
    assert out.learns, f"{scenario.name} ({scenario.planted}) does not learn: {out.learned}"
    if out.unexpected:
        raise TwinAlarm(f"{scenario.name} ({scenario.planted}): {out.codes}")


def test_every_fault_has_a_corrected_twin():
    """Every faulty script is registered with its twin (only the info-level ``converged`` runs,
    which have no mistake, have none); the known-alarm list names fast twins only."""
    twins = {s.twin_of for s in SCENARIOS.values() if s.twin_of}
    faults = {s.name for s in SCENARIOS.values() if s.expect and not s.silent}
    assert twins == faults
    assert set(ALARMED) <= {s.name for s in TWINS}


def test_zoo_covers_every_catalog_code():
    """One scenario at least for every code (rank_divergence needs several processes), and
    at least ten healthy scripts."""
    from lossprobe.catalog import CATALOG
    covered = {s.expect[0] for s in SCENARIOS.values() if s.expect}
    assert set(CATALOG) - covered <= {"rank_divergence"}
    assert sum(1 for s in SCENARIOS.values() if not s.expect and not s.twin_of) >= 10
    # the CI subset has one faulty script per code it covers and several healthy ones
    assert len({s.expect[0] for s in FAULTS}) >= 20
    assert len(HEALTHY) >= 4
