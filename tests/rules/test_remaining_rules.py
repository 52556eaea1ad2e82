"""The rules no other synthetic-history test covered: non-finite gradients and inputs, softmax
overflow, the initial activation scale, BatchNorm in eval mode, the train/validation table, batch
order, weight decay that wins over the data, and one rank's loss apart from the others.

Each fires on a history with its fault (and says so in its evidence) and stays silent on the
nearest healthy history: the same run without the fault, or the fault just under the rule's edge,
read from ``Config()`` or the rule module so the tests follow the rule.
"""
import math

import numpy as np
import pytest

from lossprobe import Config
from lossprobe.rules.data import DISJOINT_SHARE, MIN_BATCH
from lossprobe.rules.distributed import RankTable
from lossprobe.rules.numerics import FP32_EXP_LIMIT
from synth import PARAMS, noisy, run_rule, synth

CFG = Config()
N = len(PARAMS)


def grads_with_nan(bad_steps, layer: str):
    """Per-parameter gradient norms of 0.5, with a NaN in ``layer`` on ``bad_steps``."""
    j = PARAMS.index(layer)

    def row(t):
        g = np.full(N, 0.5)
        if t in bad_steps:
            g[j] = np.nan
        return g
    return row


# -- nonfinite_gradients -------------------------------------------------------------------
def test_nonfinite_gradients_fires_on_two_steps_and_names_the_first_layer():
    h = synth(30, loss=0.7, param_grad_norms=grads_with_nan({12, 13}, "fc2.weight"))
    det = run_rule("nonfinite_gradients", h)
    assert det is not None and det.step == 12
    assert det.evidence["first_layer"] == "fc2.weight" and det.evidence["nonfinite_steps"] == 2


def test_nonfinite_gradients_fires_on_one_step_when_the_loss_breaks_after_it():
    loss = lambda t: 0.7 if t < 13 else math.nan
    h = synth(30, loss=loss, param_grad_norms=grads_with_nan({12}, "fc1.weight"))
    det = run_rule("nonfinite_gradients", h)
    assert det is not None and det.evidence["first_layer"] == "fc1.weight"


def test_nonfinite_gradients_silent_on_one_skipped_amp_step_and_on_finite_gradients():
    # one non-finite step and training goes on finite: the AMP loss scaler skipped it
    assert run_rule("nonfinite_gradients", synth(30, loss=0.7, param_grad_norms=grads_with_nan({12}, "fc2.weight"))) is None
    assert run_rule("nonfinite_gradients", synth(30, loss=0.7, param_grad_norms=grads_with_nan(set(), "fc2.weight"))) is None


def test_nonfinite_gradients_silent_where_the_gradient_is_absent():
    # a parameter with no gradient reads NaN: not measured is not a fault
    nan_every_step = grads_with_nan(set(range(30)), "fc2.weight")
    missing = lambda t: np.array([p == "fc2.weight" for p in PARAMS])
    assert run_rule("nonfinite_gradients", synth(30, loss=0.7, param_grad_norms=nan_every_step)) is not None
    h = synth(30, loss=0.7, param_grad_norms=nan_every_step, param_grad_missing=missing)
    assert run_rule("nonfinite_gradients", h) is None


# -- nonfinite_inputs ------------------------------------------------------------------------
def test_nonfinite_inputs_fires_from_the_first_bad_batch():
    h = synth(30, loss=0.7, input_nonfinite=lambda t: 1.0 if t >= 10 else 0.0)
    det = run_rule("nonfinite_inputs", h)
    assert det is not None and det.step == 10 and det.evidence["batches_affected"] == 20


@pytest.mark.parametrize("value", [0.0, None], ids=["clean", "unmeasured"])
def test_nonfinite_inputs_silent_on_clean_or_unmeasured_inputs(value):
    assert run_rule("nonfinite_inputs", synth(30, loss=0.7, input_nonfinite=value)) is None


def test_nonfinite_inputs_names_the_rank_under_data_parallelism():
    table = RankTable(3, window=64)
    for s in range(30):
        table.append(s, [{"loss": 0.7, "input_nonfinite": float(s >= 10 and r == 2)} for r in range(3)])
    h = synth(30, loss=0.7, input_nonfinite=lambda t: 1.0 if t >= 10 else 0.0,
              layout=dict(world_size=3, extra={"dist": table}))
    det = run_rule("nonfinite_inputs", h)
    assert det is not None and det.evidence["rank"] == 2 and det.evidence["rank_step"] == 10


# -- softmax_overflow -------------------------------------------------------------------------
def pinned_loss(pin_steps: int, value: float):
    """A loss of 2.3 that sits at ``value`` on its last ``pin_steps`` steps of 40."""
    return lambda t: value if t >= 40 - pin_steps else 2.3


