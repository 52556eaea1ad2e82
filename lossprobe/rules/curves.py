"""Loss-curve rules: chance_level_loss, loss_plateau, loss_divergence, loss_spike,
loss_oscillation, converged.

All are scale-free (relative to the loss's own level and a reference: the initial loss, or
ln(C) for a classifier) and silent during warm-up. They judge a curve against its own noise:

* a trend counts when its Theil-Sen slope stands out of the residuals' robust spread, on the
  per-step losses *and* on block medians (a few steps each), so the order of the batches in
  an epoch (hard batches last, a one-sample last batch) does not pass for a trend;
* each step's loss is judged at its own batch size: the loss of a batch of b samples scatters
  ~sqrt(B/b) times more than one of the run's usual B, so a tiny last batch is no spike;
* when epochs are known (the framework says, or a short last batch recurs with a period),
  a run whose epoch means keep falling is learning: never diverging, on a plateau or
  oscillating, whatever one window of mini-batch losses looks like.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..findings import Detection
from . import rule
from .stats import MAD_TO_SIGMA, median, row_median, theil_sen, thirds


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


@dataclass(frozen=True)
class Measured:
    """The window's measured training losses: captured on their step and finite."""
    ok: np.ndarray      # which rows of the window hold one
    loss: np.ndarray    # the losses, oldest first
    steps: np.ndarray   # their steps
    t: np.ndarray       # their steps as floats (the x of a trend)


def measured_losses(h) -> Measured:
    """The window's measured, finite training losses with their steps (read-only arrays).
    Memoised per history state: most curve rules start from them."""
    return h.memo("measured_losses", lambda: _measured_losses(h))


def _measured_losses(h) -> Measured:
    loss, steps = h.series("loss"), h.steps()
    ok = (h.series("loss_seen") > 0) & np.isfinite(loss)
    m = Measured(ok, loss[ok], steps[ok], steps[ok].astype(float))
    for a in (m.ok, m.loss, m.steps, m.t):
        a.flags.writeable = False
    return m


def epoch_length(h) -> int:
    """Steps per epoch: what the backend learned (Keras/Paddle fit, trainers), else the period
    of a recurring short batch (a last batch smaller than the others, ``drop_last=False``);
    0 when unknown."""
    e = int(getattr(h.facts, "steps_per_epoch", 0) or 0)
    if e >= 2:
        return e
    b, steps = h.series("batch_size"), h.steps()
    ok = np.isfinite(b)
    if ok.sum() < 0.9 * b.size or b.size < 8:
        return 0  # batch sizes not known on (almost) every step
    med = float(median(b[ok]))
    short = steps[ok & (b < med)]
    if short.size < 2:
        return 0
    gaps = np.diff(short)
    return int(gaps[0]) if gaps[0] >= 2 and (gaps == gaps[0]).all() else 0


