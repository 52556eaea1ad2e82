"""The statistics (capture.stats on torch's ops) against their numpy definitions: each op
the torch backend swaps in for speed (a shared-mean std, aminmax, a bool mean, index_fill_
for distinct classes) must give the value the definition gives, NaN included."""
import math

import numpy as np
import pytest
import torch

from lossprobe.capture import stats
from lossprobe.capture.ops import ops_for

OPS = ops_for("torch")


def _np(v) -> np.ndarray:
    return v.detach().numpy().astype(float)


def test_input_stats_are_the_max_abs_mean_and_population_std():
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(0)) * 3 + 1
    ref = x.double().numpy().ravel()
    assert _np(stats.input_stats(OPS, x)) == pytest.approx([np.abs(ref).max(), ref.mean(), ref.std()], rel=1e-5)


def test_a_nan_in_the_batch_makes_every_moment_nan():
    x = torch.randn(8, 5)
    x[3, 2] = math.nan
    assert np.isnan(_np(stats.input_stats(OPS, x))).all()


def test_output_and_activation_moments():
    y = torch.randn(32, 10, generator=torch.Generator().manual_seed(1), requires_grad=True) * 4
    ref = y.detach().double().numpy().ravel()
    absmax, std, mean = _np(stats.output_stats(OPS, y))[:3]
    assert (absmax, std, mean) == pytest.approx((np.abs(ref).max(), ref.std(), ref.mean()), rel=1e-5)
    a = torch.relu(torch.randn(16, 40, generator=torch.Generator().manual_seed(2)))
    a[:, :10] = 0.0   # a quarter of the units dead for every sample
    dead, sat, scale = _np(stats.activation_stats(OPS, a, "relu"))
    assert dead == pytest.approx(0.25) and math.isnan(sat) and scale == pytest.approx(a.double().numpy().std(), rel=1e-5)


def test_target_stats_of_class_indices_and_of_fractional_targets():
    y = torch.tensor([3, 3, 7, 0, 7, 9, 3])
    lo, hi, mean, std, distinct, is_index, fractional = _np(stats.target_stats(OPS, y, 10, False, False))
    ref = y.double().numpy()
    assert (lo, hi, distinct, is_index, fractional) == (0, 9, 4, 1, 0)
    assert (mean, std) == pytest.approx((ref.mean(), ref.std()), rel=1e-6)
    t = torch.tensor([0.5, 1.0, 2.25, 3.0])
    lo, hi, mean, std, distinct, is_index, fractional = _np(stats.target_stats(OPS, t, 0, False, False))
    assert (lo, hi, is_index, fractional) == (0.5, 3.0, 0, 0.5) and math.isnan(distinct)
