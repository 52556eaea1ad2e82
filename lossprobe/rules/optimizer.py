"""Optimizer rules: learning_rate_too_high, learning_rate_too_low, over_regularization.

The update/weight ratio |dW|/|W| of weight tensors is ~1e-3 in healthy training
(Karpathy's rule of thumb; DeepDiagnosis flags outside [1e-5, 1e-1]).
"""
from __future__ import annotations

import math

import numpy as np

from ..findings import Detection
from . import rule
from .curves import chance_level_loss, is_converged, learning_well, loss_trend, measured_losses
from .gradients import _weight_columns
from .stats import along, row_median, row_nanmedian, theil_sen, thirds

# The optimizer rules judge "is the loss still falling" on the last 30 losses rather than
# the curve rules' 60: their main evidence (the update/weight ratio, the weight norms) is
# strong on its own, the loss only gates it, and 30 points are plenty for a Theil-Sen
# slope (its z-score is against the residuals' own robust spread).
RECENT = 30


def _stalled(h, cfg):
    """(stalled, level, initial, rel_change, first step of the window) over the last RECENT
    losses; None during warm-up. Stalled: no significant fall of at least 1%."""
    return h.memo(("stalled", cfg.warmup_steps, cfg.trend_z), lambda: _stalled_now(h, cfg))


def _stalled_now(h, cfg):
    m = measured_losses(h)
    if m.loss.size < max(cfg.warmup_steps, 8) or not np.isfinite(h.initial_loss):
        return None
    y, t = m.loss[-RECENT:], m.t[-RECENT:]
    start, level = thirds(y)
    rel = (level - start) / abs(start) if start else 0.0
    _, z = theil_sen(t, y)
    falling = z <= -cfg.trend_z and rel < -0.01
    return (not falling), level, float(h.initial_loss), rel, int(t[0])


def _update_ratio(h, live_only: bool = False):
    """Per sampled step: the median update/weight ratio over weight tensors.

    ``live_only``: only tensors that are trained (in the optimizer, when known) and got a
    non-zero gradient on that step; a ratio of exactly 0 there means the update fell below
    fp32 resolution of the weight, i.e. it is tiny, not absent.
    """
    u = h.matrix("update_ratios")
    if u.size == 0:
        return None, None
    cols = _weight_columns(h)
    u = u[:, cols]
    steps = h.steps()
    held = None   # which of the columns the optimizer holds, when known (live_only)
    if live_only:
        live = h.matrix("param_grad_norms")[:, cols] > 0   # NaN (not measured) compares False
        if h.facts.in_optimizer is not None:
            held = np.asarray(h.facts.in_optimizer, bool)[cols]
            live &= held[None, :]
        u = np.where(live, u, np.nan)
    sampled = along(np.isfinite(u), "any", 1)
    if sampled.sum() < 3:
        return None, None
    rows = np.flatnonzero(sampled)
    r = h.per_record(("update_ratio", live_only), rows, lambda start: row_nanmedian(u[rows[start:]]),
                     depends=None if held is None else held.tobytes())
    return r, steps[rows]


def _norm_drift(h):
    """Per interval between sampled steps: |d log ||W||| per step, median over weight tensors.

    Since | ||W_b|| - ||W_a|| | <= ||W_b - W_a|| <= sum of the step updates, this is a lower
    bound on the mean update/weight ratio over the interval (exact when the updates keep one
    direction). It sees what a one-step ratio can miss: an adaptive optimizer with a huge lr
    inflates the weights, after which each step looks small next to them.
    """
    p = h.matrix("param_norms")
    if p.size == 0:
        return None, None
    cols = _weight_columns(h)
    p = p[:, cols]
    rows = np.flatnonzero(along(np.isfinite(p) & (p > 0), "all", 1))
    if rows.size < 2:
        return None, None
    steps = h.steps()[rows]

    def drift(start: int) -> np.ndarray:   # the intervals that end at rows[start + 1:]
        dt = np.diff(steps[start:]).astype(float)
        d = np.abs(np.diff(np.log(p[rows[start:]]), axis=0)) / np.maximum(dt, 1.0)[:, None]
        return row_median(d)
    return h.per_record("norm_drift", rows[1:], drift), steps[1:]


