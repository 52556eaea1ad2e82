"""The shared statistics of the rules (lossprobe/rules/stats.py) and the history's per-state memo."""
import warnings

import numpy as np
import pytest

from lossprobe.history import History
from lossprobe.record import Layout, StepRecord
from lossprobe.rules.stats import row_nanmedian, theil_sen


def test_row_nanmedian_is_numpys_nanmedian_per_row():
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = rng.standard_normal((rng.integers(1, 7), rng.integers(1, 9))) * 10 ** rng.uniform(-6, 3)
        m[rng.random(m.shape) < 0.4] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # all-NaN rows warn in numpy
            want = np.nanmedian(m, axis=1)
        got = row_nanmedian(m)
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_theil_sen_slope_survives_outliers_and_reuses_pairs():
    t = np.arange(40, dtype=float)
    y = 2.0 - 0.05 * t
    y[[5, 17, 30]] += 50.0                        # three wild batches
    slope, z = theil_sen(t, y)
    assert abs(slope + 0.05) < 1e-9 and z < -3
    assert theil_sen(t, y) == (slope, z)          # the cached index pairs give the same answer


def test_memo_is_dropped_when_the_history_changes():
    h = History(Layout(framework="torch", params=[], param_sizes=[]), window=16)
    calls = []
    def compute():
        calls.append(h.n_steps)
        return h.n_steps
    h.append(StepRecord(step=0, loss=1.0, loss_seen=1.0))
    assert h.memo("k", compute) == 1 and h.memo("k", compute) == 1 and calls == [1]
    h.append(StepRecord(step=1, loss=0.9, loss_seen=1.0))
    assert h.memo("k", compute) == 2 and calls == [1, 2]
    h.add_val(1, 0.95)
    assert h.memo("k", compute) == 2 and calls == [1, 2, 2]


def test_median_is_numpys_median():
    from lossprobe.rules.stats import median
    rng = np.random.default_rng(1)
    for _ in range(500):
        a = rng.standard_normal(int(rng.integers(1, 60))) * 10 ** rng.uniform(-5, 5)
        if rng.random() < 0.2:
            a[rng.integers(0, a.size)] = np.nan
        want, got = float(np.median(a)), median(a)
        assert (np.isnan(want) and np.isnan(got)) or got == pytest.approx(want, rel=1e-15)
    assert np.isnan(median(np.array([])))