def epoch_means(h) -> np.ndarray:
    """Mean training loss of each complete epoch in the window (weighted by batch size, as the
    epoch's loss is), plus the epoch in progress once half of it is done. Empty when epochs
    are unknown."""
    e = epoch_length(h)
    if e < 2:
        return np.zeros(0)
    loss, steps, b = h.series("loss"), h.steps(), h.series("batch_size")
    ok = measured_losses(h).ok
    if not ok.any():
        return np.zeros(0)
    w = np.where(np.isfinite(b), b, 1.0)
    idx = (steps - steps[ok][0]) // e
    out = []
    for k in np.unique(idx[ok]):
        sel = ok & (idx == k)
        if sel.sum() >= max(2, e // 2):
            out.append(float(np.sum(loss[sel] * w[sel]) / np.sum(w[sel])))
    return np.asarray(out)


# An epoch mean this much (relative) below the one before is learning at epoch scale; a loss
# frozen by a vanishing learning rate still drifts down by ~1e-5 of itself an epoch.
EPOCH_FALL = 0.005


def epochs_falling(h) -> bool:
    """At least three epoch means, and the last one at least ``EPOCH_FALL`` (0.5%) below the
    one before: learning at epoch scale, whatever a window of mini-batch losses suggests."""
    m = epoch_means(h)
    return m.size >= 3 and m[-2] - m[-1] >= EPOCH_FALL * abs(m[-2])


def block_z(t: np.ndarray, y: np.ndarray, blocks: int = 10) -> float:
    """Theil-Sen z-score of the trend of block medians (``blocks`` consecutive groups of
    steps). Per-step z-scores take neighbouring batches as independent; in an epoch they are
    not (the same hard batches come at the same place), and block medians shrug off single
    outlier batches."""
    k = y.size // blocks
    if k < 2:
        return theil_sen(t, y)[1]
    n = k * blocks
    tb = t[-n:].reshape(blocks, k).mean(axis=1)
    yb = row_median(y[-n:].reshape(blocks, k))
    return theil_sen(tb, yb)[1]


def loss_trend(h, cfg, min_points: int | None = None) -> Trend | None:
    """Trend of the last ``curve_window`` measured, finite losses; None during warm-up
    (fewer than ``min_points`` losses, default ``warmup_steps``). Memoised per history
    state: several rules ask for it in one evaluation (whatever their ``min_points``)."""
    m = measured_losses(h)
    if m.loss.size < max(cfg.warmup_steps if min_points is None else min_points, 8):
        return None
    return h.memo(("loss_trend", cfg.curve_window), lambda: _loss_trend(h, cfg, m))


def _loss_trend(h, cfg, m: Measured):
    y, t = m.loss[-cfg.curve_window:], m.t[-cfg.curve_window:]
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
    c = classifier_classes(h)
    if c and math.isfinite(init) and init >= 0:
        return max(init, math.log(c))
    return init


def long_trend(h, cfg) -> tuple[float, float] | None:
    """(relative change, Theil-Sen z) over the last two curve windows; None with fewer than
    one and a half windows of losses. A slow, steady fall (a few % per window) is lost in one
    window's mini-batch noise but stands out over twice as many steps."""
    m = measured_losses(h)
    y, t = m.loss[-2 * cfg.curve_window:], m.t[-2 * cfg.curve_window:]
    if y.size < cfg.curve_window + cfg.curve_window // 2:
        return None
    start, level = thirds(y)
    _, z = theil_sen(t, y)
    return ((level - start) / abs(start) if start else 0.0), z


def _rose_before(h, cfg) -> bool:
    """The window before the current one climbed too (significant slope, +12.5% or more):
    the loss has been rising for two windows, not turning up once."""
    m = measured_losses(h)
    w = cfg.curve_window
    y, t = m.loss[-2 * w:-w], m.t[-2 * w:-w]
    if y.size < w // 2:
        return False
    start, level = thirds(y)
    _, z = theil_sen(t, y)
    return z >= cfg.trend_z and start > 0 and (level - start) / start >= cfg.divergence_rise / 2


def long_falling(h, cfg) -> bool:
    lt = long_trend(h, cfg)
    return lt is not None and lt[1] <= -cfg.trend_z and lt[0] < -cfg.plateau_rel_drop


def learning_well(h, cfg) -> bool:
    """The loss has come down to at most half of where it started -- for a classifier, half of
    the lower of that and ln(C): a start inflated by huge logits or heavy dropout is no
    reference, and a loss at chance has learned nothing -- and is not climbing: whatever a
    layer statistic says, the network still learns. Rules about a layer's health, the inputs'
    scale and dropout report as advice (info) then."""
    tr = loss_trend(h, cfg)
    if tr is None or not tr.initial > 0:
        return False
    ref = tr.initial
    c = classifier_classes(h)
    if c:
        ref = min(ref, math.log(c))
    return tr.level <= 0.5 * ref and tr.level - tr.start < cfg.divergence_rise * tr.initial


@dataclass
class Flat:
    start_step: int          # first step of the flat stretch
    level: float             # median loss over it
    fall_per_window: float   # measured fall, as a share of the level per curve window
    fall_upper: float        # the most it can be falling, given the noise (95% one-sided)


def flat_stretch(h, cfg) -> Flat | None:
    """The longest recent stretch over which the loss is shown to be flat: its fall per curve
    window is at most ``plateau_rel_drop`` x 2.5 (2.5%) even at the upper end of what the
    noise allows (Theil-Sen slope + 1.64 standard errors).

    This is a test *that* the loss is flat, not a failed test that it falls: a noisy curve
    must show enough steps before it counts as flat, and a slow, steady fall (3% a window
    under 8% batch noise) never does. Stretches of 2 to 4 curve windows are tried, ending now
    (a run shorter than two windows is tried whole, from one window on): one window of a noisy
    curve that was falling before it is often just a pause (a regression at batch 32 that still
    halves its loss over the next epochs shows such windows).
    """
    m = measured_losses(h)
    y_all, t_all = m.loss, m.t
    w = cfg.curve_window
    limit = 2.5 * cfg.plateau_rel_drop
    best = None
    n = y_all.size
    if n < w:
        return None
    for span in sorted({min(2 * w, n)} | {k * w for k in (3, 4) if k * w <= n}):
        y, t = y_all[-span:], t_all[-span:]
        level = float(median(y))
        if level <= 0:
            return None
        slope, z = theil_sen(t, y)
        se = abs(slope / z) if z else 0.0
        span = float(t[-1] - t[0]) or 1.0
        per_window = w * span / max(y.size - 1, 1)   # steps that one curve window covers here
        fall = -slope * per_window / level
        upper = (-slope + 1.64 * se) * per_window / level
        if upper <= limit:
            best = Flat(int(t[0]), level, fall, upper)
    return best


def best_level(h) -> float:
    """The lowest the loss has been over the whole run, as a running median of 5 (one lucky
    batch is not a level)."""
    _, v = h.loss_sketch()
    v = v[np.isfinite(v)]
    if v.size < 5:
        return float(np.min(v)) if v.size else math.nan
    return float(np.min(np.median(np.lib.stride_tricks.sliding_window_view(v, 5), axis=1)))


def is_converged(tr: Trend, h, cfg) -> bool:
    """Flat and low: at <= converged_rel of the reference loss, or gradients that have died
    down after the loss fell a good way. A classifier must also be well below chance
    (half of ln(C)): a loss that merely stopped moving is stuck, not converged."""
    if tr is None or tr.falling:
        return False
    if not (h.initial_loss > 0 and tr.level < h.initial_loss):
        return False  # nothing was learned: a loss that never fell (or was 0 from the start)
    c = chance_classes(h)
    if c and abs(tr.level) > 0.5 * math.log(c):
        return False
    if abs(tr.level) <= cfg.converged_rel * abs(tr.initial):
        return True
    g = h.series("grad_norm")
    g = g[np.isfinite(g)]
    if g.size >= 20:
        early = float(np.max(g[: max(5, g.size // 10)]))
        # gradients died down after the loss fell a good way: settled at a noise floor
        learned = abs(tr.level) < 0.7 * abs(tr.initial)
        if learned and early > 0 and float(median(g[-10:])) < 0.05 * early and abs(tr.rel_change) < cfg.plateau_rel_drop:
            return True
    return False


# An unrecognised loss that starts within this share of ln(C) is taken for a C-class
# cross-entropy (fresh models start at ln(C) give or take the spread of their first logits).
UNKNOWN_LOSS_START = 0.25


def chance_classes(h) -> int:
    return int(h.facts.n_classes) if h.facts.n_classes and h.facts.n_classes >= 2 else 0


def classifier_classes(h) -> int:
    """C of a run trained with a classification loss the backend recognised (2 for a binary
    cross-entropy), else 0: what ln(C) references are measured against."""
    kind = h.facts.loss_kind
    if kind in ("bce", "bce_logits"):
        return 2
    return chance_classes(h) if kind in ("cross_entropy", "nll") else 0


@rule("chance_level_loss")
def chance_level_loss(h, cfg):
    # a stall verdict needs a full window of evidence: many healthy runs sit at ln(C) for
    # their first few dozen steps before the loss starts to move
    tr = loss_trend(h, cfg, min_points=cfg.curve_window)
    if tr is None or h.first_step is None or tr.steps[0] < h.first_step + cfg.warmup_steps:
        return None  # every classifier starts at ln(C): the first steps at chance are expected
    kind = h.facts.loss_kind
    if kind in ("bce", "bce_logits", "cross_entropy", "nll"):
        candidates = [classifier_classes(h) or 2]
    elif kind == "":
        # a loss not recognised (a user's loss call, a CRF, a hand-written one): the output
        # width is its class count only if the loss started at ln(C), as a C-class cross-entropy
        # of a fresh model does (a CRF's sequence NLL starts at many times that); else only
        # the unmistakable 0.6931 of a binary guess
        c = chance_classes(h)
        started_there = c and abs(h.initial_loss - math.log(c)) <= UNKNOWN_LOSS_START * math.log(c)
        candidates = [c] if started_there else [2]
    else:
        return None  # a regression loss has no chance level
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
    """The loss is shown to be flat (see :func:`flat_stretch`) while still above
    ``plateau_high`` (30%) of the reference loss, not converged, not a zig-zag (that is
    loss_oscillation), and not still falling from epoch to epoch or on validation."""
    tr = loss_trend(h, cfg, min_points=cfg.curve_window)
    if tr is None or tr.falling or is_converged(tr, h, cfg):
        return None
    if tr.rel_change >= cfg.divergence_rise:
        return None  # rising: loss_divergence's call
    flat = flat_stretch(h, cfg)
    if flat is None or abs(flat.level) <= cfg.plateau_high * abs(tr.initial):
        return None
    if _oscillating(tr, cfg):
        return None  # big zig-zag: reported as loss_oscillation
    if epochs_falling(h):
        return None  # still learning from epoch to epoch
    from .validation import _paired, _rel
    p = _paired(h, cfg)
    if p is not None and _rel(p[1]) <= -0.05:
        return None  # validation still falls by >= 5%: still learning, the train curve is just noisy
    return Detection("loss_plateau", flat.start_step, {
        "loss": flat.level, "reference_loss": tr.initial, "fall_per_window": flat.fall_per_window,
        "fall_per_window_at_most": flat.fall_upper, "flat_steps": int(h.last_step - flat.start_step)},
        message="Try a lower learning rate (or a decay schedule) or a smaller batch size.")


@rule("loss_divergence")
def loss_divergence(h, cfg):
    """The loss climbs: over the window it rose by >= ``divergence_rise`` (25%) with a
    significant slope (or sits 25% above its initial value and still climbs); the climb stands
    out at block scale too; it gave back at least 25% of the reference loss (a rise from 0.006
    to 0.009 at a noise floor is no climb); and - when epochs are known - the epoch means rise.

    Critical once the loss is 25% above its reference (everything learned is lost and more)
    or has climbed for two windows; before that the climb may still turn (a transient excursion of a clipped
    RNN), so it is a warning, which resolves if the loss comes down again."""
    tr = loss_trend(h, cfg)
    if tr is None:
        return None
    rising = tr.rel_change >= cfg.divergence_rise and tr.slope_z >= cfg.trend_z
    above_start = tr.level > abs(tr.initial) * (1 + cfg.divergence_rise) if tr.initial > 0 else False
    if not (rising or (above_start and tr.slope_z >= cfg.trend_z)):
        return None
    bz = block_z(tr.steps, tr.loss)
    if bz < cfg.trend_z:
        return None  # a rise the per-step test sees but blocks of steps do not: batch order or outliers
    best = best_level(h)
    if math.isfinite(best) and tr.initial > 0 and tr.level - best < cfg.divergence_rise * tr.initial:
        return None
    if epochs_falling(h):
        return None
    sustained = _rose_before(h, cfg)
    lost_all = tr.initial > 0 and tr.level >= (1 + cfg.divergence_rise) * tr.initial
    onset = int(tr.steps[int(np.argmin(tr.loss))])  # the curve's low point before the climb
    return Detection("loss_divergence", onset, {
        "loss_start_of_window": tr.start, "loss_now": tr.level, "relative_rise": tr.rel_change,
        "slope_z": tr.slope_z, "block_slope_z": bz, "best_loss": best, "reference_loss": tr.initial,
        "climbing_for_two_windows": bool(sustained), "above_reference": bool(lost_all)},
        severity=None if (sustained or lost_all) else "warning")


@rule("loss_spike")
def loss_spike(h, cfg):
    m = measured_losses(h)
    ok, y, t = m.ok, m.loss, m.steps
    w = cfg.curve_window // 2
    if y.size < max(cfg.warmup_steps, w) + 1:
        return None
    scale = abs(h.initial_loss) if math.isfinite(h.initial_loss) else 0.0
    # every point against the median and robust spread of the w points before it: computed
    # once for each point (its w predecessors never change), at the evaluation that first sees it
    med, sig, top = h.per_record(("loss_spike", w), np.flatnonzero(ok)[w:],
                                 lambda start: np.column_stack(_window_stats(y[start:], w))).T
    cur = y[w:]
    jump = cur - med
    # each point at its own batch size: a batch of b samples scatters sqrt(B/b) times more
    # than one of the run's usual size B (a one-sample last batch of an epoch ~ 5x at B=32)
    b = h.series("batch_size")[ok]
    usual = median(b[~np.isnan(b)]) if np.isfinite(b).any() else math.nan   # np.nanmedian's value
    noise = np.where(np.isfinite(b[w:]) & (b[w:] > 0), np.sqrt(np.maximum(usual / b[w:], 1.0)), 1.0) \
        if math.isfinite(usual) else np.ones(cur.size)
    # A spike is something the recent run has not produced at all: at least 4x the largest
    # excursion of the last w steps (mini-batch losses have a heavy upper tail: the hardest
    # batch of 30 sits far above the median, and one twice as high is that tail, not a break),
    # and at least half the initial loss (one batch that costs half of what an untrained model
    # scores; a healthy run late in training has single hard batches of ~20% of that).
    hit = ((jump > cfg.spike_mad * np.maximum(sig, 1e-12) * noise) & (cur > 2 * np.abs(med))
           & (jump > 0.5 * scale * noise) & (jump >= 4.0 * top * noise))
    if not hit.any():
        return None
    k = int(np.argmax(hit))
    return Detection("loss_spike", int(t[w + k]), {
        "loss": float(cur[k]), "median_before": float(med[k]), "noise_sigma_before": float(sig[k]),
        "jump_in_sigmas": float(jump[k] / max(sig[k], 1e-12))})


def _window_stats(y: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, robust sigma, largest excursion above the median) of the w points before
    each of ``y[w:]``."""
    win = np.lib.stride_tricks.sliding_window_view(y[:-1], w)        # win[k] = y[k : k + w]
    med = row_median(win)
    sig = MAD_TO_SIGMA * row_median(np.abs(win - med[:, None]))
    top = win.max(axis=1) - med  # the largest excursion the preceding window itself produced
    return med, sig, top


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
    if not _oscillating(tr, cfg) or long_falling(h, cfg) or epochs_falling(h):
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
