"""The real-program corpus' fast PyTorch cases: each published buggy program and its
published fix run with the probe attached; the fixed one learns (see realworld_cases)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realworld_cases import FastCases, fast_case_ids, load_runner  # noqa: E402

CASE_IDS = fast_case_ids("torch")


@pytest.fixture(scope="module")
def corpus():
    return FastCases("torch")


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_fixed_program_runs_and_learns(corpus, case_id):
    corpus.check_fixed_learns(case_id)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_buggy_program_runs_under_the_probe(corpus, case_id):
    corpus.check_buggy_runs(case_id)


def test_fast_subset_spans_several_fault_kinds():
    kinds = {c.kind for c in load_runner().discover(framework="torch", fast=True)}
    assert len(kinds) >= 3, kinds
