"""The real-program corpus' fast Paddle cases: each published buggy program (ported to
Paddle) and its fix run with the probe attached; the fixed one learns (see
tests/realworld_cases.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realworld_cases import FastCases, fast_case_ids  # noqa: E402

CASE_IDS = fast_case_ids("paddle")


@pytest.fixture(scope="module")
def corpus():
    return FastCases("paddle")


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_fixed_program_runs_and_learns(corpus, case_id):
    corpus.check_fixed_learns(case_id)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_buggy_program_runs_under_the_probe(corpus, case_id):
    corpus.check_buggy_runs(case_id)
