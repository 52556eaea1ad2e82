"""Set-up rules: mistakes in how the model, the loss and the loop fit together.

These are decided from what the backend learned about the run (``history.facts``: the
output's last activation and width, the loss and whether it takes logits, the dropout
rates) and from a few direct measurements (targets against outputs, gradients carried
over between optimizer steps), so most of them can speak after the first flush:
output_activation_mismatch, excessive_dropout, stale_gradients, unscaled_targets.
"""
from __future__ import annotations

import math

import numpy as np

from ..findings import Detection
from . import rule
from .curves import loss_trend


def expected_output(facts) -> str:
    """What the loss expects the model's output to be: "logits", "probabilities" (sigmoid or
    softmax), "log_probabilities", or "" when the loss takes any real values (regression) or
    is unknown."""
    kind, name = facts.loss_kind, facts.loss_name.lower()
    if kind in ("cross_entropy", "bce_logits"):
        return "logits"
    if kind == "bce":
        return "probabilities"
    if kind == "nll":
        # torch's NLLLoss takes log-probabilities; a Keras cross-entropy with
        # from_logits=False takes probabilities (also reported as "nll")
        return "log_probabilities" if "nll" in name and "crossentropy" not in name else "probabilities"
    return ""


def received_activation(facts) -> str:
    """The last activation on what the loss receives: the loss input's own when the backend
    saw it (a program may transform the output on the way: ``log(softmax)``, a sigmoid
    inside the loss call), else the model output's."""
    return facts.loss_input_activation or facts.output_activation


def mismatch(facts) -> tuple[str, str] | None:
    """(form, what to do) when the output's last activation does not fit the loss."""
    act, units = received_activation(facts), int(facts.output_units or facts.n_classes or 0)
    if not act:
        return None
    expects = expected_output(facts)
    if act == "softmax" and units == 1:
        return ("softmax on a one-unit output: it is always exactly 1",
                "use sigmoid on the one unit (or no activation and a logits loss)")
    if act == "softmax" and facts.loss_kind in ("bce", "bce_logits"):
        return ("softmax outputs under a binary cross-entropy",
                "use sigmoid outputs for binary/multi-label targets, or categorical cross-entropy for exclusive classes")
    if act == "sigmoid" and units >= 2 and facts.loss_kind in ("cross_entropy", "nll"):
        return ("sigmoid outputs under a categorical cross-entropy",
                "use softmax (or no activation with a logits loss) for exclusive classes")
    if act == "sigmoid" and expects == "logits":
        return ("sigmoid before a loss that applies its own sigmoid/softmax",
                "remove the final sigmoid, or use the loss that takes probabilities")
    if act in ("relu", "tanh") and expects == "logits":
        return (f"{act} on the logits: scores are cut at 0 (relu) or squeezed into [-1, 1] (tanh), so "
                "the loss cannot reach confident predictions",
                "leave the last layer linear: the loss applies its own softmax/sigmoid")
    if act in ("linear", "relu", "tanh", "log_softmax", "log") and expects == "probabilities":
        return (f"{act} outputs under a loss that expects probabilities",
                "end with sigmoid/softmax, or tell the loss it receives logits (from_logits=True, BCEWithLogitsLoss)")
    if act in ("linear", "relu", "tanh", "softmax", "sigmoid") and expects == "log_probabilities":
        return (f"{act} outputs under a loss that expects log-probabilities (NLLLoss)",
                "end with log_softmax, or use CrossEntropyLoss on the raw outputs")
    return None


@rule("output_activation_mismatch")
def output_activation_mismatch(h, cfg):
    """The output's last activation against what the loss expects, from the first step on.

    A softmax before a loss that applies softmax itself is reported as ``double_softmax``
    (its own code, kept for that form)."""
    f = h.facts
    found = mismatch(f)
    if found is None or h.first_step is None:
        return None
    form, fix = found
    return Detection("output_activation_mismatch", int(h.first_step), {
        "form": form, "output_layer": f.output_layer or "unknown", "output_activation": received_activation(f),
        "output_units": int(f.output_units or f.n_classes or 0), "loss": f.loss_name or f.loss_kind,
        "loss_expects": expected_output(f) or "any values"},
        message=f"{form[0].upper() + form[1:]}: {fix}.")