def test_softmax_overflow_fires_on_a_loss_pinned_at_minus_ln_flt_min():
    det = run_rule("softmax_overflow", synth(40, loss=pinned_loss(5, CFG.overflow_loss)))
    assert det is not None and det.step == 35 and det.evidence["pinned_steps"] == 5
    assert abs(det.evidence["loss"] - CFG.overflow_loss) <= CFG.overflow_tolerance


def test_softmax_overflow_silent_on_a_large_loss_off_the_pin_or_pinned_once():
    off_pin = CFG.overflow_loss + 2 * CFG.overflow_tolerance
    assert run_rule("softmax_overflow", synth(40, loss=pinned_loss(5, off_pin))) is None
    assert run_rule("softmax_overflow", synth(40, loss=pinned_loss(2, CFG.overflow_loss))) is None


@pytest.mark.parametrize("logit,sat,fires", [
    (2 * FP32_EXP_LIMIT, 0.9, True),
    (0.9 * FP32_EXP_LIMIT, 0.9, False),   # large logits, still under exp's fp32 limit
    (2 * FP32_EXP_LIMIT, 0.2, False),     # one huge logit, most rows still a real distribution
])
def test_softmax_overflow_from_logits_past_the_fp32_exp_limit(logit, sat, fires):
    h = synth(60, loss=1.5, logit_abs_max=logit, softmax_saturation=sat)
    det = run_rule("softmax_overflow", h)
    assert (det is not None) == fires
    if fires:
        assert det.evidence["max_abs_logit"] >= FP32_EXP_LIMIT and det.evidence["overflow_steps"] >= 3


def test_softmax_overflow_silent_on_a_regression_loss_passing_through_the_pin():
    # a squared error in raw units, 100 -> 80 over 1000 steps: healthy, and no softmax anywhere
    h = synth(1000, loss=lambda t: 100 - 20 * t / 1000, facts=dict(loss_kind="mse"))
    assert run_rule("softmax_overflow", h) is None


def test_softmax_overflow_needs_the_loss_to_sit_at_the_pin_not_pass_it():
    # an unrecognised loss falling through 87.3 (three steps near it, never in a row) vs one that stays
    target = Config().overflow_loss
    passing = [target + 0.04, target + 1.0, target - 0.04, target - 1.0, target + 0.01] + [target - 2.0] * 40
    assert run_rule("softmax_overflow", synth(45, loss=passing)) is None
    assert run_rule("softmax_overflow", synth(45, loss=[target - 2.0] * 40 + [target] * 5)) is not None


# -- bad_initialization -----------------------------------------------------------------------
DEEP = dict(activations=("act1", "act2", "act3", "act4"), kinds=("relu", "relu", "relu", "relu"))


def scales(ratio: float, n_layers: int = 4):
    """Activation std growing geometrically from 1.0 at the first layer to ``ratio`` at the last."""
    return lambda t: ratio ** (np.arange(n_layers) / (n_layers - 1))


@pytest.mark.parametrize("factor,direction", [(3.0, "explodes"), (1 / 3.0, "collapses")])
def test_bad_initialization_fires_past_the_scale_ratio(factor, direction):
    ratio = CFG.init_scale_ratio ** (1 if factor > 1 else -1) * factor
    det = run_rule("bad_initialization", synth(30, loss=2.3, layout=DEEP, act_scale=scales(ratio)))
    assert det is not None and det.step == 0 and det.evidence["direction"] == direction
    assert det.evidence["first_layer"] == "act1" and det.evidence["last_layer"] == "act4"


@pytest.mark.parametrize("factor", [1 / 3.0, 3.0])
def test_bad_initialization_silent_just_inside_the_scale_ratio(factor):
    ratio = CFG.init_scale_ratio ** (1 if factor < 1 else -1) * factor
    assert run_rule("bad_initialization", synth(30, loss=2.3, layout=DEEP, act_scale=scales(ratio))) is None


def test_bad_initialization_ignores_a_bounded_output_and_a_late_first_sample():
    # a tanh whose output is tiny: a collapse in a hidden layer, but the model's confident answer
    # when it is the output layer (only the three hidden ReLUs, which are sound, are judged then)
    layout = dict(activations=DEEP["activations"], kinds=("relu", "relu", "relu", "tanh"))
    row = lambda t: np.array([1.0, 1.2, 0.9, 1e-2 / CFG.init_scale_ratio])
    assert run_rule("bad_initialization", synth(30, loss=2.3, layout=layout, act_scale=row)) is not None
    assert run_rule("bad_initialization", synth(30, loss=2.3, layout=layout, act_scale=row,
                                                facts=dict(output_activation_index=3))) is None
    # scales first measured long after the start judge trained weights, not the init
    late = lambda t: None if t < 3 * CFG.activation_every else scales(10 * CFG.init_scale_ratio)(t)
    assert run_rule("bad_initialization", synth(60, loss=2.3, layout=DEEP, act_scale=late)) is None


