"""Rule changes judged on the real-program corpus (benchmarks/realworld), each shown on a
synthetic history: firing on the fault, silent (or advice) on the sound run."""
import math

import numpy as np
import pytest

from lossprobe import Config
from lossprobe.findings import Detection
from lossprobe.verdict import resolve_conflicts
from synth import noisy, run_rule, synth

LN10 = math.log(10)


# -- the initial loss at tiny batch sizes ---------------------------------------------------
def test_the_initial_loss_of_one_sample_batches_is_a_median_not_one_sample():
    first = [1e-4, 1.3, 0.9, 1.1, 1.2, 0.8, 1.0, 1.4, 1.1, 0.9]   # the first sample happened to be easy
    h = synth(40, loss=lambda t: first[t] if t < len(first) else 1.0, batch_size=1.0)
    assert 0.9 <= h.initial_loss <= 1.3


def test_the_initial_loss_of_ordinary_batches_is_the_first_step():
    h = synth(40, loss=lambda t: 2.3 * math.exp(-t / 5), batch_size=64.0)
    assert h.initial_loss == pytest.approx(2.3)


def test_an_early_blow_up_does_not_raise_the_reference():
    # batch 4: two steps make the first 8 samples; the lower median keeps the sane one
    h = synth(40, loss=lambda t: [0.69, 4e7][t] if t < 2 else 30.0, batch_size=4.0)
    assert h.initial_loss == pytest.approx(0.69)


# -- unscaled inputs on a run that learns ---------------------------------------------------
@pytest.mark.parametrize("learns, severity", [(True, "info"), (False, None)])
def test_unnormalized_inputs_is_advice_while_the_loss_falls_well(learns, severity):
    level = (lambda t: 2.3 * math.exp(-t / 30) + 0.1) if learns else (lambda t: 2.3)
    h = synth(200, loss=noisy(level, 0.02), input_mean=120.0, input_std=60.0)
    det = run_rule("unnormalized_inputs", h)
    assert det is not None and det.severity == severity


# -- a step size too small, or parameters the optimizer leaves alone -------------------------
def _stuck(**ev):
    base = {"parameters": ["w"], "n_frozen": 1, "never_got_gradient": [], "not_in_optimizer": [],
            "gradient_but_never_updated": ["w"]}
    base.update(ev)
    return Detection("frozen_parameters", 0, base)


def test_unmoved_tensors_that_get_gradients_are_the_learning_rate():
    kept = {d.code for d in resolve_conflicts([_stuck(), Detection("learning_rate_too_low", 0, {})])}
    assert kept == {"learning_rate_too_low"}


@pytest.mark.parametrize("why", ["never_got_gradient", "not_in_optimizer"])
def test_tensors_without_gradient_or_optimizer_stay_frozen_parameters(why):
    kept = {d.code for d in resolve_conflicts([_stuck(**{why: ["w"]}), Detection("learning_rate_too_low", 0, {})])}
    assert kept == {"frozen_parameters"}


@pytest.mark.parametrize("chance, ratio, fires", [
    (True, 3.5e-5, True),     # at chance: 30x under the healthy 1e-3 is a likely reason
    (False, 3.5e-5, False),   # learning something: only 100x under it is
    (False, 5e-6, True),
])
def test_learning_rate_too_low_is_laxer_at_chance(chance, ratio, fires):
    level = LN10 if chance else 1.2
    n = len(synth(1).layout.params)
    h = synth(200, loss=noisy(lambda t: level, 0.01), update_ratios=lambda t: [ratio] * n,
              param_grad_norms=lambda t: [1.0] * n, facts=dict(n_classes=10, loss_kind="cross_entropy"))
    assert (run_rule("learning_rate_too_low", h) is not None) is fires


# -- chance level only for cross-entropy -----------------------------------------------------
@pytest.mark.parametrize("kind, start, fires", [
    ("cross_entropy", 34.0, True),
    ("", 34.0, False),            # an unrecognised loss that started far above ln(12): a CRF's NLL
    ("", math.log(12), True),     # one that started at ln(12): a 12-class cross-entropy
    ("mse", math.log(12), False),
])
def test_ln_c_is_a_chance_level_only_for_a_cross_entropy(kind, start, fires):
    level = lambda t: start if t < 5 else math.log(12)
    h = synth(200, loss=noisy(level, 0.01), facts=dict(n_classes=12, loss_kind=kind))
    assert (run_rule("chance_level_loss", h) is not None) is fires


def test_an_unknown_loss_at_ln2_is_still_a_binary_guess():
    h = synth(200, loss=noisy(lambda t: math.log(2), 0.01), facts=dict(loss_kind=""))
    assert run_rule("chance_level_loss", h) is not None


# -- shapes and targets ------------------------------------------------------------------------
def test_a_loss_that_broadcast_its_input_against_the_targets_is_a_label_problem():
    h = synth(30, loss=1.0, facts=dict(loss_kind="mse", loss_broadcast="(32,) against (32, 1) -> (32, 32)"))
    det = run_rule("label_problem", h)
    assert det is not None and "broadcast" in det.evidence
    assert run_rule("label_problem", synth(30, loss=1.0, facts=dict(loss_kind="mse"))) is None


def test_all_equal_targets_are_a_warning_that_sorted_data_can_clear():
    h = synth(60, loss=0.7, batch_size=32.0, target_min=0.0, target_max=0.0, target_is_index=0.0,
              facts=dict(loss_kind="bce_logits"))
    det = run_rule("label_problem", h)
    assert det is not None and det.severity == "warning"


def test_unregistered_tensors_are_frozen_parameters():
    rows = dict(param_grad_norms=lambda t: [1.0] * 6, update_ratios=lambda t: [1e-3] * 6)
    h = synth(30, loss=1.0, facts=dict(unregistered=("(64, 64)", "(64,)")), **rows)
    det = run_rule("frozen_parameters", h)
    assert det is not None and det.evidence["unregistered_tensors"] == ["(64, 64)", "(64,)"]
    assert run_rule("frozen_parameters", synth(30, loss=1.0, **rows)) is None


# -- plateaus need two windows ------------------------------------------------------------------
def test_one_flat_window_after_a_steady_fall_is_no_plateau():
    w = Config().curve_window
    fall = lambda t: math.exp(-t / 400) if t < 3 * w else math.exp(-3 * w / 400)
    h = synth(4 * w, loss=noisy(fall, 0.05))
    assert run_rule("loss_plateau", h) is None       # one window flat: a pause, for all it shows
    h2 = synth(6 * w, loss=noisy(fall, 0.05))
    assert run_rule("loss_plateau", h2) is not None


@pytest.mark.parametrize("level, well", [(0.9, True), (LN10, False)])
def test_learning_well_is_judged_against_chance_for_a_classifier(level, well):
    # a start inflated by huge logits (40 for a 10-class classifier): a loss at ln(10) is far
    # below it and has still learned nothing
    from lossprobe.rules.curves import learning_well
    h = synth(200, loss=noisy(lambda t: 40.0 if t < 3 else level, 0.01),
              facts=dict(n_classes=10, loss_kind="cross_entropy"))
    assert learning_well(h, Config()) is well
