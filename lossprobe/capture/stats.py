"""The statistics, each written once against :class:`lossprobe.capture.ops.Ops`.

Every function takes the framework's ops and tensors and returns device tensors in the
order of its :data:`lossprobe.capture.spec.STATS` entry's fields; nothing here reads a
value on the host, and nothing branches on a device value (only on shapes and dtypes).

Example::

    ops = ops_for("torch")
    vec = output_stats(ops, logits)     # [logit_abs_max, logit_std, output_mean, saturation, prob_rows, nonfinite]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .spec import ACT_SAMPLE, BOUND_EDGE, PROB_TOLERANCE, SATURATION_MARGIN


def input_sum(ops, x):
    """The float32 sum of a batch's inputs (every step), which NaN and Inf propagate to: the
    batch is non-finite exactly when the sum is (:func:`nonfinite_flag`, on the host at the
    flush). One pass over the batch and no temporary the size of it (max |x| made one: on a
    cold 128x784 batch here 61 us against 30 us for the sum). A finite batch whose sum passes
    3.4e38 reads as non-finite too; its first layer overflows as well."""
    return ops.total(x)


def nonfinite_flag(values):
    """Host side of :func:`input_sum`: 1.0 where a value is NaN or Inf, else 0.0 (numpy)."""
    return (~np.isfinite(values)).astype(float)


def input_stats(ops, x):
    """[|x| max, mean, std] of a float input batch (sampled steps)."""
    xf = ops.flat(ops.f32(x))
    mean, std = ops.mean_std(xf)
    return ops.stack([ops.amax(ops.abs(xf)), mean, std])


def output_stats(ops, y):
    """[|y| max, std, mean, saturation, underflow, probability rows, non-finite count] of the
    model output.

    Saturation is the share of rows whose top-1 minus runner-up logit is at least
    SATURATION_MARGIN (every other class's float32 softmax is then 0), underflow the share
    whose top-1 minus lowest logit is (some class's softmax is 0): margins, never a rounded
    softmax compared to 1.0, so every CPU and framework agrees."""
    y = ops.f32(y)
    flat = ops.flat(y)
    shape = ops.shape(y)
    if len(shape) >= 2 and (shape[-1] or 0) >= 2:
        rows = ops.rows(y, shape[-1])
        first, second = ops.top2(rows)
        low = ops.amin(rows, -1)
        sat = ops.frac(first - second >= SATURATION_MARGIN)
        under = ops.frac(first - low >= SATURATION_MARGIN)
        prob = ops.frac((low >= 0) & (first <= 1) & (ops.abs(ops.sum(rows, -1) - 1) < PROB_TOLERANCE))
    else:
        sat = under = prob = ops.nan(flat)
    mean, std = ops.mean_std(flat)
    return ops.stack([ops.amax(ops.abs(flat)), std, mean, sat, under, prob, ops.count_nonfinite(flat)])


def target_stats(ops, y, classes: int, one_hot: bool, as_index: bool):
    """[min, max, mean, std, distinct classes, is index, fractional share] of targets.

    ``one_hot``: rows of class scores for a classification loss, read as their argmax
    class. ``as_index``: float targets that a class-index loss takes as classes (Keras'
    sparse cross-entropy); integer targets always are. ``classes``: the output width."""
    if one_hot:
        yf = ops.f32(ops.argmax(ops.f32(y), -1))
        is_index = True
    else:
        is_index = as_index or not ops.is_float(y)
        yf = ops.flat(ops.f32(y))
    if is_index and classes >= 2:
        distinct = ops.distinct(ops.to_index(yf, classes), classes)
    else:
        distinct = ops.nan(yf)
    low, high = ops.min_max(yf)
    mean, std = ops.mean_std(yf)
    return ops.stack([low, high, mean, std, distinct,
                      ops.full(1.0 if is_index else 0.0, yf), ops.frac(yf != ops.floor(yf))])


def combine_targets(ops, vectors: Sequence):
    """One step's target statistics from those of its several losses (a GAN discriminator's
    real and fake batches): the range over all, the pooled mean and std."""
    if len(vectors) == 1:
        return vectors[0]
    cols = [[v[k] for v in vectors] for k in range(7)]
    means = ops.stack(cols[2])
    pooled_std = ops.sqrt(ops.mean(ops.stack(cols[3]) ** 2) + ops.mean((means - ops.mean(means)) ** 2))
    return ops.stack([ops.amin(ops.stack(cols[0])), ops.amax(ops.stack(cols[1])), ops.mean(means), pooled_std,
                      ops.amax(ops.stack(cols[4])), ops.amax(ops.stack(cols[5])), ops.mean(ops.stack(cols[6]))])


def activation_stats(ops, y, kind: str, channel_axis: int = -1):
    """[dead share, saturated share, std] of a watched activation's output.

    dead (ReLU): the share of units whose maximum over the batch (and positions) is <= 0;
    a unit is a channel (``channel_axis``) of a conv map, else a feature (last axis).
    Saturation (sigmoid/tanh: within BOUND_EDGE of a bound) and scale come from an evenly
    strided sample of at most ACT_SAMPLE values."""
    y = ops.f32(y)
    shape = ops.shape(y)
    flat = ops.every_nth(ops.flat(y), ACT_SAMPLE)
    dead = sat = ops.nan(flat)
    if kind == "relu" and len(shape) >= 2:
        axis = channel_axis % len(shape)
        dead = ops.frac(ops.amax(y, tuple(a for a in range(len(shape)) if a != axis)) <= 0)
    elif kind == "sigmoid":
        sat = ops.frac((flat < BOUND_EDGE) | (flat > 1 - BOUND_EDGE))
    elif kind == "tanh":
        sat = ops.frac(ops.abs(flat) > 1 - BOUND_EDGE)
    return ops.stack([dead, sat, ops.std(flat)])


def weight_sample(ops, w, index):
    """A snapshot of the sampled elements of weight ``w`` (``index``: flat indices, None: all)."""
    flat = ops.flat(ops.f32(w))
    return ops.copy(flat) if index is None else ops.gather(flat, index)


def update_ratios(ops, before: Sequence, after: Sequence):
    """|after - before| / |before| per weight tensor (the samples of :func:`weight_sample`)."""
    change = ops.norm_vector(ops.diffs(after, before))
    return change / ops.clamp_min(ops.norm_vector(before), 1e-30)


def param_norms(ops, params: Sequence):
    """L2 norm of each parameter."""
    return ops.norm_vector([ops.f32(p) for p in params])


def squared_norm(ops, tensors: Sequence):
    """Sum of squared L2 norms of ``tensors`` (a float32 scalar)."""
    return ops.sum(ops.norm_vector(tensors) ** 2)
