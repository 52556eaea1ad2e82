"""Gradient rules on synthetic histories: each fires past its edge and stays silent before it."""
import math

import numpy as np
import pytest

from synth import PARAMS, run_rule, synth

N = len(PARAMS)


def grads(value):
    return lambda t: np.full(N, value(t) if callable(value) else value)


# -- zero_gradients ----------------------------------------------------------------------
def test_zero_gradients_fires_on_a_stretch_of_exact_zeros():
    h = synth(30, loss=0.69, param_grad_norms=grads(0.0))
    det = run_rule("zero_gradients", h)
    assert det is not None and det.step == 0 and det.evidence["steps_all_zero"] == 30


@pytest.mark.parametrize("tiny", [1e-30, 1e-12])
def test_zero_gradients_silent_on_tiny_but_nonzero_gradients(tiny):
    assert run_rule("zero_gradients", synth(30, loss=0.69, param_grad_norms=grads(tiny))) is None


def test_zero_gradients_needs_five_steps_in_a_row():
    four = synth(30, loss=0.69, param_grad_norms=lambda t: np.full(N, 0.0 if t % 5 else 0.3))
    assert run_rule("zero_gradients", four) is None
    five = synth(30, loss=0.69, param_grad_norms=lambda t: np.full(N, 0.0 if 10 <= t < 15 else 0.3))
    assert run_rule("zero_gradients", five).step == 10


def test_zero_gradients_ignores_unmeasured_entries():
    # sparse or unreadable gradients are NaN (unmeasured): the measured ones decide
    rows = lambda t: np.array([0.0, 0.0, np.nan, np.nan, 0.0, 0.0])
    assert run_rule("zero_gradients", synth(20, loss=1.0, param_grad_norms=rows)) is not None
    all_unmeasured = lambda t: np.full(N, np.nan)
    assert run_rule("zero_gradients", synth(20, loss=1.0, param_grad_norms=all_unmeasured)) is None


def test_zero_gradients_silent_after_an_exact_fit():
    # a noiseless regression solved exactly: the loss fell to ~0, then the gradients are 0.0
    loss = lambda t: 4.0 * math.exp(-t / 3)
    g = lambda t: np.full(N, 0.0 if t >= 30 else 1.0)
    assert run_rule("zero_gradients", synth(60, loss=loss, param_grad_norms=g)) is None


# -- exploding_gradients -------------------------------------------------------------------
def test_exploding_gradients_edge():
    grow = lambda factor: (lambda t: 1.0 if t < 20 else factor)
    assert run_rule("exploding_gradients", synth(40, loss=1.0, grad_norm=grow(1.5e3))) is not None
    assert run_rule("exploding_gradients", synth(40, loss=1.0, grad_norm=grow(5e2))) is None


# -- vanishing_gradients -------------------------------------------------------------------
def _per_layer(first, last):
    # rms per element = norm / sqrt(size): give the first weight `first` rms, the others `last`
    sizes = np.array([4096, 64, 4096, 64, 640, 10], float)
    rms = np.array([first, 1.0, last, 1.0, last, 1.0])
    return lambda t: rms * np.sqrt(sizes)


def test_vanishing_gradients_edge():
    assert run_rule("vanishing_gradients", synth(40, loss=1.0, param_grad_norms=_per_layer(1e-5, 1.0))) is not None
    assert run_rule("vanishing_gradients", synth(40, loss=1.0, param_grad_norms=_per_layer(1e-2, 1.0))) is None


# -- frozen_parameters ---------------------------------------------------------------------
def test_frozen_parameters_names_a_parameter_that_never_gets_a_gradient():
    missing = np.array([False, False, True, True, False, False])
    h = synth(30, loss=1.0, param_grad_norms=lambda t: np.where(missing, np.nan, 0.5), param_grad_missing=lambda t: missing)
    det = run_rule("frozen_parameters", h)
    assert det is not None and det.evidence["never_got_gradient"] == ["fc2.weight", "fc2.bias"]
    # the share of the model frozen: root-cause attribution weighs a part against the whole
    assert (det.evidence["n_frozen"], det.evidence["n_parameters"]) == (2, missing.size)
    healthy = synth(30, loss=1.0, param_grad_norms=grads(0.5))
    assert run_rule("frozen_parameters", healthy) is None