# A drop rate from which a dropout layer is taken to starve the layers after it: Srivastava
# et al. use 0.5 for hidden units and 0.2 for inputs; 0.8 keeps one unit in five.
DROPOUT_HIGH = 0.8


@rule("excessive_dropout")
def excessive_dropout(h, cfg):
    """A dropout layer with a drop rate >= 0.8 while the loss stays high. With the loss falling
    well the rate is a choice that works, not a fault (wide layers tolerate a lot)."""
    rates = [(name, float(p)) for name, p in h.facts.dropout_rates if float(p) >= DROPOUT_HIGH]
    if not rates:
        return None
    tr = loss_trend(h, cfg)
    from .curves import _reference_loss, learning_well
    ref = _reference_loss(h)
    if tr is None or not math.isfinite(ref) or ref <= 0 or learning_well(h, cfg):
        return None
    name, p = max(rates, key=lambda r: r[1])
    return Detection("excessive_dropout", int(h.first_step or 0), {
        "layer": name, "drop_rate": p, "keeps": round(1 - p, 3), "loss": tr.level, "reference_loss": ref,
        "layers_at_or_above": [n for n, _ in rates][:8]},
        message=f"{name} drops {p:.0%} of its inputs; a keep-probability passed as a drop rate?")


# grad_carried near 1: the gradient already in .grad when a step's first backward starts is
# the whole previous gradient, i.e. nothing cleared it; 0.5 separates that from cleared (0).
CARRIED = 0.5


@rule("stale_gradients")
def stale_gradients(h, cfg):
    """Gradients carried over optimizer steps (``zero_grad()`` missing) on most measured steps."""
    c = h.series("grad_carried")
    ok = np.isfinite(c)
    if ok.sum() < 3:
        return None
    vals = c[ok]
    carried = vals >= CARRIED
    if float(np.mean(carried[-10:])) < 0.8:
        return None
    return Detection("stale_gradients", int(h.steps()[ok][int(np.argmax(carried))]), {
        "carried_share_of_gradient": float(np.median(vals[-10:])), "steps_measured": int(ok.sum())},
        message="Nothing clears the gradients between optimizer steps.")


# Targets whose typical magnitude (|mean| + std) is this many times the outputs' at the start
# of training, and at least this large in absolute terms (a target of 5 vs outputs of 0.01
# is an ordinary start, and the output layer's bias catches up in a few steps).
TARGET_SCALE_RATIO = 1e2
TARGET_SCALE_ABS = 1e2


@rule("unscaled_targets")
def unscaled_targets(h, cfg):
    """Regression targets orders of magnitude above the outputs at the first measured step."""
    if h.facts.loss_kind != "mse":
        return None
    tm, ts = h.series("target_mean"), h.series("target_std")
    om, os_ = h.series("output_mean"), h.series("logit_std")
    ok = np.isfinite(tm) & np.isfinite(ts) & np.isfinite(om) & np.isfinite(os_)
    if not ok.any():
        return None
    i = int(np.flatnonzero(ok)[0])
    target = abs(float(tm[i])) + float(ts[i])
    output = abs(float(om[i])) + float(os_[i])
    if target < TARGET_SCALE_ABS or target < TARGET_SCALE_RATIO * max(output, 1e-12):
        return None
    return Detection("unscaled_targets", int(h.steps()[i]), {
        "target_mean": float(tm[i]), "target_std": float(ts[i]), "output_mean": float(om[i]),
        "output_std": float(os_[i]), "ratio": target / max(output, 1e-12)})
