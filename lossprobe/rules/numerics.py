"""NaN/Inf and overflow: nan_loss, nonfinite_gradients, nonfinite_inputs, softmax_overflow."""
from __future__ import annotations

import math

import numpy as np

from ..findings import Detection
from . import rule
from .stats import along, finite, longest_run

# exp(x) overflows fp32 above ln(FLT_MAX) ~ 88.7: logits that large saturate softmax to exact 0/1.
FP32_EXP_LIMIT = 88.0
# a logit margin of -ln(FLT_MIN) = 87.3365 puts a class's fp32 softmax at exactly 0 (every CPU);
# the backends measure the share of rows with such a margin (softmax_saturation: to the
# runner-up, the whole row one-hot; softmax_underflow: to the lowest logit, some class at 0)


@rule("nan_loss")
def nan_loss(h, cfg):
    loss, seen, steps = h.series("loss"), h.series("loss_seen") > 0, h.steps()
    bad = seen & ~np.isfinite(loss)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    good = finite(loss[:i][seen[:i]])
    return Detection("nan_loss", int(steps[i]), {
        "value": str(loss[i]), "nonfinite_steps": int(bad.sum()),
        "last_finite_loss": float(good[-1]) if good.size else None,
    })


@rule("nonfinite_gradients")
def nonfinite_gradients(h, cfg):
    g = h.matrix("param_grad_norms")
    # no gradient, or one the backend cannot read (sparse, DTensor, traced): not a fault
    absent = h.matrix("param_grad_missing") | h.matrix("param_grad_unmeasured")
    if g.size == 0:
        return None
    bad = ~np.isfinite(g) & ~absent
    rows = along(bad, "any", 1)
    if not rows.any():
        return None
    # An isolated non-finite step after which training goes on finite is what AMP's
    # loss scaler produces (it skips that step): not a fault. Require it on two steps,
    # or a loss that turns non-finite from there on.
    first = int(np.argmax(rows))
    loss, seen = h.series("loss"), h.series("loss_seen") > 0
    loss_broke = bool((seen[first:] & ~np.isfinite(loss[first:])).any())
    if rows.sum() < 2 and not loss_broke:
        return None
    i = int(np.argmax(rows))
    names = [h.layout.params[j] for j in np.flatnonzero(bad[i])]
    return Detection("nonfinite_gradients", int(h.steps()[i]), {
        "first_layer": names[0], "layers": names[:8], "n_layers": len(names),
        "nonfinite_steps": int(rows.sum()),
    }, message=f"First layer with non-finite gradient: {names[0]}.")


@rule("nonfinite_inputs")
def nonfinite_inputs(h, cfg):
    x = h.series("input_nonfinite")
    bad = x > 0   # NaN (not measured) compares False
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return Detection("nonfinite_inputs", int(h.steps()[i]), {
        "nonfinite_values": float(x[i]), "batches_affected": int(bad.sum())})


@rule("softmax_overflow")
def softmax_overflow(h, cfg):
    if h.facts.loss_kind == "mse":
        return None  # a regression has no softmax: a squared error passing through 87.3 is no pin
    loss, seen, steps = h.series("loss"), h.series("loss_seen") > 0, h.steps()
    target = cfg.overflow_loss
    pinned = seen & (np.abs(loss - target) <= cfg.overflow_tolerance)
    # pinned on at least 3 measured steps in a row: a loss that sits at -ln(FLT_MIN), not one
    # that passes through it
    run, _ = longest_run(pinned[seen])
    if run >= 3:
        i = int(np.argmax(pinned))
        return Detection("softmax_overflow", int(steps[i]), {
            "loss": float(loss[i]), "expected_pin": round(target, 4), "pinned_steps": int(pinned.sum())})
    big = h.series("logit_abs_max")
    sat = np.fmax(h.series("softmax_saturation"), h.series("softmax_underflow"))  # rows with exact zeros
    over = (big >= FP32_EXP_LIMIT) & (sat >= 0.5)   # NaN (not measured) compares False
    if over.sum() >= 3:
        i = int(np.argmax(over))
        return Detection("softmax_overflow", int(steps[i]), {
            "max_abs_logit": float(big[i]), "saturated_rows": float(sat[i]),
            "logit_limit": FP32_EXP_LIMIT, "overflow_steps": int(over.sum())})
    return None
