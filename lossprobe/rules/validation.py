"""The train/val table: overfitting and validation_anomaly (and both-up divergence).

| train | val       | verdict            |
|-------|-----------|--------------------|
| down  | down      | learning (healthy) |
| down  | flat / up | overfitting        |
| flat  | down      | validation_anomaly |
| flat  | flat      | loss_plateau (curves.py) |
| up    | up        | loss_divergence (curves.py) |
"""
from __future__ import annotations

import numpy as np

from ..findings import Detection
from . import rule
from .stats import median, theil_sen, thirds

# A change smaller than this share of the level counts as flat. Validation losses are
# averages over a whole set, so their noise is far below a mini-batch loss's.
FLAT = 0.02
# Validation points the table looks at: thirds of 6 are pairs, enough against the noise of
# one evaluation, and a pattern shows 6 evaluations after it began (8 made it 8).
VAL_WINDOW = 6


def _paired(h, cfg):
    """Last validation points and the (smoothed) train loss at the same steps."""
    vs, vl = h.val_sketch()
    ok = np.isfinite(vl)
    vs, vl = vs[ok], vl[ok]
    if vs.size < cfg.val_min_points:
        return None
    vs, vl = vs[-VAL_WINDOW:], vl[-VAL_WINDOW:]
    ts, tl = h.loss_sketch()
    if ts.size < 4:
        return None
    train = []
    for i, s in enumerate(vs):
        lo = vs[i - 1] if i > 0 else s - (vs[1] - vs[0] if vs.size > 1 else 1)
        sel = (ts > lo) & (ts <= s)
        train.append(float(median(tl[sel])) if sel.any() else np.nan)
    train = np.asarray(train)
    good = np.isfinite(train)
    if good.sum() < cfg.val_min_points:
        return None
    return vs[good], vl[good], train[good]


def _rel(y):
    a, b = thirds(y)
    return (b - a) / abs(a) if a else 0.0


def _val_noise(v: np.ndarray) -> float:
    """Robust noise of a validation curve from its second differences (a straight trend
    cancels out): for white noise of std s, v[i+1] - 2 v[i] + v[i-1] has std s * sqrt(6)."""
    if v.size < 3:
        return 0.0
    d2 = v[2:] - 2 * v[1:-1] + v[:-2]
    return float(1.4826 * np.median(np.abs(d2)) / np.sqrt(6.0))


def _smooth3(v: np.ndarray) -> np.ndarray:
    """Running median of 3 (ends kept): one noisy validation point cannot make a minimum."""
    if v.size < 3:
        return v.copy()
    m = np.median(np.stack([v[:-2], v[1:-1], v[2:]]), axis=0)
    return np.concatenate([v[:1], m, v[-1:]])


def _train_trend(h, steps: np.ndarray) -> tuple[float, float]:
    """Theil-Sen slope z-score of the raw per-step training losses across the validation span,
    and the fall it implies over that span (positive = fell)."""
    loss, seen, st = h.series("loss"), h.series("loss_seen") > 0, h.steps()
    ok = seen & np.isfinite(loss) & (st > steps[0] - (steps[1] - steps[0] if steps.size > 1 else 0)) & (st <= steps[-1])
    if ok.sum() < 8:
        return 0.0, 0.0
    t, y = st[ok].astype(float), loss[ok]
    slope, z = theil_sen(t, y)
    return z, -slope * float(t[-1] - t[0])


def _train_near(ts: np.ndarray, tl: np.ndarray, step: float, n: int = 15) -> float:
    """Median of the ``n`` training losses (from the whole-run sketch) nearest to ``step``."""
    if ts.size == 0:
        return float("nan")
    idx = np.argsort(np.abs(ts - step))[:n]
    return float(median(tl[idx]))


@rule("overfitting")
def overfitting(h, cfg):
    """Train falls, validation does not follow. Two ways to see it:

    * validation *rose* from its best: over the whole run, the median of the last 3
      validation points is above the smoothed (running median of 3) minimum by 5% of it and
      by 3 times the validation curve's own noise (so a noisy flat curve does not count),
      while the training loss fell by >= 5% since that minimum. The whole run, not a recent
      window, because a slow rise (a few % per ten evaluations) is as much overfitting;
    * or, over the last VAL_WINDOW (6) points, validation is *flat* (changed < 2%) while
      train fell significantly (Theil-Sen z <= -trend_z on the raw per-step losses: mini-batch
      losses are noisy), by >= 20%, *and* by an amount worth >= 10% of the validation loss:
      a train loss going from 0.02 to 0.01 next to a validation loss of 0.3 is a finished
      run, not one that is drifting apart.
    """
    vs, vl = h.val_sketch()
    ok = np.isfinite(vl)
    vs, vl = vs[ok], vl[ok]
    if vs.size < cfg.val_min_points:
        return None
    ts, tl = h.loss_sketch()
    if ts.size < 8:
        return None
    noise = _val_noise(vl)
    sm = _smooth3(vl)
    i_best = int(np.argmin(sm))
    best = float(sm[i_best])
    now = float(median(vl[-3:]))
    rise = now - best
    train_then = _train_near(ts, tl, float(vs[i_best]))
    train_now = float(median(tl[-15:]))
    train_fell = np.isfinite(train_then) and train_then > 0 and (train_now - train_then) / train_then <= -0.05
    rose = (i_best < vl.size - 2 and best > 0 and rise >= max(0.05 * best, 3 * noise) and train_fell)
    flat_apart, tr, vr, z = False, 0.0, 0.0, 0.0
    if not rose:
        p = _paired(h, cfg)
        if p is None:
            return None
        steps, val, train = p
        tr, vr = _rel(train), _rel(val)
        if tr > -0.2 or abs(vr) >= FLAT:
            return None
        z, train_drop = _train_trend(h, steps)
        level = float(np.median(val))
        flat_apart = z <= -cfg.trend_z and level > 0 and train_drop >= 0.1 * level
        if not flat_apart:
            return None
        onset = int(steps[int(np.argmin(_smooth3(val)))])
    else:
        onset = int(vs[i_best])
    return Detection("overfitting", onset, {
        "val_best": best, "val_now": now, "val_rise_from_best": rise / best if best else 0.0,
        "val_noise": noise, "train_at_val_best": train_then, "train_now": train_now,
        "recent_train_change": tr, "recent_val_change": vr})


@rule("validation_anomaly")
def validation_anomaly(h, cfg):
    """Validation falls while train stays flat: the two sets do not measure the same thing.

    Validation must fall by >= 5% and by more than 3 times its own noise, and train must be
    flat *relative to it*: changed by less than 2%, or by less than a quarter of
    validation's relative fall. Ordinary learning moves both together, and with a
    generalisation gap train falls *faster*; validation improving four times faster than
    train means the training loss carries a large part that training cannot reduce and
    validation does not have (noisy or smoothed training labels, train-only noise or
    dropout far too strong).
    """
    p = _paired(h, cfg)
    if p is None:
        return None
    steps, val, train = p
    tr, vr = _rel(train), _rel(val)
    v_first, v_last = thirds(val)
    falls = vr <= -0.05 and v_first - v_last > 3 * _val_noise(val)
    flat = abs(tr) < FLAT or (tr > vr / 4 and tr < -vr / 4)
    if falls and flat:
        return Detection("validation_anomaly", int(steps[0]), {"train_change": tr, "val_change": vr})
    return None
