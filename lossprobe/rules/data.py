"""Data rules: unshuffled_data, unnormalized_inputs, label_problem, double_softmax."""
from __future__ import annotations

import math

import numpy as np

from ..findings import Detection
from . import rule
from .curves import loss_trend


def _recent(h, name, n=None):
    x = h.series(name)
    ok = np.isfinite(x)
    return x[ok][-(n or len(x)):], h.steps()[ok][-(n or len(x)):]


@rule("unnormalized_inputs")
def unnormalized_inputs(h, cfg):
    mean, t = _recent(h, "input_mean", 50)
    std, _ = _recent(h, "input_std", 50)
    if mean.size < 3 or mean.size != std.size:
        return None
    typical = np.abs(mean) + std
    med = float(np.median(typical))
    if med <= cfg.unnormalized_abs:
        return None
    return Detection("unnormalized_inputs", int(t[0]), {
        "input_mean": float(np.median(mean)), "input_std": float(np.median(std)),
        "threshold": cfg.unnormalized_abs})


def expected_distinct(classes: int, batch: float) -> float:
    """Distinct labels expected in a uniformly random batch: C (1 - (1 - 1/C)^B)."""
    return classes * (1 - (1 - 1 / classes) ** batch)


@rule("unshuffled_data")
def unshuffled_data(h, cfg):
    if h.n_steps < cfg.warmup_steps:
        return None
    idx, _ = _recent(h, "target_is_index", 100)
    if idx.size == 0 or np.median(idx) < 1:
        return None
    distinct, t = _recent(h, "target_distinct", 100)
    batch, _ = _recent(h, "batch_size", 100)
    tmax, _ = _recent(h, "target_max", 1000)
    tmin, _ = _recent(h, "target_min", 1000)
    if distinct.size < cfg.warmup_steps or batch.size == 0:
        return None
    classes = max(int(h.layout.n_classes or 0), int(np.max(tmax) - np.min(tmin) + 1))
    if classes < 2:
        return None
    expect = expected_distinct(classes, float(np.median(batch)))
    seen_overall = int(np.max(tmax) - np.min(tmin) + 1)
    ratio = float(np.median(distinct)) / expect
    if ratio >= cfg.unshuffled_ratio or seen_overall < 2:
        return None
    return Detection("unshuffled_data", int(t[0]), {
        "distinct_labels_per_batch": float(np.median(distinct)), "expected_if_shuffled": round(expect, 2),
        "classes": classes, "batch_size": float(np.median(batch))})


@rule("label_problem")
def label_problem(h, cfg):
    if h.n_steps < 3:
        return None
    tmin, t = _recent(h, "target_min")
    tmax, _ = _recent(h, "target_max")
    if tmin.size < 3:
        return None
    lo, hi = float(np.min(tmin)), float(np.max(tmax))
    kind = h.layout.loss_kind
    c = int(h.layout.n_classes or 0)
    idx, _ = _recent(h, "target_is_index")
    is_index = idx.size > 0 and np.median(idx) >= 1
    problem = None
    if kind in ("bce", "bce_logits") and (lo < 0 or hi > 1):
        problem = "binary targets outside [0, 1]"
    elif is_index and c >= 2 and (lo < 0 or hi >= c):
        problem = f"class indices outside 0..{c - 1}"
    elif (is_index or kind in ("cross_entropy", "nll", "bce", "bce_logits")) and h.n_steps >= cfg.warmup_steps and lo == hi:
        problem = "every target has the same value"
    if problem is None:
        return None
    return Detection("label_problem", int(t[0]), {
        "problem": problem, "target_min": lo, "target_max": hi, "output_classes": c, "loss": kind or "unknown"},
        message=problem[0].upper() + problem[1:] + ".")


@rule("double_softmax")
def double_softmax(h, cfg):
    prob, t = _recent(h, "prob_rows", 50)
    if prob.size < 3 or np.median(prob) < 0.99:
        return None
    c = int(h.layout.n_classes or 0)
    if c < 2:
        return None
    kind = h.layout.loss_kind
    if kind in ("nll", "bce", "mse"):
        return None  # these expect probabilities / log-probabilities: fine
    evidence = {"prob_like_rows": float(np.median(prob)), "classes": c, "loss": kind or "unknown"}
    if kind != "cross_entropy":
        # Unknown loss: softmax applied twice cannot go below ln(1 + (C-1)/e), the loss of a
        # perfectly confident probability vector fed through softmax again. Require that floor.
        tr = loss_trend(h, cfg)
        floor = math.log(1 + (c - 1) / math.e)
        if tr is None or tr.level < 0.98 * floor:
            return None
        evidence["loss_floor_of_double_softmax"] = round(floor, 4)
    return Detection("double_softmax", int(t[0]), evidence)
