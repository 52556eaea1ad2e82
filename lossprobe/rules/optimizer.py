"""Optimizer rules: learning_rate_too_high, learning_rate_too_low, over_regularization.

The update/weight ratio |dW|/|W| of weight tensors is ~1e-3 in healthy training
(Karpathy's rule of thumb; DeepDiagnosis flags outside [1e-5, 1e-1]).
"""
from __future__ import annotations

import numpy as np

from ..findings import Detection
from . import rule
from .curves import is_converged, loss_trend
from .gradients import _weight_columns


def _update_ratio(h):
    u = h.matrix("update_ratios")
    if u.size == 0:
        return None, None
    cols = _weight_columns(h)
    u = u[:, cols]
    rows = np.isfinite(u).all(axis=1)
    if rows.sum() < 3:
        return None, None
    per_step = np.median(u[rows], axis=1)
    return per_step, h.steps()[rows]


@rule("learning_rate_too_high")
def learning_rate_too_high(h, cfg):
    if h.n_steps < cfg.warmup_steps:
        return None
    r, t = _update_ratio(h)
    if r is None:
        return None
    recent = r[-10:]
    med = float(np.median(recent))
    if med <= cfg.update_ratio_high:
        return None
    return Detection("learning_rate_too_high", int(t[int(np.argmax(r > cfg.update_ratio_high))]), {
        "update_to_weight_ratio": med, "threshold": cfg.update_ratio_high, "healthy_around": 1e-3,
        "lr": _lr(h)})


@rule("learning_rate_too_low")
def learning_rate_too_low(h, cfg):
    tr = loss_trend(h, cfg)
    if tr is None or tr.falling or is_converged(tr, h, cfg):
        return None
    r, t = _update_ratio(h)
    if r is None:
        return None
    med = float(np.median(r[-10:]))
    if not (0 < med < cfg.update_ratio_low):
        return None
    return Detection("learning_rate_too_low", int(t[0]), {
        "update_to_weight_ratio": med, "threshold": cfg.update_ratio_low, "healthy_around": 1e-3,
        "lr": _lr(h), "loss_change_over_window": tr.rel_change})


def _lr(h):
    lr = h.series("lr")
    lr = lr[np.isfinite(lr)]
    return float(lr[-1]) if lr.size else None


@rule("over_regularization")
def over_regularization(h, cfg):
    tr = loss_trend(h, cfg)
    if tr is None or tr.falling or not tr.high(cfg.plateau_high):
        return None
    p = h.matrix("param_norms")
    cols = _weight_columns(h)
    if p.size == 0:
        return None
    rows = np.flatnonzero(np.isfinite(p[:, cols]).all(axis=1))
    if rows.size == 0 or not np.isfinite(h.first_param_norms[cols]).all():
        return None
    start = float(np.sqrt(np.sum(h.first_param_norms[cols] ** 2)))
    now = float(np.sqrt(np.sum(p[rows[-1], cols] ** 2)))
    if start <= 0 or now / start > 1 - cfg.shrink_fraction:
        return None
    return Detection("over_regularization", int(tr.steps[0]), {
        "weight_norm_start": start, "weight_norm_now": now, "shrunk_by": 1 - now / start,
        "loss": tr.level, "initial_loss": tr.initial})
