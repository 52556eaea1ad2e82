"""Curve rules on synthetic loss histories: trends judged against the loss's own noise, at each
batch's size and at epoch scale; chance level and convergence judged against a reference."""
import math

import numpy as np
import pytest

from synth import noisy, run_rule, synth

LN10 = math.log(10)
CLASSIFIER = dict(n_classes=10, loss_kind="cross_entropy")


# -- loss_divergence -----------------------------------------------------------------------
def test_divergence_fires_on_a_steady_climb():
    loss = noisy(lambda t: 1.0 if t < 60 else 1.0 + 0.03 * (t - 60), 0.05)
    det = run_rule("loss_divergence", synth(140, loss=loss))
    assert det is not None and det.evidence["relative_rise"] > 0.25


def test_divergence_silent_on_heavy_noise_around_a_flat_level():
    for seed in range(5):
        assert run_rule("loss_divergence", synth(200, loss=noisy(lambda t: 0.7, 0.4, seed))) is None


def test_divergence_silent_when_epoch_means_fall():
    # batch order is the same every epoch and the hard batches come last: every window shows a
    # climb inside its epoch, while each epoch's mean is lower than the one before
    e = 30
    loss = lambda t: (1.0 - 0.08 * (t // e)) * (0.6 + 0.8 * (t % e) / e)
    h = synth(150, loss=loss, facts=dict(steps_per_epoch=e))
    assert run_rule("loss_divergence", h) is None
    rising = synth(150, loss=lambda t: (1.0 + 0.3 * (t // e)) * (0.6 + 0.8 * (t % e) / e), facts=dict(steps_per_epoch=e))
    assert run_rule("loss_divergence", rising) is not None


def test_divergence_needs_the_level_above_the_runs_best():
    # a dip to 0.5 then back to 0.58: a 16% rise over the best is noise-scale, not a climb
    loss = lambda t: 1.0 - 0.5 * min(t, 100) / 100 + (0.0008 * (t - 100) if t > 100 else 0.0)
    assert run_rule("loss_divergence", synth(200, loss=loss)) is None


# -- loss_spike ------------------------------------------------------------------------------
def test_spike_fires_on_one_batch_far_outside_the_noise():
    loss = noisy(lambda t: 8.0 if t == 100 else 0.5, 0.05)
    det = run_rule("loss_spike", synth(160, loss=loss))
    assert det is not None and det.step == 100


def test_spike_silent_when_the_jump_is_a_tiny_last_batch():
    # epoch of 30 steps of batch 32 and a last batch of 1 sample: its loss scatters ~5.7x more
    # (per-sample losses are heavy-tailed: a batch of 32 still scatters by ~30%)
    batch = lambda t: 1.0 if t % 30 == 29 else 32.0
    loss = noisy(lambda t: 2.2 if t == 89 else 0.5, 0.3, seed=1)
    h = synth(160, loss=loss, batch_size=batch, sampled_every=1)
    assert run_rule("loss_spike", h) is None
    full = synth(160, loss=loss, batch_size=lambda t: 32.0, sampled_every=1)
    assert run_rule("loss_spike", full) is not None


# -- loss_plateau ------------------------------------------------------------------------------
def test_plateau_fires_on_a_flat_high_loss():
    loss = noisy(lambda t: 2.3 - 0.8 * min(t, 30) / 30, 0.03)
    det = run_rule("loss_plateau", synth(160, loss=loss, facts=CLASSIFIER))
    assert det is not None


def test_plateau_silent_on_a_slow_steady_fall():
    # 3% per 60-step window under 8% batch noise: invisible in one window, clear over two
    loss = noisy(lambda t: 2.0 * math.exp(-0.0005 * t), 0.08, seed=3)
    assert run_rule("loss_plateau", synth(400, loss=loss)) is None


# -- loss_oscillation ----------------------------------------------------------------------------
def test_oscillation_fires_on_a_large_zigzag_without_progress():
    loss = lambda t: 2.0 * (1.7 if t % 2 else 0.4)
    assert run_rule("loss_oscillation", synth(120, loss=loss, facts=CLASSIFIER)) is not None


def test_oscillation_silent_when_epoch_means_fall():
    e = 20
    loss = noisy(lambda t: 2.0 * (1.7 if t % 2 else 0.4) * (1 - 0.04 * (t // e)), 0.02)
    assert run_rule("loss_oscillation", synth(160, loss=loss, facts=dict(steps_per_epoch=e, **CLASSIFIER))) is None


# -- chance_level_loss ---------------------------------------------------------------------------
def test_chance_level_fires_when_the_loss_stays_at_ln_c():
    h = synth(120, loss=noisy(lambda t: LN10, 0.01), facts=CLASSIFIER)
    det = run_rule("chance_level_loss", h)
    assert det is not None and det.evidence["classes"] == 10


def test_chance_level_silent_while_a_classifier_starts_at_ln_c():
    # every classifier starts at ln(C): 70 steps there, judged before it learns, is no fault yet
    h = synth(75, loss=noisy(lambda t: LN10, 0.01), facts=CLASSIFIER)
    assert run_rule("chance_level_loss", h) is None


# -- converged -------------------------------------------------------------------------------------
def test_converged_fires_on_a_flat_loss_far_below_its_start():
    loss = noisy(lambda t: 2.3 * math.exp(-t / 15) + 0.02, 0.02)
    assert run_rule("converged", synth(200, loss=loss, facts=CLASSIFIER)) is not None


@pytest.mark.parametrize("level", [7.97, 2.0])
def test_converged_silent_on_a_classifier_stuck_above_chance(level):
    loss = noisy(lambda t: 80.0 if t < 5 else level, 0.01)
    assert run_rule("converged", synth(200, loss=loss, facts=CLASSIFIER)) is None


def test_converged_silent_when_the_loss_never_fell():
    assert run_rule("converged", synth(200, loss=0.0)) is None


def test_divergence_is_a_warning_until_the_climb_lasts_or_loses_everything():
    # learned 2.3 -> 0.3, then climbs to ~1.2 within one window: a warning (it may still turn)
    learn = lambda t: 2.3 * math.exp(-t / 15) + 0.3
    recent = noisy(lambda t: learn(t) if t < 100 else 0.3 + 0.02 * (t - 100), 0.03)
    det = run_rule("loss_divergence", synth(150, loss=recent, facts=CLASSIFIER))
    assert det is not None and det.severity == "warning"
    # above the untrained loss: critical
    lost = noisy(lambda t: learn(t) if t < 100 else 0.3 + 0.1 * (t - 100), 0.03)
    det = run_rule("loss_divergence", synth(150, loss=lost, facts=CLASSIFIER))
    assert det is not None and det.severity is None and det.evidence["above_reference"]


def test_divergence_silent_on_a_rise_small_against_the_reference():
    # a noise-floor wobble: 0.006 -> 0.009 after learning from 2.3 is +50%, and nothing
    floor = noisy(lambda t: 2.3 * math.exp(-t / 10) + (0.006 if t < 120 else 0.006 + 0.0001 * (t - 120)), 0.05)
    assert run_rule("loss_divergence", synth(200, loss=floor, facts=CLASSIFIER)) is None
