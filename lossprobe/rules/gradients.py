"""Gradient health: exploding_gradients, vanishing_gradients, frozen_parameters, zero_gradients."""
from __future__ import annotations

import numpy as np

from ..findings import Detection
from . import rule
from .stats import along, finite, longest_run, median, row_median


def _weight_columns(h) -> np.ndarray:
    w = np.asarray(h.layout.is_weight, bool)
    if w.size != len(h.layout.params) or not w.any():
        w = np.ones(len(h.layout.params), bool)
    return np.flatnonzero(w)


@rule("exploding_gradients")
def exploding_gradients(h, cfg):
    g = h.series("grad_norm")
    steps = h.steps()
    ok = np.isfinite(g) & (g > 0)
    if ok.sum() < 4:
        return None
    gs, st = g[ok], steps[ok]
    early = float(median(gs[: max(3, min(10, gs.size // 4))]))
    recent = float(median(gs[-3:]))
    last_ok = int(np.flatnonzero(ok)[-1])
    if last_ok < g.size - 1 and not np.isfinite(g[last_ok + 1:]).any():
        # the norm overflowed: judge the climb by its last finite values
        recent = float(np.max(gs[-3:]))
    ratio = recent / early if early > 0 else np.inf
    if ratio >= cfg.explode_factor:
        # when did it begin: first step the norm left the early band by 10x
        onset = int(st[int(np.argmax(gs >= 10 * early))])
        return Detection("exploding_gradients", onset, {
            "grad_norm_early": early, "grad_norm_recent": recent, "growth": ratio})
    # a norm already past explode_abs and still climbing an order of magnitude
    if recent >= cfg.explode_abs and ratio >= 10:
        onset = int(st[int(np.argmax(gs >= 10 * early))])
        return Detection("exploding_gradients", onset, {
            "grad_norm_early": early, "grad_norm_recent": recent, "growth": ratio})
    return None


@rule("vanishing_gradients")
def vanishing_gradients(h, cfg):
    g = h.matrix("param_grad_norms")
    if g.shape[0] < cfg.warmup_steps or g.shape[1] < 2:
        return None
    cols = _weight_columns(h)
    if cols.size < 2:
        return None
    sizes = np.asarray(h.layout.param_sizes, float)
    # the first and the last third of the weight layers, each by its median: one quiet tensor
    # (a transformer's attention query at init, say) does not make a whole network "vanish"
    k = max(1, cols.size // 3)

    def ends(start: int) -> np.ndarray:   # (first, last) of the rows from start on
        rms = g[start:, cols] / np.sqrt(np.maximum(sizes[cols], 1.0))  # per-element scale: size-free
        return np.column_stack([row_median(rms[:, :k]), row_median(rms[:, -k:])])
    first, last = h.per_record("vanishing_gradients", np.arange(g.shape[0]), ends).T
    ok = np.isfinite(first) & np.isfinite(last) & (last > 0)
    if ok.sum() < cfg.warmup_steps // 2:
        return None
    ratio = first[ok] / last[ok]
    recent = ratio[-cfg.curve_window:]
    med = float(median(recent))
    if med >= cfg.vanish_ratio or float(np.mean(recent < cfg.vanish_ratio)) < 0.8:
        return None
    onset = int(h.steps()[ok][int(np.argmax(ratio < cfg.vanish_ratio))])
    return Detection("vanishing_gradients", onset, {
        "first_layer": h.layout.params[cols[0]], "last_layer": h.layout.params[cols[-1]],
        "layers_compared_each_end": int(k),
        "rms_grad_ratio_first_to_last": med, "threshold": cfg.vanish_ratio})


@rule("frozen_parameters")
def frozen_parameters(h, cfg):
    if h.n_steps < cfg.warmup_steps or not h.layout.params:
        return None
    names = h.layout.params
    no_grad = ~h.ever_had_grad
    not_in_opt = np.zeros(len(names), bool)
    if h.facts.in_optimizer is not None:
        not_in_opt = ~np.asarray(h.facts.in_optimizer, bool)
    # has a gradient, but its weights never move (every sampled update exactly zero)
    upd = h.matrix("update_ratios")
    grads = h.matrix("param_grad_norms")
    sampled = np.isfinite(upd)
    n_sampled = along(sampled, "sum", 0)
    never_moves = (n_sampled >= 3) & along(np.where(sampled, upd, 0.0) == 0, "all", 0)
    has_grad = along(grads > 0, "any", 0)   # NaN (not measured) compares False
    stuck = never_moves & has_grad
    frozen = no_grad | not_in_opt | stuck
    if not frozen.any():
        if h.facts.unregistered:   # nothing of the model's own is frozen; what it uses unregistered is
            return Detection("frozen_parameters", int(h.first_step or 0), {
                "unregistered_tensors": list(h.facts.unregistered), "n_frozen": len(h.facts.unregistered)},
                message=f"{len(h.facts.unregistered)} tensor(s) the forward uses are not registered in the "
                        "model (a layer kept in a Python list instead of nn.ModuleList?): the optimizer "
                        "does not hold them, so they never train.")
        return None
    idx = np.flatnonzero(frozen)
    return Detection("frozen_parameters", int(h.first_step or 0), {
        "parameters": [names[i] for i in idx[:10]], "n_frozen": int(idx.size),
        "never_got_gradient": [names[i] for i in np.flatnonzero(no_grad)[:10]],
        "not_in_optimizer": [names[i] for i in np.flatnonzero(not_in_opt)[:10]],
        "gradient_but_never_updated": [names[i] for i in np.flatnonzero(stuck)[:10]],
        "n_parameters": len(names),
    }, message=f"{idx.size} parameter tensor(s), first: {names[idx[0]]}.")


# Measured steps in a row with every gradient exactly zero before zero_gradients fires: one
# such step can be a batch the loss ignores (all samples masked); five in a row is the model.
ZERO_GRAD_STEPS = 5


@rule("zero_gradients")
def zero_gradients(h, cfg):
    """Every measured gradient is exactly 0.0 on ``ZERO_GRAD_STEPS`` consecutive measured steps.

    Exactly zero is not a rounding question: a gradient that no path from the loss reaches (a
    one-unit softmax, whose output is the constant 1; a loss computed from ``argmax`` or a
    detached copy; a layer whose units are all dead) is the literal 0.0 on every CPU and GPU.
    Unmeasured entries (NaN: sparse gradients, tensors the backend cannot read) are left out,
    and a step counts only when at least one gradient was measured on it.
    """
    g = h.matrix("param_grad_norms")
    if g.size == 0:
        return None
    measured = np.isfinite(g) & ~h.matrix("param_grad_missing")
    rows = np.flatnonzero(along(measured, "any", 1))
    if rows.size < ZERO_GRAD_STEPS:
        return None
    zero = along(np.where(measured[rows], g[rows], 0.0) == 0.0, "all", 1)
    best, best_start = longest_run(zero)   # consecutive all-zero measured steps
    if best < ZERO_GRAD_STEPS:
        return None
    steps = h.steps()[rows]
    if _fitted_exactly(h, int(steps[best_start]), cfg):
        return None
    return Detection("zero_gradients", int(steps[best_start]), {
        "steps_all_zero": int(best), "measured_steps": int(rows.size),
        "parameters_measured": int(measured[rows[best_start]].sum()),
        "zero_now": bool(zero[-1])})


def _fitted_exactly(h, step: int, cfg) -> bool:
    """The loss had fallen from a positive start to <= converged_rel of it before ``step``: zero
    gradients there are an exact fit (a noiseless regression solved), not a broken graph."""
    loss, seen, steps = h.series("loss"), h.series("loss_seen") > 0, h.steps()
    ok = seen & np.isfinite(loss) & (steps <= step)
    init = h.initial_loss
    return bool(ok.any() and np.isfinite(init) and init > 0 and loss[ok][-1] <= cfg.converged_rel * init)
