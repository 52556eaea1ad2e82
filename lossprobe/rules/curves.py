"""Loss-curve rules: chance_level_loss, loss_plateau, loss_divergence, loss_spike,
loss_oscillation, converged.

All are scale-free (relative to the loss's own level and initial value), noise-aware
(trends are judged by a Theil-Sen slope against the robust spread of the residuals)
and silent during warm-up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..findings import Detection
from . import rule
from .stats import MAD_TO_SIGMA, theil_sen, thirds


@dataclass
class Trend:
    steps: np.ndarray
    loss: np.ndarray
    level: float        # median of the last third of the window
    start: float        # median of the first third of the window
    rel_change: float   # (level - start) / |start|: < 0 falling
    slope_z: float      # significance of the Theil-Sen slope
    initial: float      # first measured loss of the run

    @property
    def falling(self) -> bool:
        return self.slope_z <= -3.0 and self.rel_change < -0.01

    def high(self, share: float) -> bool:
        """Still above ``share`` of the initial loss (not yet learned much)."""
        return abs(self.level) > share * abs(self.initial)


def loss_trend(h, cfg, min_points: int | None = None) -> Trend | None:
    """Trend of the last ``curve_window`` measured, finite losses; None during warm-up
    (fewer than ``min_points`` losses, default ``warmup_steps``). Memoised per history
    state: several rules ask for it in one evaluation."""
    key = (h.n_steps, h.last_step, min_points, cfg.curve_window, cfg.warmup_steps)
    cache = h.__dict__.setdefault("_trend_cache", {})
    if key not in cache:
        cache.clear() if len(cache) > 8 else None
        cache[key] = _loss_trend(h, cfg, min_points)
    return cache[key]


def _loss_trend(h, cfg, min_points):
    loss, seen, steps = h.series("loss"), h.series("loss_seen") > 0, h.steps()
    ok = seen & np.isfinite(loss)
    if ok.sum() < max(cfg.warmup_steps if min_points is None else min_points, 8):
        return None
    y, t = loss[ok][-cfg.curve_window:], steps[ok][-cfg.curve_window:].astype(float)
    if y.size < 8:
        return None
    start, level = thirds(y)
    _, z = theil_sen(t, y)
    rel = (level - start) / abs(start) if start else 0.0
    return Trend(t, y, level, start, rel, z, _reference_loss(h))


def _reference_loss(h) -> float:
    """What "still high" is measured against: the run's first loss, or for a classifier the
    loss of an untrained one, ln(C), when that is higher. A fine-tuned or resumed classifier
    starts far below ln(C): judged against its own start, its mini-batch noise looks like a
    plateau or a zig-zag at a "high" level."""
    init = h.initial_loss
    c = chance_classes(h)
    if h.facts.loss_kind in ("bce", "bce_logits"):
        c = 2
    if c >= 2 and h.facts.loss_kind in ("cross_entropy", "nll", "bce", "bce_logits") and math.isfinite(init) and init >= 0:
        return max(init, math.log(c))
    return init


def is_converged(tr: Trend, h, cfg) -> bool:
    """Flat and low: at <= converged_rel of the initial loss, or gradients that have died down."""
    if tr is None or tr.falling:
        return False
    if abs(tr.level) <= cfg.converged_rel * abs(tr.initial):
        return True
    g = h.series("grad_norm")
    g = g[np.isfinite(g)]
    if g.size >= 20:
        early = float(np.max(g[: max(5, g.size // 10)]))
        # gradients died down after the loss fell a good way: settled at a noise floor
        learned = abs(tr.level) < 0.7 * abs(tr.initial)
        if learned and early > 0 and float(np.median(g[-10:])) < 0.05 * early and abs(tr.rel_change) < cfg.plateau_rel_drop:
            return True
    return False


def chance_classes(h) -> int:
    return int(h.facts.n_classes) if h.facts.n_classes and h.facts.n_classes >= 2 else 0


@rule("chance_level_loss")
def chance_level_loss(h, cfg):
    # a stall verdict needs a full window of evidence: many healthy runs sit at ln(C) for
    # their first few dozen steps before the loss starts to move
    tr = loss_trend(h, cfg, min_points=cfg.curve_window)
    if tr is None:
        return None
    c = chance_classes(h)
    if h.facts.loss_kind in ("bce", "bce_logits"):
        c = 2
    candidates = [c] if c else [2]  # unknown width: only the unmistakable 0.6931
    for k in candidates:
        ref = math.log(k)
        near = np.abs(tr.loss - ref) <= cfg.chance_tolerance * ref
        # the medians of the window's first and last third both at ln(C): per-point tests
        # fail on mini-batch noise (a batch of 64 at chance scatters by a few %)
        first, last = thirds(tr.loss)
        at_chance = max(abs(first - ref), abs(last - ref)) <= cfg.chance_tolerance * ref
        if at_chance and not tr.falling:
            onset = int(tr.steps[int(np.argmax(near))])
            return Detection("chance_level_loss", onset, {
                "loss": tr.level, "ln_C": round(ref, 4), "classes": k,
                "share_of_window_at_chance": float(near.mean())},
                message=f"ln({k}) = {ref:.4f}.")
    return None


@rule("loss_plateau")
def loss_plateau(h, cfg):
    tr = loss_trend(h, cfg, min_points=cfg.curve_window)
    if tr is None or tr.falling or is_converged(tr, h, cfg):
        return None
    if tr.rel_change <= -cfg.plateau_rel_drop or tr.rel_change >= cfg.divergence_rise:
        return None  # still falling by more than the tolerance, or rising (divergence)
    if not tr.high(cfg.plateau_high):
        return None
    if _oscillating(tr, cfg):
        return None  # big zig-zag: reported as loss_oscillation
    from .validation import _paired, _rel
    p = _paired(h, cfg)
    if p is not None and _rel(p[1]) <= -0.05:
        return None  # validation still falls by >= 5%: still learning, the train curve is just noisy
    return Detection("loss_plateau", int(tr.steps[0]), {
        "loss": tr.level, "reference_loss": tr.initial, "relative_change_over_window": tr.rel_change,
        "window_steps": int(tr.steps[-1] - tr.steps[0])},
        message="Try a lower learning rate (or a decay schedule) or a smaller batch size.")


@rule("loss_divergence")
def loss_divergence(h, cfg):
    tr = loss_trend(h, cfg)
    if tr is None:
        return None
    rising = tr.rel_change >= cfg.divergence_rise and tr.slope_z >= cfg.trend_z
    above_start = tr.level > abs(tr.initial) * (1 + cfg.divergence_rise) if tr.initial > 0 else False
    if not (rising or (above_start and tr.slope_z >= cfg.trend_z)):
        return None
    onset = int(tr.steps[int(np.argmin(tr.loss))])  # the curve's low point before the climb
    return Detection("loss_divergence", onset, {
        "loss_start_of_window": tr.start, "loss_now": tr.level, "relative_rise": tr.rel_change,
        "slope_z": tr.slope_z, "reference_loss": tr.initial})


@rule("loss_spike")
def loss_spike(h, cfg):
    loss, seen, steps = h.series("loss"), h.series("loss_seen") > 0, h.steps()
    ok = seen & np.isfinite(loss)
    y, t = loss[ok], steps[ok]
    w = cfg.curve_window // 2
    if y.size < max(cfg.warmup_steps, w) + 1:
        return None
    scale = abs(h.initial_loss) if math.isfinite(h.initial_loss) else 0.0
    # every point against the median and robust spread of the w points before it (vectorised)
    win = np.lib.stride_tricks.sliding_window_view(y[:-1], w)        # win[k] = y[k : k + w]
    med = np.median(win, axis=1)
    sig = MAD_TO_SIGMA * np.median(np.abs(win - med[:, None]), axis=1)
    top = win.max(axis=1) - med  # the largest excursion the preceding window itself produced
    cur = y[w:]
    jump = cur - med
    # A spike is something the recent run has not produced at all: at least 4x the largest
    # excursion of the last w steps (mini-batch losses have a heavy upper tail: the hardest
    # batch of 30 sits far above the median, and one twice as high is that tail, not a break),
    # and at least half the initial loss (one batch that costs half of what an untrained model
    # scores; a healthy run late in training has single hard batches of ~20% of that).
    hit = ((jump > cfg.spike_mad * np.maximum(sig, 1e-12)) & (cur > 2 * np.abs(med))
           & (jump > 0.5 * scale) & (jump >= 4.0 * top))
    if not hit.any():
        return None
    k = int(np.argmax(hit))
    return Detection("loss_spike", int(t[w + k]), {
        "loss": float(cur[k]), "median_before": float(med[k]), "noise_sigma_before": float(sig[k]),
        "jump_in_sigmas": float(jump[k] / max(sig[k], 1e-12))})


def _oscillating(tr, cfg) -> bool:
    d = np.diff(tr.loss)
    if d.size < 6:
        return False
    flips = np.mean(np.sign(d[1:]) != np.sign(d[:-1]))
    amp = float(np.median(np.abs(d)))
    return flips >= 0.6 and amp >= cfg.oscillation_rel * abs(np.median(tr.loss))


@rule("loss_oscillation")
def loss_oscillation(h, cfg):
    tr = loss_trend(h, cfg)
    if tr is None or tr.falling or not tr.high(cfg.plateau_high):
        return None
    if not _oscillating(tr, cfg):
        return None
    d = np.diff(tr.loss)
    return Detection("loss_oscillation", int(tr.steps[0]), {
        "median_swing": float(np.median(np.abs(d))), "level": float(np.median(tr.loss)),
        "sign_flip_share": float(np.mean(np.sign(d[1:]) != np.sign(d[:-1])))})


@rule("converged")
def converged(h, cfg):
    tr = loss_trend(h, cfg)
    if tr is None or not is_converged(tr, h, cfg):
        return None
    return Detection("converged", int(tr.steps[0]), {
        "loss": tr.level, "reference_loss": tr.initial, "relative_change_over_window": tr.rel_change})
