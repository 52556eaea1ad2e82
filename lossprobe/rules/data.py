"""Data rules: unshuffled_data, unnormalized_inputs, label_problem, double_softmax."""
from __future__ import annotations

import math

import numpy as np

from ..findings import Detection
from . import rule
from .stats import median
from .curves import learning_well, loss_trend
from .setup import received_activation


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
    med = float(median(typical))
    if med <= cfg.unnormalized_abs:
        return None
    well = learning_well(h, cfg)   # it trains anyway: scaling is advice (faster, steadier), not a fault
    return Detection("unnormalized_inputs", int(t[0]), {
        "input_mean": float(np.median(mean)), "input_std": float(np.median(std)),
        "threshold": cfg.unnormalized_abs},
        message="The loss still falls well: advice, not a fault yet." if well else "",
        severity="info" if well else None)


def expected_distinct(classes: int, batch: float) -> float:
    """Distinct labels expected in a uniformly random batch: C (1 - (1 - 1/C)^B)."""
    return classes * (1 - (1 - 1 / classes) ** batch)


# Target statistics are sampled (every ``activation_every`` steps); this many sampled
# batches are enough for the order test below, whose two sides differ by a large factor.
MIN_TARGET_SAMPLES = 4
# Below this many targets per batch the range of a shuffled batch is itself too noisy.
MIN_BATCH = 8


# Share of pairs of sampled batches whose target ranges do not overlap, above which the
# data arrives in order. For shuffled batches of B >= 8 it is ~0: two random batches of 8
# have disjoint ranges with probability 2 / C(16, 8) ~ 1.6e-4 for a continuous target and
# never when one class dominates (every batch contains it). Sorted data makes most pairs
# disjoint (one class or one thin slice per batch); a quarter is far from both.
DISJOINT_SHARE = 0.25


@rule("unshuffled_data")
def unshuffled_data(h, cfg):
    """Batches that cover disjoint parts of the target range: the data arrives in order.

    Each sampled batch gives the smallest and largest target (``target_min/max``). A
    shuffled batch is a small random sample of the whole data set, so any two batches'
    ranges overlap. Data sorted by label (or by a regression target, or read shard by
    shard) gives batches that hold one class or a thin slice of the target, and different
    batches hold different slices: their ranges are disjoint. The rule counts the pairs of
    sampled batches with disjoint ranges. It needs no class count and no balance
    assumption (with imbalanced shuffled data all batches share the majority class), and
    works for class indices, 0/1 float targets and regression targets alike.
    """
    if h.n_steps < cfg.warmup_steps // 2:
        return None
    lo, t = _recent(h, "target_min", 30)
    hi, _ = _recent(h, "target_max", 30)
    if lo.size < MIN_TARGET_SAMPLES or lo.size != hi.size:
        return None
    batch, _ = _recent(h, "batch_size", 30)
    if batch.size and float(median(batch)) < MIN_BATCH:
        return None
    i, j = np.triu_indices(lo.size, 1)
    disjoint = (hi[i] < lo[j]) | (hi[j] < lo[i])
    share = float(np.mean(disjoint))
    if share < DISJOINT_SHARE:
        return None
    evidence = {"disjoint_batch_pairs": round(share, 3), "batch_target_width": float(np.median(hi - lo)),
                "target_range_seen": float(np.max(hi) - np.min(lo)), "sampled_batches": int(lo.size)}
    idx, _ = _recent(h, "target_is_index", 30)
    distinct, _ = _recent(h, "target_distinct", 30)
    classes = max(int(h.facts.n_classes or 0), int(np.max(hi) - np.min(lo) + 1))
    if idx.size and np.median(idx) >= 1 and distinct.size and batch.size and classes >= 2:
        evidence["distinct_labels_per_batch"] = float(np.median(distinct))
        evidence["expected_if_shuffled"] = round(expected_distinct(classes, float(np.median(batch))), 2)
    return Detection("unshuffled_data", int(t[0]), evidence)


# "Every target has the same value" needs this many targets seen: four one-row batches of a
# balanced binary task are all one class one time in eight.
MIN_SAME_TARGETS = 32


def _targets_seen(h) -> float:
    """Targets in the batches whose target statistics were measured."""
    b, measured = h.series("batch_size"), np.isfinite(h.series("target_min"))
    return float(np.nansum(b[measured]))


@rule("label_problem")
def label_problem(h, cfg):
    if h.n_steps < 3:
        return None
    if h.facts.loss_broadcast:   # known from the shapes the loss received, whatever the targets hold
        return Detection("label_problem", int(h.first_step or 0), {
            "problem": "loss input and targets of different shapes", "broadcast": h.facts.loss_broadcast,
            "loss": h.facts.loss_name or h.facts.loss_kind},
            message=f"The loss broadcast its input against the targets ({h.facts.loss_broadcast}): every "
                    "prediction is compared with every target of the batch. Make the shapes equal.")
    tmin, t = _recent(h, "target_min")
    tmax, _ = _recent(h, "target_max")
    if tmin.size < 2:
        return None
    lo, hi = float(np.min(tmin)), float(np.max(tmax))
    kind = h.facts.loss_kind
    c = int(h.facts.n_classes or 0)
    idx, _ = _recent(h, "target_is_index")
    is_index = idx.size > 0 and median(idx) >= 1
    frac, _ = _recent(h, "target_fractional")
    problem = None
    if is_index and frac.size and float(np.max(frac)) > 0:
        problem = "class labels that are not integers (a class-index loss truncates them)"
    elif kind in ("bce", "bce_logits") and (lo < 0 or hi > 1):
        problem = "binary targets outside [0, 1]"
    elif is_index and c >= 2 and (lo < 0 or hi >= c):
        problem = f"class indices outside 0..{c - 1}"
    elif (is_index or kind in ("cross_entropy", "nll", "bce", "bce_logits")) and tmin.size >= MIN_TARGET_SAMPLES \
            and h.n_steps >= cfg.warmup_steps and lo == hi and _targets_seen(h) >= MIN_SAME_TARGETS:
        problem = "every target has the same value"
    if problem is None:
        return None
    evidence = {"problem": problem, "target_min": lo, "target_max": hi, "output_classes": c, "loss": kind or "unknown"}
    if frac.size and float(np.max(frac)) > 0:
        evidence["non_integer_share"] = float(np.max(frac))
    same = problem == "every target has the same value"
    # data sorted by label shows one value for a long while too: a warning, which clears (is
    # resolved) once another value arrives, where a wrong label range is critical at once
    return Detection("label_problem", int(t[0]), evidence,
        message=problem[0].upper() + problem[1:] + "." + (" (Or data sorted by label.)" if same else ""),
        severity="warning" if same else None)


@rule("double_softmax")
def double_softmax(h, cfg):
    """A softmax output fed to a loss that applies softmax itself. Known from the model and
    the loss (``facts``) when the backend can tell; otherwise from outputs that are already
    probability rows (and, for an unknown loss, a loss stuck above the double-softmax floor)."""
    f = h.facts
    if received_activation(f) == "softmax" and f.loss_kind == "cross_entropy" and h.first_step is not None:
        return Detection("double_softmax", int(h.first_step), {
            "output_layer": f.output_layer or "unknown", "output_activation": "softmax",
            "loss": f.loss_name or f.loss_kind, "loss_expects": "logits"})
    prob, t = _recent(h, "prob_rows", 50)
    if prob.size < 3 or np.median(prob) < 0.99:
        return None
    c = int(h.facts.n_classes or 0)
    if c < 2:
        return None
    kind = f.loss_kind
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
