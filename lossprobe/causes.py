"""The causal model (part of the catalog): which diagnosis codes can produce which, and how.

One fault shows several symptoms: a learning rate far too high blows the weights up, the
ReLUs die, and the loss then sits at chance. Each :data:`LINKS` entry says that one code can
produce another and, in a clause, by what mechanism. :mod:`lossprobe.rootcause` reads this
model, together with when each finding began, to say which finding explains the others.

Codes come in four layers (:func:`layer`), and the links run down the chain (plus a few
within a layer):

* **set-up faults** (:data:`SETUP`, and NaN in the data): mistakes in how the run is put
  together -- the output head, the loss, the labels, the inputs, the loop, the optimizer's
  parameter list, the initial weights, dropout, BatchNorm mode, data order. They hold from
  the first step on, whatever step the rule first measured them at, so they explain the
  symptoms they can produce whenever both are present;
* **settings** (:data:`SETTINGS`: the learning rate, weight decay) and **mechanisms**
  (exploding/vanishing gradients, dead or saturated units, overflow, NaN, zero gradients):
  these begin at a step, and explain only what began at or after it; what acts through the
  updates (:data:`THROUGH_UPDATES`) explains nothing already there before the first one;
* **curve symptoms** (:data:`SYMPTOMS`: plateau, chance level, divergence, spikes, the
  train/validation patterns): what the loss curve shows; they explain little themselves (a
  climbing loss grows its gradients and logits, a spike can start a climb; a specific reading of a stretch of curve
  explains the general one, :data:`READINGS`).

A few links hold only for some forms or sizes of a cause, which the findings' evidence tells
(:data:`ONLY_WHEN`: a cause explains an effect only as far as its size can); a few are dated by
their effect (:data:`DATED_BY_EFFECT`); a few act only through the size of the updates
(:data:`THROUGH_STEP_SIZE`), and yield to a measured step size that is out of range on its own;
:data:`CONFIRM` says, per cause, the change that would show it is the one.

``converged`` (healthy) and ``rank_divergence`` (a data-sharding fault that nothing here
produces and whose effects the rules do not separate from it) take part in no link.

Example::

    from lossprobe.causes import CAN_CAUSE, SETUP
    CAN_CAUSE["learning_rate_too_high"]["dead_relu"]   # how the one produces the other
    "unnormalized_inputs" in SETUP                      # True: a cause whenever present
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .catalog import CATALOG


@dataclass(frozen=True)
class Link:
    cause: str
    effect: str
    how: str   # the mechanism, as a clause that follows "because": "each step overshoots ..."


SETUP = frozenset({
    "output_activation_mismatch", "double_softmax", "label_problem", "unnormalized_inputs",
    "unscaled_targets", "excessive_dropout", "frozen_batchnorm", "unshuffled_data",
    "stale_gradients", "frozen_parameters", "bad_initialization",
})
"""Codes that name a fault in the run's set-up: present from the start (or from the moment
the program changed it, e.g. a stray ``model.eval()``), so no time order is needed for them
to explain a symptom."""


SETTINGS = frozenset({"learning_rate_too_high", "learning_rate_too_low", "over_regularization"})
"""Optimizer settings: chosen by the user like a set-up fault, but judged from what they do, so
they begin at a step (a schedule can change them mid-run)."""

SYMPTOMS = frozenset({"loss_plateau", "chance_level_loss", "loss_divergence", "loss_spike", "loss_oscillation",
                      "overfitting", "validation_anomaly", "converged"})
"""What the loss curves show."""


def layer(code: str) -> int:
    """0 a set-up or data fault, 1 an optimizer setting, 2 a mechanism, 3 a curve symptom: where
    a code sits in the chain from a mistake to what the loss shows. When the evidence cannot
    order two causes, the one higher up the chain is the likelier start."""
    if code in SETUP or code in ("nonfinite_inputs", "rank_divergence"):
        return 0
    if code in SETTINGS:
        return 1
    return 3 if code in SYMPTOMS else 2


def _from(cause: str, effects: dict[str, str]) -> list[Link]:
    return [Link(cause, effect, how) for effect, how in effects.items()]


LINKS: list[Link] = [
    # ---------------------------------------------------------------- set-up faults
    *_from("output_activation_mismatch", {
        "zero_gradients": "a one-unit softmax always outputs exactly 1, and a rounded or squashed "
                          "output the loss cannot move passes no gradient back",
        "chance_level_loss": "an output the loss cannot read as scores leaves the prediction at the "
                             "uniform guess",
        "loss_plateau": "the loss receives outputs of the wrong kind, so the optimizer has no useful "
                        "direction and the loss stops falling early",
        "saturated_activations": "a squashing output under a loss that squashes again is driven into "
                                 "its flat tails",
        "vanishing_gradients": "a squashing output in front of a loss that does not undo it passes back "
                               "only a sliver of the error",
        "learning_rate_too_low": "the gradients that do arrive are tiny, so the updates are tiny whatever "
                                 "the learning rate",
        "dead_relu": "a ReLU output unit that goes negative under a probability loss is clamped at 0 "
                     "and never recovers",
        "nan_loss": "outputs that are not probabilities, fed to a loss that normalises them or takes their "
                    "logarithm, give 0/0 or log of a negative number once they reach 0 or below",
        "loss_divergence": "a loss given values outside the range it assumes has no minimum where it "
                           "should, and the optimizer can push it upwards",
        "softmax_overflow": "a loss that is unbounded for raw outputs (NLL of logits) drives them without "
                            "bound, past softmax's range",
        "exploding_gradients": "a loss that is unbounded for raw outputs keeps growing its gradients",
    }),
    *_from("double_softmax", {
        "chance_level_loss": "softmax of probabilities is nearly uniform, so the loss barely moves from "
                             "ln(C)",
        "loss_plateau": "the second softmax squeezes every output into a narrow band, so the loss "
                        "stalls high",
        "vanishing_gradients": "the second softmax flattens the loss, so little gradient reaches the model",
        "learning_rate_too_low": "the flattened loss gives tiny gradients, so the updates are tiny",
    }),
    *_from("label_problem", {
        "chance_level_loss": "targets that are all one value or do not fit the output carry no signal "
                             "to learn from",
        "loss_plateau": "the model cannot fit targets that are out of its range, so the loss stops "
                        "falling high",
        "nan_loss": "class indices outside the output or targets outside [0, 1] make the loss's "
                    "logarithm undefined",
        "nonfinite_gradients": "an undefined loss value backpropagates as NaN",
        "loss_divergence": "targets outside the loss's range make it unbounded, and the optimizer "
                           "follows it away",
        "softmax_overflow": "logits grow without bound chasing targets no probability can reach",
        "exploding_gradients": "an unbounded loss keeps growing its gradients",
        "loss_spike": "a batch with wrong targets gives a loss far above the others",
        "overfitting": "the model memorises wrong training targets that the validation set does not share",
        "validation_anomaly": "wrong training targets keep the training loss up while the validation "
                              "loss, measured on sound targets, falls",
    }),
    *_from("unnormalized_inputs", {
        "saturated_activations": "inputs of size 100 or more make pre-activations far larger than "
                                 "sigmoid/tanh can distinguish",
        "exploding_gradients": "the first layer's gradient scales with its inputs, so large inputs give "
                               "large and growing gradients",
        "learning_rate_too_high": "large inputs give large gradients, so each step is large relative to "
                                  "the weights at any ordinary learning rate",
        "dead_relu": "the first large update shifts pre-activations so far that many units are "
                     "negative for every input",
        "softmax_overflow": "large inputs through the layers give logits beyond softmax's range",
        "nan_loss": "large inputs make every step large, until the weights and then the loss overflow",
        "loss_divergence": "features on very different scales make steps that fit one direction "
                           "overshoot in another",
        "loss_oscillation": "a badly scaled problem makes every step overshoot along the large features",
        "loss_spike": "a batch on a different scale gives a loss far above the others",
        "loss_plateau": "features on very different scales leave the optimizer crawling along the "
                        "small ones",
        "chance_level_loss": "inputs far too small (or too large to learn from) leave the output at "
                             "the uniform guess",
        "learning_rate_too_low": "tiny inputs give tiny gradients, so the updates are tiny at an "
                                 "ordinary learning rate",
        "vanishing_gradients": "saturating the first layers with large inputs blocks the gradient "
                               "there",
    }),
    *_from("unscaled_targets", {
        "exploding_gradients": "errors in the target's raw units (1e5 and more) give gradients of the "
                               "same size",
        "learning_rate_too_high": "errors in raw units give huge gradients, so every step is huge "
                                  "relative to the weights",
        "loss_divergence": "steps sized by huge errors overshoot, and the loss climbs",
        "nan_loss": "squared errors in raw units overflow",
        "nonfinite_gradients": "gradients of an overflowing squared error are not finite",
        "loss_plateau": "the loss is dominated by the targets' scale, and fitting the pattern on top "
                        "of it barely moves it",
        "loss_oscillation": "steps sized by huge errors overshoot back and forth",
        "loss_spike": "a batch with larger raw targets gives a loss far above the others",
        "dead_relu": "the first huge updates push many units negative for every input",
    }),
    *_from("excessive_dropout", {
        "chance_level_loss": "dropping nearly every input leaves the layers after it nothing to learn "
                             "from",
        "loss_plateau": "with most of its inputs dropped on every step, the training loss cannot fall far",
        "validation_anomaly": "training runs on a crippled network while validation, without dropout, "
                              "uses all of it",
        "loss_oscillation": "each step sees a different small fraction of the signal, so the loss "
                            "jumps around",
        "over_regularization": "with the data term this weak, weight decay shrinks the weights "
                               "unopposed",
    }),
    *_from("frozen_batchnorm", {
        "loss_plateau": "normalising with stale statistics shifts every layer's inputs, and training "
                        "stalls",
        "chance_level_loss": "statistics that do not match the data wash the signal out of the layers",
        "loss_divergence": "without batch statistics the activations drift, and the loss with them",
        "exploding_gradients": "a deep network that relied on BatchNorm loses its normalisation, and "
                               "the scale grows layer by layer",
        "softmax_overflow": "unnormalised activations grow until the logits leave softmax's range",
        "saturated_activations": "activations normalised with the wrong statistics fall into the flat "
                                 "tails",
        "dead_relu": "a stale running mean shifts pre-activations below zero for every input",
        "loss_oscillation": "train-mode updates judged through eval-mode statistics overshoot",
    }),
    *_from("unshuffled_data", {
        "loss_oscillation": "the loss swings each time the data moves on to another class or range",
        "loss_spike": "the first batches of a new class or range give a loss far above the others",
        "loss_divergence": "each run of one class drives the model to predict only it, so the loss "
                           "climbs when the next class arrives",
        "softmax_overflow": "a long run of one class makes the model extremely confident, so the next "
                            "class gets logits beyond softmax's range",
        "loss_plateau": "the model forgets each class as the next one arrives, so the loss stops "
                        "falling overall",
        "chance_level_loss": "batches of one class teach the model to track the order, not the inputs",
        "overfitting": "the model fits the recent class runs rather than the whole distribution",
        "validation_anomaly": "the training loss tracks the class order while validation measures the "
                              "whole data",
    }),
    *_from("stale_gradients", {
        "exploding_gradients": "every step adds the new gradient to all the previous ones, so the "
                               "gradient grows with the step count",
        "learning_rate_too_high": "the summed gradients make each update many times larger than the "
                                  "learning rate intends",
        "loss_divergence": "ever larger accumulated steps overshoot and the loss climbs",
        "loss_oscillation": "the accumulated gradient keeps pushing past the minimum, back and forth",
        "softmax_overflow": "the accumulated steps grow the weights until the logits leave softmax's range",
        "loss_spike": "an accumulated step far larger than intended throws the loss up",
        "dead_relu": "the oversized accumulated steps push many units negative for every input",
        "loss_plateau": "the accumulated steps keep overshooting, so the loss stops falling",
    }),
    *_from("frozen_parameters", {
        "loss_plateau": "parameters that never move limit how far the loss can fall",
        "chance_level_loss": "a head that never trains leaves the output at its random start",
        "learning_rate_too_low": "the frozen parameters do not move at all, which reads as a tiny step",
    }),
    *_from("bad_initialization", {
        "vanishing_gradients": "weights too small for the depth shrink the backward signal layer by layer",
        "exploding_gradients": "weights too large for the depth grow the backward signal layer by layer",
        "dead_relu": "an initial scale or bias that puts pre-activations below zero leaves units dead "
                     "from the start",
        "saturated_activations": "initial weights too large drive sigmoid/tanh into their flat tails",
        "softmax_overflow": "initial weights too large for the depth give logits beyond softmax's range",
        "learning_rate_too_high": "weights initialised far too small make every update large relative "
                                  "to them",
        "zero_gradients": "all-zero or constant weights make every unit compute the same thing, and no "
                          "signal flows back",
        "chance_level_loss": "a signal that collapses with depth leaves the output at the uniform guess",
        "loss_plateau": "a network that starts with collapsed or exploded activations learns slowly "
                        "if at all",
        "nan_loss": "activations that grow layer by layer overflow",
    }),
    # ---------------------------------------------------------------- settings
    *_from("learning_rate_too_high", {
        "exploding_gradients": "each step overshoots into steeper ground, so the gradient grows step "
                               "after step",
        "loss_divergence": "steps that overshoot the minimum land higher each time",
        "loss_oscillation": "each step jumps across the valley and back",
        "loss_spike": "one oversized step throws the weights into a region of high loss",
        "softmax_overflow": "the weights, and the logits with them, grow until softmax overflows",
        # a learning rate makes NaN by growing the weights, which mostly shows first as exploding
        # gradients, a climbing loss or overflowing logits; a NaN out of a calm run points at a
        # log, sqrt or division at zero instead. Only steps that change the weights by their own
        # size or more (ONLY_WHEN) overflow before anything else can be measured.
        "nan_loss": "steps as large as the weights themselves blow them up within a few updates, "
                    "and the loss overflows",
        "nonfinite_gradients": "steps as large as the weights themselves blow them up within a few "
                               "updates, and the gradients overflow",
        "dead_relu": "a large step pushes weights and biases so far that units are negative for every "
                     "input, and a dead unit gets no gradient to come back",
        "saturated_activations": "large steps grow the weights until sigmoid/tanh sit in their flat tails",
        "loss_plateau": "steps too large to settle bounce around the minimum instead of reaching it",
        "chance_level_loss": "the oversized steps wreck the network, and the output falls back to the "
                             "uniform guess",
    }),
    *_from("learning_rate_too_low", {
        "loss_plateau": "steps this small make no visible progress",
        "chance_level_loss": "steps this small never move the model off its initial uniform guess",
    }),
    *_from("over_regularization", {
        "loss_plateau": "the penalty pulls the weights to zero as fast as the data pushes them out",
        "chance_level_loss": "weights held near zero give near-constant outputs, the uniform guess",
        "vanishing_gradients": "weights shrunk towards zero pass back a shrinking gradient layer by layer",
        "learning_rate_too_high": "the decay removes a large fraction of every weight each step, which is "
                                  "a large update relative to the weights",
    }),
    # ---------------------------------------------------------------- mechanisms
    *_from("exploding_gradients", {
        "nan_loss": "gradients that keep growing make updates that overflow the weights",
        "nonfinite_gradients": "a gradient that keeps growing overflows",
        "loss_divergence": "ever larger updates overshoot, and the loss climbs",
        "loss_spike": "one very large gradient step throws the loss up",
        "loss_oscillation": "large gradient steps overshoot back and forth",
        "softmax_overflow": "huge updates grow the logits beyond softmax's range",
        "dead_relu": "a huge update pushes many units negative for every input",
        "saturated_activations": "huge updates drive sigmoid/tanh into their flat tails",
        "learning_rate_too_high": "huge gradients make huge updates at any learning rate",
    }),
    *_from("softmax_overflow", {
        "nan_loss": "softmax of logits beyond exp's range gives 0/0 or log(0)",
        "nonfinite_gradients": "the overflowed softmax backpropagates Inf or NaN",
        "zero_gradients": "a loss clamped at -ln(FLT_MIN) is flat there, so its gradient is exactly 0",
        "loss_plateau": "the loss pins at 87.3365 and cannot move",
        "loss_divergence": "the loss jumps up to the overflow value and stays there",
        "loss_spike": "a batch whose logits overflow gives a loss far above the others",
    }),
    *_from("nan_loss", {
        "nonfinite_gradients": "backpropagating a NaN loss makes every gradient NaN",
    }),
    *_from("nonfinite_gradients", {
        "nan_loss": "one update with a NaN gradient makes the weights NaN, and the next loss with them",
    }),
    *_from("nonfinite_inputs", {
        "nan_loss": "a NaN in the batch propagates through the forward pass into the loss",
        "nonfinite_gradients": "a NaN in the batch propagates into the gradients",
    }),
    *_from("dead_relu", {
        "chance_level_loss": "with the units dead the logits no longer depend on the input",
        "loss_plateau": "dead units neither contribute nor learn, so the loss stops falling",
        "vanishing_gradients": "dead units pass no gradient back to the layers before them",
        "zero_gradients": "with every unit of a layer dead no gradient flows at all",
        "learning_rate_too_low": "dead units receive no gradient, so the updates look tiny",
        "frozen_parameters": "the weights into dead units get no gradient and never move",
    }),
    *_from("saturated_activations", {
        "vanishing_gradients": "sigmoid/tanh at their bounds have a near-zero slope, so little "
                               "gradient passes back",
        "loss_plateau": "saturated units barely learn, so the loss stops falling",
        "chance_level_loss": "saturated units give the same output for every input",
        "learning_rate_too_low": "near-zero slopes give tiny gradients and tiny updates",
        "zero_gradients": "fully saturated units pass back gradients that round to zero",
    }),
    *_from("vanishing_gradients", {
        "loss_plateau": "the early layers barely learn, so the loss stalls",
        "chance_level_loss": "the early layers never learn features, so the output stays at the "
                             "uniform guess",
        "learning_rate_too_low": "tiny gradients give tiny updates at any learning rate",
    }),
    *_from("zero_gradients", {
        "loss_plateau": "with no gradient the weights never move",
        "chance_level_loss": "with no gradient the model keeps its initial guess",
        "frozen_parameters": "parameters with exactly zero gradient never move",
        "learning_rate_too_low": "zero gradients give zero updates",
    }),
    # ---------------------------------------------------------------- curve symptoms
    *_from("loss_divergence", {
        "nan_loss": "a loss that keeps climbing ends in overflow",
        "exploding_gradients": "the gradients of a loss that keeps climbing grow with it",
        "softmax_overflow": "as the loss climbs the logits grow with it, until softmax overflows",
    }),
    *_from("loss_spike", {
        "loss_divergence": "the update from a batch with a huge loss throws the weights far off, and the "
                           "loss climbs from there",
    }),
    *_from("chance_level_loss", {
        "loss_plateau": "a loss held at ln(C) is a loss that stopped falling",
    }),
    *_from("validation_anomaly", {
        "loss_plateau": "the training data differ from the validation data the model does learn, so the "
                        "training loss stays flat",
        "chance_level_loss": "the training targets carry no signal the validation data do, so the training "
                             "loss stays at the uniform guess",
    }),
]

READINGS = frozenset({
    ("chance_level_loss", "loss_plateau"),
    ("validation_anomaly", "loss_plateau"),
    ("validation_anomaly", "chance_level_loss"),
})
"""Links between two readings of one stretch of the loss curve, the first the more specific (a
plateau at ln(C) is the chance-level finding; a flat training loss beside a falling validation
loss is the validation anomaly). Their rules date the stretch differently (chance level waits
for the warm-up, the validation anomaly for three validation points), so these links hold
whatever the steps say."""

THROUGH_UPDATES = frozenset({
    "learning_rate_too_high", "learning_rate_too_low", "over_regularization", "stale_gradients",
})
"""Causes that act only through the optimizer's updates: nothing they produce can be in the
network before its first update."""

CAN_CAUSE: dict[str, dict[str, str]] = {}
"""cause -> {effect: how}: the links by cause."""
for _link in LINKS:
    CAN_CAUSE.setdefault(_link.cause, {})[_link.effect] = _link.how

UNBOUNDED_HEADS = ("linear", "relu", "tanh")

Evidence = dict[str, Any]


def _head_not_probabilities(ev: Evidence, _effect: Evidence) -> bool:
    """An unbounded head under a loss that expects probabilities (it normalises them or takes
    their log): a ReLU head whose outputs all reach 0 gives 0/0 there."""
    return ev.get("loss_expects", "probabilities") == "probabilities" and \
        ev.get("output_activation", "linear") in UNBOUNDED_HEADS


def _loss_unbounded(ev: Evidence, _effect: Evidence) -> bool:
    """Raw outputs under a loss that expects log-probabilities (NLL of logits): the loss falls
    without bound as one output grows."""
    return ev.get("loss_expects", "log_probabilities") == "log_probabilities" and \
        ev.get("output_activation", "linear") in UNBOUNDED_HEADS


def _head_passes_no_gradient(ev: Evidence, _effect: Evidence) -> bool:
    """A one-unit softmax (constant 1) or a ReLU head (0 and flat once its units go negative)."""
    act, units = ev.get("output_activation"), ev.get("output_units")
    return act is None or (act == "softmax" and units == 1) or act == "relu"


def _inputs_tiny(ev: Evidence, _effect: Evidence) -> bool:
    """Inputs far below unit scale (large ones give large gradients, never tiny updates)."""
    mean, std = ev.get("input_mean"), ev.get("input_std")
    return mean is None or std is None or abs(mean) + std < 1.0


def _steps_as_large_as_the_weights(ev: Evidence, _effect: Evidence) -> bool:
    """An update of at least the weights' own size per step (ratio or norm change >= 1); a
    finding that does not say is not taken for one."""
    size = ev.get("update_to_weight_ratio", ev.get("weight_norm_change_per_step"))
    return size is not None and size >= 1.0


def _inputs_account_for_the_step(ev: Evidence, effect: Evidence) -> bool:
    """Dose: can inputs of this scale make an update this large at a sane learning rate?

    Inputs of root-mean-square size s multiply the first layer's gradient by s, and the error
    they drive through the network by up to s again, so they raise the update/weight ratio
    by at most s**2. A ratio that is still above the too-high threshold once s**2 is divided
    out would be too high on normalised inputs as well: the learning rate is too high on its
    own account, not because of the inputs. Evidence that does not say keeps the link."""
    mean, std = ev.get("input_mean"), ev.get("input_std")
    ratio, threshold = effect.get("update_to_weight_ratio"), effect.get("threshold")
    if mean is None or std is None or ratio is None or threshold is None:
        return True
    return ratio / max(mean * mean + std * std, 1.0) <= threshold


def _lr_can_overshoot(ev: Evidence, _effect: Evidence) -> bool:
    """Dose: is the learning rate itself large enough to be what blows the gradient up?

    The update/weight ratio is the learning rate times the gradient/weight ratio. A gradient
    no larger than the weights (a healthy network's is far smaller) needs a learning rate of
    at least the too-high threshold to make a too-high step; under a smaller rate a too-high
    ratio means the gradient itself is orders of magnitude above the weights, and what grew
    it (depth, recurrence, input or target scale) is the cause of the large steps, not the
    rate. A finding that does not say (no lr recorded) keeps the link."""
    lr, threshold = ev.get("lr"), ev.get("threshold")
    return lr is None or threshold is None or lr >= threshold


ONLY_WHEN: dict[tuple[str, str], Callable[[Evidence, Evidence], bool]] = {
    ("learning_rate_too_high", "nan_loss"): _steps_as_large_as_the_weights,
    ("learning_rate_too_high", "nonfinite_gradients"): _steps_as_large_as_the_weights,
    ("learning_rate_too_high", "exploding_gradients"): _lr_can_overshoot,
    ("unnormalized_inputs", "learning_rate_too_low"): _inputs_tiny,
    ("unnormalized_inputs", "learning_rate_too_high"): _inputs_account_for_the_step,
    ("output_activation_mismatch", "nan_loss"): _head_not_probabilities,
    ("output_activation_mismatch", "softmax_overflow"): _loss_unbounded,
    ("output_activation_mismatch", "exploding_gradients"): _loss_unbounded,
    ("output_activation_mismatch", "zero_gradients"): _head_passes_no_gradient,
}
"""Links that hold only for some forms or sizes of the cause, told by the cause's evidence and
the effect's (cause evidence, effect evidence) -> holds. The output mismatch has several forms,
only some of which can produce NaN, runaway logits or zero gradients; and a cause explains an
effect only as far as its size can (the dose: inputs of scale s raise the update ratio by at
most s**2; a learning rate under the too-high threshold overshoots only with a gradient far
larger than the weights). Evidence that does not say (a finding built without it) keeps the
link."""


WITHIN_STEPS: dict[tuple[str, str], int] = {
    ("learning_rate_too_high", "nan_loss"): 20,
    ("learning_rate_too_high", "nonfinite_gradients"): 20,
}
"""Links that act at once or not at all: the effect must begin within this many steps of the
cause (a blow-up from oversized steps comes within a few updates; a NaN after a long calm run
is a log, sqrt or division at zero reached at last)."""

DATED_BY_EFFECT = frozenset({
    ("learning_rate_too_low", "loss_plateau"),
    ("learning_rate_too_low", "chance_level_loss"),
})
"""Links whose cause's rule needs the effect before it can fire: tiny updates are a fault only
while the loss is not falling, so ``learning_rate_too_low`` is dated at or after the stall it
explains, and later still when the update ratio sinks under the threshold only once the stall
has shrunk the gradients (an unchanged learning rate, too small from the first step). Its
date says nothing about which came first, so these links hold whatever the steps say."""

THROUGH_STEP_SIZE = frozenset({
    *(("unnormalized_inputs", e) for e in ("exploding_gradients", "dead_relu", "loss_divergence",
                                             "loss_oscillation", "loss_plateau", "nan_loss")),
    *(("unscaled_targets", e) for e in ("exploding_gradients", "loss_divergence", "nan_loss",
                                          "nonfinite_gradients", "loss_oscillation", "dead_relu")),
})
"""Links by which a set-up fault acts only through the size of the updates: input or target
scale sets how large each step is relative to the weights (overshooting, blowing up, crawling
along the small directions). That size is measured (:data:`STEP_SIZE`); when the set-up fault
cannot account for the measured size (the model does not link the fault to that finding, for
the size of both: :data:`ONLY_WHEN`), the step size is out of range on its own, and these
links are screened off by it (:func:`lossprobe.rootcause._screened`); the set-up fault keeps
what it does directly (saturating units, overflowing logits)."""

STEP_SIZE = frozenset({"learning_rate_too_high", "learning_rate_too_low"})
"""The findings that measure the update/weight ratio itself: what :data:`THROUGH_STEP_SIZE`
links act through."""


def partial_fault(code: str, ev: Evidence) -> bool:
    """A set-up fault that takes only part of the model out of training: some, not all, of its
    parameter tensors frozen. The rest still fit the data, so such a fault limits how far the
    loss can fall; between it and a fault in what every gradient is computed from (the loss,
    the head, the targets, the inputs) for a symptom both explain and the steps cannot order,
    the whole-model fault is the likelier. A count that is not known is not taken for part."""
    if code != "frozen_parameters":
        return False
    frozen, total = ev.get("n_frozen"), ev.get("n_parameters")
    return frozen is not None and total is not None and frozen < total


def link_holds(cause: str, effect: str, evidence: Evidence, effect_evidence: Evidence | None = None) -> bool:
    """Whether the model links ``cause`` to ``effect`` for a cause finding with this evidence
    (and an effect finding with ``effect_evidence``)."""
    if effect not in CAN_CAUSE.get(cause, {}):
        return False
    test = ONLY_WHEN.get((cause, effect))
    return test is None or test(evidence, effect_evidence or {})


CONFIRM: dict[str, str] = {
    "output_activation_mismatch": "change the output activation to what the loss expects",
    "double_softmax": "remove the final softmax",
    "label_problem": "print the unique targets against the output width",
    "unnormalized_inputs": "standardise the inputs",
    "unscaled_targets": "standardise the targets",
    "excessive_dropout": "set the dropout rate to 0.1-0.5",
    "frozen_batchnorm": "keep the model in train mode while training",
    "unshuffled_data": "shuffle the training data",
    "stale_gradients": "clear the gradients every step",
    "frozen_parameters": "give every parameter to the optimizer and check that each gets a gradient",
    "bad_initialization": "re-initialise with He/Glorot scaling",
    "learning_rate_too_high": "lower the learning rate 10x",
    "learning_rate_too_low": "raise the learning rate 10x",
    "over_regularization": "lower the weight decay 10x",
    "exploding_gradients": "clip the gradient norm",
    "softmax_overflow": "compute the loss with a fused log-softmax cross-entropy",
    "nonfinite_inputs": "drop the batches with NaN/Inf inputs",
    "nan_loss": "add an epsilon to the loss's logarithms and divisions",
    "nonfinite_gradients": "add an epsilon where the named layer takes a square root or a logarithm",
    "dead_relu": "switch to LeakyReLU",
    "saturated_activations": "switch the hidden activations to ReLU",
    "vanishing_gradients": "add normalisation or skip connections",
    "zero_gradients": "compute the loss from the model's raw output",
    "loss_divergence": "restart from the last good checkpoint with a smaller step",
    "chance_level_loss": "overfit one small batch",
    "loss_spike": "leave out the batch at the spike",
    "validation_anomaly": "train and validate on the same few batches",
}
"""For a cause, the change that tests it: apply it and see whether its consequences go. Used
to say what would decide between two causes the evidence does not order."""


def _check() -> None:
    """Every code named here is in the catalog, links do not repeat, and every cause can be
    tested (a typo here would silently drop a link)."""
    for link in LINKS:
        for code in (link.cause, link.effect):
            if code not in CATALOG:
                raise KeyError(f"causes.py: unknown code {code!r}")
    pairs = [(link.cause, link.effect) for link in LINKS]
    if len(pairs) != len(set(pairs)):
        raise ValueError("causes.py: a link is listed twice")
    for code in (*CAN_CAUSE, *SETUP, *CONFIRM, *THROUGH_UPDATES, *SETTINGS, *SYMPTOMS, *STEP_SIZE):
        if code not in CATALOG:
            raise KeyError(f"causes.py: unknown code {code!r}")
    tables = READINGS | set(ONLY_WHEN) | DATED_BY_EFFECT | THROUGH_STEP_SIZE
    if not tables <= set(pairs):
        raise KeyError(f"causes.py: a READINGS, ONLY_WHEN, DATED_BY_EFFECT or THROUGH_STEP_SIZE pair not in "
                       f"LINKS: {sorted(tables - set(pairs))}")
    missing = set(CAN_CAUSE) - set(CONFIRM)
    if missing:
        raise KeyError(f"causes.py: no CONFIRM entry for {sorted(missing)}")


_check()
