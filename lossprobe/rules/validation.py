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
from .stats import thirds

# A change smaller than this share of the level counts as flat. Validation losses are
# averages over a whole set, so their noise is far below a mini-batch loss's.
FLAT = 0.02


def _paired(h, cfg):
    """Last validation points and the (smoothed) train loss at the same steps."""
    vs, vl = h.val_sketch()
    ok = np.isfinite(vl)
    vs, vl = vs[ok], vl[ok]
    if vs.size < cfg.val_min_points:
        return None
    vs, vl = vs[-8:], vl[-8:]
    ts, tl = h.loss_sketch()
    if ts.size < 4:
        return None
    train = []
    for i, s in enumerate(vs):
        lo = vs[i - 1] if i > 0 else s - (vs[1] - vs[0] if vs.size > 1 else 1)
        sel = (ts > lo) & (ts <= s)
        train.append(float(np.median(tl[sel])) if sel.any() else np.nan)
    train = np.asarray(train)
    good = np.isfinite(train)
    if good.sum() < cfg.val_min_points:
        return None
    return vs[good], vl[good], train[good]


def _rel(y):
    a, b = thirds(y)
    return (b - a) / abs(a) if a else 0.0


@rule("overfitting")
def overfitting(h, cfg):
    p = _paired(h, cfg)
    if p is None:
        return None
    steps, val, train = p
    tr, vr = _rel(train), _rel(val)
    best = float(np.min(val))
    rose = (val[-1] - best) / abs(best) if best else 0.0
    train_down = tr <= -0.05
    if not train_down:
        return None
    # val rising from its best, or flat while train keeps falling hard
    # val rising from its best (and not still falling over the window: one bumpy point is
    # noise), or flat while train keeps falling hard
    if (rose >= 0.05 and vr > -FLAT) or (abs(vr) < FLAT and tr <= -0.2) or vr >= FLAT:
        onset = int(steps[int(np.argmin(val))])
        return Detection("overfitting", onset, {
            "train_change": tr, "val_change": vr, "val_best": best, "val_now": float(val[-1]),
            "val_rise_from_best": rose})
    return None


@rule("validation_anomaly")
def validation_anomaly(h, cfg):
    p = _paired(h, cfg)
    if p is None:
        return None
    steps, val, train = p
    tr, vr = _rel(train), _rel(val)
    if abs(tr) < FLAT and vr <= -0.05:
        return Detection("validation_anomaly", int(steps[0]), {"train_change": tr, "val_change": vr})
    return None