@rule("learning_rate_too_high")
def learning_rate_too_high(h, cfg):
    """Weights that move by more than ``update_ratio_high`` (0.1) of their size per step.

    Two measurements of the same quantity: the update/weight ratio of a sampled step
    (median over weight tensors, over the last 10 samples: a sustained regime), and the
    per-step drift of the weight norms over a whole sampling interval (a lower bound on
    the mean ratio over those steps, see :func:`_norm_drift`). Healthy training sits near
    1e-3; 0.1 means a tenth of every weight replaced each step, for ten steps in a row in
    the second case, which no optimizer setting that converges does.
    """
    if h.n_steps < cfg.warmup_steps:
        return None
    thr = cfg.update_ratio_high
    r, t = _update_ratio(h)
    d, td = _norm_drift(h)
    evidence = {"threshold": thr, "healthy_around": 1e-3, "lr": _lr(h)}
    onset = None
    if r is not None and float(np.median(r[-10:])) > thr:
        evidence["update_to_weight_ratio"] = float(np.median(r[-10:]))
        onset = int(t[int(np.argmax(r > thr))])
    if d is not None and (d > thr).any():
        k = int(np.argmax(d > thr))
        evidence["weight_norm_change_per_step"] = float(d[k])
        evidence["weight_norm_change_at_step"] = int(td[k])
        start = int(td[k - 1]) if k > 0 else int(h.first_step or 0)
        onset = start if onset is None else min(onset, start)
        if r is not None:
            evidence.setdefault("update_to_weight_ratio", float(np.max(r)))
    if onset is None:
        return None
    symptoms = _too_high_symptoms(h, cfg)
    evidence["symptoms"] = symptoms or "none: the loss is falling"
    # the ratio alone is advice: some healthy runs (small nets, Adam early on, fine-tuning
    # heads) move their weights fast for a while and still learn well
    return Detection("learning_rate_too_high", onset, evidence, severity=None if symptoms else "info",
                     message="" if symptoms else "The loss is still falling: advice only, not a fault yet.")


def _too_high_symptoms(h, cfg) -> list[str]:
    """What in the run confirms that steps are too large: the loss does not fall, climbed well
    above its best, or turned non-finite; the gradient norm grew by an order of magnitude."""
    out = []
    loss, seen = h.series("loss"), h.series("loss_seen") > 0
    if (seen & ~np.isfinite(loss)).any():
        out.append("non-finite loss")
    st = _stalled(h, cfg)
    if st is not None and st[0] and not learning_well(h, cfg):
        out.append("loss not falling")
    if st is not None and math.isfinite(h.min_loss) and st[1] > h.min_loss + 0.25 * abs(st[2] - h.min_loss) \
            and st[1] > 1.25 * h.min_loss:
        out.append("loss well above its best")
    g = h.series("grad_norm")
    g = g[np.isfinite(g) & (g > 0)]
    if g.size >= 8 and float(np.median(g[-4:])) > 10 * float(np.median(g[:4])):
        out.append("gradient norm grew 10x")
    return out


CHANCE_FACTOR = 10.0


@rule("learning_rate_too_low")
def learning_rate_too_low(h, cfg):
    """Trained weights that move by less than ``update_ratio_low`` (1e-5) of their size per
    step while the loss is not falling. Only tensors that got a gradient count: a dead or
    frozen part of the model is another diagnosis, not a small learning rate."""
    st = _stalled(h, cfg)
    if st is None or not st[0]:
        return None
    tr = loss_trend(h, cfg)
    if tr is not None and is_converged(tr, h, cfg):
        return None
    r, t = _update_ratio(h, live_only=True)
    if r is None:
        return None
    # at chance level nothing has been learned: updates 10x under the healthy ~1e-3 then
    # are a likely reason (elsewhere only 100x under it is)
    low_ratio = cfg.update_ratio_low * (CHANCE_FACTOR if chance_level_loss(h, cfg) is not None else 1)
    med = float(np.median(r[-10:]))
    if not med < low_ratio:
        return None
    low = r < low_ratio
    # onset: the start of the current run of low ratios
    k = int(np.flatnonzero(~low)[-1]) + 1 if (~low).any() else 0
    return Detection("learning_rate_too_low", int(t[min(k, len(t) - 1)]), {
        "update_to_weight_ratio": med, "threshold": low_ratio, "healthy_around": 1e-3,
        "lr": _lr(h), "loss_change_over_window": st[3]})


def _lr(h):
    lr = h.series("lr")
    lr = lr[np.isfinite(lr)]
    return float(lr[-1]) if lr.size else None


@rule("over_regularization")
def over_regularization(h, cfg):
    """Weights shrank by >= ``shrink_fraction`` (30%) of their starting norm while the loss has
    stopped falling above ``plateau_high`` (30%) of its initial value: the penalty, not the
    data, is deciding where the weights go. (Healthy training grows or keeps the weight norms;
    plain SGD without decay cannot shrink them by a third while the loss is stuck.)"""
    st = _stalled(h, cfg)
    if st is None or not st[0]:
        return None
    stalled, level, initial, rel, start_step = st
    if not abs(level) > cfg.plateau_high * abs(initial):
        return None
    p = h.matrix("param_norms")
    cols = _weight_columns(h)
    if p.size == 0:
        return None
    rows = np.flatnonzero(along(np.isfinite(p[:, cols]), "all", 1))
    if rows.size == 0 or not np.isfinite(h.first_param_norms[cols]).all():
        return None
    start = float(np.sqrt(np.sum(h.first_param_norms[cols] ** 2)))
    now = float(np.sqrt(np.sum(p[rows[-1], cols] ** 2)))
    if start <= 0 or now / start > 1 - cfg.shrink_fraction:
        return None
    return Detection("over_regularization", start_step, {
        "weight_norm_start": start, "weight_norm_now": now, "shrunk_by": 1 - now / start,
        "loss": level, "initial_loss": initial})