# -- frozen_batchnorm -----------------------------------------------------------------------------
def test_frozen_batchnorm_fires_when_batchnorm_stays_in_eval_mode():
    h = synth(2 * CFG.warmup_steps, loss=1.0, bn_eval_in_train=2.0)
    det = run_rule("frozen_batchnorm", h)
    assert det is not None and det.evidence["batchnorm_layers_in_eval"] == 2 and det.evidence["share_of_steps"] > 0.9


def test_frozen_batchnorm_silent_in_train_mode_and_during_warmup():
    assert run_rule("frozen_batchnorm", synth(2 * CFG.warmup_steps, loss=1.0, bn_eval_in_train=0.0)) is None
    assert run_rule("frozen_batchnorm", synth(CFG.warmup_steps - 1, loss=1.0, bn_eval_in_train=2.0)) is None


# -- overfitting / validation_anomaly -------------------------------------------------------------
VAL_EVERY = 50
STEPS = 600


def with_val(h, val, every: int = VAL_EVERY):
    """``h`` with a validation loss ``val(step)`` every ``every`` steps after the first."""
    for s in range(every, STEPS + 1, every):
        h.add_val(s, val(s))
    return h


train_falls = noisy(lambda t: 0.2 + 2.0 * math.exp(-t / 100), 0.05)
val_follows = lambda t: 0.35 + 2.0 * math.exp(-t / 100)


def test_overfitting_fires_when_validation_rises_from_its_best():
    val = lambda t: val_follows(t) + (0.0015 * (t - 300) if t > 300 else 0.0)
    det = run_rule("overfitting", with_val(synth(STEPS, loss=train_falls), val))
    assert det is not None and 250 <= det.step <= 350
    assert det.evidence["val_rise_from_best"] > 0.05 and det.evidence["train_now"] < det.evidence["train_at_val_best"]


def test_overfitting_fires_when_validation_stays_flat_while_train_keeps_falling():
    train = noisy(lambda t: 2.0 - 1.6 * t / STEPS, 0.05)
    det = run_rule("overfitting", with_val(synth(STEPS, loss=train), lambda t: 0.9))
    assert det is not None and det.evidence["recent_train_change"] <= -0.2


def test_overfitting_silent_when_validation_follows_train():
    assert run_rule("overfitting", with_val(synth(STEPS, loss=train_falls), val_follows)) is None


def test_overfitting_silent_on_a_rise_smaller_than_validations_own_noise():
    # validation flat at 0.5 with 4% noise: its worst points sit 5% above its best
    val = noisy(lambda t: 0.5, 0.04, seed=3)
    train = noisy(lambda t: 0.45, 0.05)
    assert run_rule("overfitting", with_val(synth(STEPS, loss=train), val)) is None


def test_validation_anomaly_fires_when_validation_falls_and_train_stays_flat():
    h = with_val(synth(STEPS, loss=noisy(lambda t: 1.0, 0.1)), lambda t: 1.2 * math.exp(-t / 300))
    det = run_rule("validation_anomaly", h)
    assert det is not None and det.evidence["val_change"] <= -0.05 and abs(det.evidence["train_change"]) < 0.05


def test_validation_anomaly_silent_when_train_falls_with_validation():
    train = noisy(lambda t: 1.0 * math.exp(-t / 300), 0.1)
    h = with_val(synth(STEPS, loss=train), lambda t: 1.2 * math.exp(-t / 300))
    assert run_rule("validation_anomaly", h) is None


def test_validation_anomaly_needs_val_min_points():
    h = synth(STEPS, loss=noisy(lambda t: 1.0, 0.1))
    for s in np.linspace(VAL_EVERY, STEPS, CFG.val_min_points - 1):
        h.add_val(int(s), 1.2 * math.exp(-s / 100))
    assert run_rule("validation_anomaly", h) is None


# -- unshuffled_data ------------------------------------------------------------------------------
SAMPLES = 30                     # sampled batches the rule reads
SAMPLE_EVERY = 10


def ordered_batches(n_narrow: int, batch: float = 64.0):
    """A history whose first ``n_narrow`` sampled batches each hold one class of their own (data in
    order) and whose other batches span every class (shuffled)."""
    def lo(t):
        k = t // SAMPLE_EVERY
        return float(k) if k < n_narrow else 0.0

    def hi(t):
        k = t // SAMPLE_EVERY
        return float(k) if k < n_narrow else float(SAMPLES - 1)
    return synth(SAMPLES * SAMPLE_EVERY, loss=2.3, sampled_every=SAMPLE_EVERY, target_min=lo, target_max=hi,
                 target_is_index=1.0, target_distinct=lambda t: 1.0 if t // SAMPLE_EVERY < n_narrow else 10.0,
                 batch_size=batch, facts=dict(n_classes=SAMPLES, loss_kind="cross_entropy"))


