"""The benchmark's confidence interval of a median ratio (benchmarks/_ratio.py)."""
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

# loaded by path: putting benchmarks/ on sys.path would let its scripts shadow other modules
_spec = importlib.util.spec_from_file_location("bench_ratio", Path(__file__).resolve().parents[1] / "benchmarks" / "_ratio.py")
_ratio = sys.modules["bench_ratio"] = importlib.util.module_from_spec(_spec)   # (dataclasses look it up)
_spec.loader.exec_module(_ratio)
Paired, median_ci = _ratio.Paired, _ratio.median_ci


def binomial_cover(n: int, j: int) -> float:
    """P(x_j <= median <= x_(n-1-j)) for n independent draws of a continuous variable."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(j + 1)) / 2 ** n


@pytest.mark.parametrize("n", [6, 7, 9, 12, 20, 33, 40, 60])
def test_the_interval_is_the_narrowest_symmetric_one_with_95_percent(n):
    j, k, cover = median_ci(n)
    assert k == n - 1 - j and cover == pytest.approx(binomial_cover(n, j))
    assert cover >= 0.95
    assert j + 1 > (n - 1) // 2 or binomial_cover(n, j + 1) < 0.95   # one step narrower falls short


def test_small_samples_get_the_whole_range_and_say_its_coverage():
    assert median_ci(3) == (0, 2, pytest.approx(0.75))
    assert str(Paired.from_ratios([1.0, 1.2, 1.1])).endswith("median 75% CI 1.000-1.200, 3 blocks)")


def test_the_interval_covers_a_skewed_median_as_often_as_it_says():
    n, trials = 20, 4000
    rng = np.random.default_rng(7)
    j, k, cover = median_ci(n)
    draws = np.sort(rng.exponential(size=(trials, n)), axis=1)   # median log 2, a long right tail
    hit = ((draws[:, j] <= math.log(2)) & (draws[:, k] >= math.log(2))).mean()
    assert abs(hit - cover) < 4 * math.sqrt(cover * (1 - cover) / trials)


def test_a_target_is_met_only_when_the_whole_interval_is_below_it():
    below = Paired.from_ratios([1.00, 1.01, 1.02, 1.01, 1.00, 1.02, 1.01])
    across = Paired.from_ratios([1.00, 1.01, 1.05, 1.02, 1.00, 1.04, 1.01])
    above = Paired.from_ratios([1.06, 1.08, 1.07, 1.09, 1.06, 1.07, 1.08])
    assert (below.verdict(1.03), across.verdict(1.03), above.verdict(1.03)) == ("met", "undecided", "not met")