def narrow_for_share() -> int:
    """The most one-class batches whose pairwise-disjoint share stays under DISJOINT_SHARE."""
    pairs = math.comb(SAMPLES, 2)
    return max(m for m in range(2, SAMPLES + 1) if math.comb(m, 2) / pairs < DISJOINT_SHARE)


def test_unshuffled_data_fires_on_batches_sorted_by_label():
    det = run_rule("unshuffled_data", ordered_batches(SAMPLES))
    assert det is not None and det.evidence["disjoint_batch_pairs"] > 0.9
    assert det.evidence["distinct_labels_per_batch"] < det.evidence["expected_if_shuffled"]


def test_unshuffled_data_edge_is_the_share_of_disjoint_batch_pairs():
    m = narrow_for_share()
    assert run_rule("unshuffled_data", ordered_batches(m)) is None
    det = run_rule("unshuffled_data", ordered_batches(m + 1))
    assert det is not None and det.evidence["disjoint_batch_pairs"] >= DISJOINT_SHARE


def test_unshuffled_data_silent_on_shuffled_batches_and_on_tiny_ones():
    assert run_rule("unshuffled_data", ordered_batches(0)) is None
    # batches of a few targets have narrow ranges whatever the order
    assert run_rule("unshuffled_data", ordered_batches(SAMPLES, batch=MIN_BATCH - 1)) is None


# -- over_regularization --------------------------------------------------------------------------
def shrinking_norms(keep: float, steps: int):
    """Weight norms of 10 at step 0, shrunk linearly to ``keep`` of that by the last step."""
    return lambda t: np.full(N, 10.0 * (1 - (1 - keep) * t / (steps - 1)))


STUCK = noisy(lambda t: 2.3 if t < 5 else 2.0, 0.03)


def test_over_regularization_fires_when_weights_shrink_while_the_loss_is_stuck_high():
    keep = 1 - CFG.shrink_fraction - 0.1
    det = run_rule("over_regularization", synth(100, loss=STUCK, param_norms=shrinking_norms(keep, 100)))
    assert det is not None and det.evidence["shrunk_by"] > CFG.shrink_fraction
    assert det.evidence["loss"] > CFG.plateau_high * det.evidence["initial_loss"]


def test_over_regularization_silent_just_under_the_shrink_fraction():
    keep = 1 - CFG.shrink_fraction + 0.05
    assert run_rule("over_regularization", synth(100, loss=STUCK,
                                                 param_norms=shrinking_norms(keep, 100))) is None


def test_over_regularization_silent_when_the_loss_is_low_or_still_falling():
    keep = 1 - CFG.shrink_fraction - 0.1
    low = noisy(lambda t: 2.3 if t < 5 else 0.5 * CFG.plateau_high * 2.3, 0.03)
    assert run_rule("over_regularization", synth(100, loss=low, param_norms=shrinking_norms(keep, 100))) is None
    falling = noisy(lambda t: 2.3 * math.exp(-t / 60), 0.03)
    assert run_rule("over_regularization", synth(100, loss=falling, param_norms=shrinking_norms(keep, 100))) is None


# -- rank_divergence ------------------------------------------------------------------------------
REL = 0.3                        # the relative gap the rule is asked to use (cfg.extra["rank_divergence_rel"])


def ranked(offset: float, rank: int = 2, world: int = 4, n: int = 60, seed: int = 0):
    """A history whose rank table holds ``world`` ranks' losses around 1.0, ``rank``'s shifted by
    ``offset`` (relative to the level)."""
    rng = np.random.default_rng(seed)
    table = RankTable(world, window=256)
    for s in range(n):
        table.append(s, [{"loss": 1.0 + rng.normal(0, 0.02) + (offset if r == rank else 0.0)} for r in range(world)])
    return synth(n, loss=1.0, layout=dict(world_size=world, extra={"dist": table}))


def test_rank_divergence_fires_on_one_rank_far_from_the_others():
    det = run_rule("rank_divergence", ranked(2 * REL), extra={"rank_divergence_rel": REL})
    assert det is not None and det.evidence["rank"] == 2 and det.evidence["gap"] > REL
    assert det.evidence["world_size"] == 4 and len(det.evidence["per_rank_loss"]) == 4


def test_rank_divergence_silent_just_under_the_relative_gap_and_on_noise():
    assert run_rule("rank_divergence", ranked(0.8 * REL), extra={"rank_divergence_rel": REL}) is None
    for seed in range(3):
        assert run_rule("rank_divergence", ranked(0.0, seed=seed), extra={"rank_divergence_rel": REL}) is None


def test_rank_divergence_silent_on_a_single_process_run():
    assert run_rule("rank_divergence", synth(60, loss=1.0)) is None
