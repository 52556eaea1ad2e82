"""Every statistic a backend captures, specified once: its name, the StepRecord fields it
fills, its width, when it is measured and how data-parallel ranks combine it.

A backend computes a statistic with :mod:`lossprobe.capture.stats` (one formula for every
framework) and writes it into the columns :class:`lossprobe.capture.buffer.Columns` gives
it; the same columns decode into :class:`~lossprobe.record.StepRecord` fields.

Schedules: ``EVERY`` step, or ``SAMPLED`` -- one step in each block of
``activation_every``, at a rotating offset (:func:`is_sampled`), the same steps in every
backend. Rank combine: how a cross-rank value is made from the ranks' values (``MEAN``,
``SUM``, ``MAX``, ``MIN``); ``LOCAL`` statistics stay per rank. Per-parameter norms of a
*sharded* parameter (FSDP: each rank holds a piece) combine over its pieces: ``L2`` is the
root of the sum of the pieces' squared norms, and ``L2_RATIO`` a ratio of two norms (the
update ratio, the carried gradient) whose numerator and denominator each combine so, the
denominator being the field :data:`RATIO_OF` names; :func:`combine` does the arithmetic. A
replicated tensor's norm is the same on every rank (``L2`` over its distinct pieces).

Example::

    STATS["output"].fields           # ('logit_abs_max', 'logit_std', ...)
    is_sampled(11, every=10)         # True: step 11 is block 1's sampled step
    combine(L2, np.array([[3.0], [4.0]]))   # array([5.]): two shards' norms -> the tensor's
    SATURATION_MARGIN                # 87.3365: -ln(smallest normal float32)

To add a statistic: add a :class:`Stat` here (and its StepRecord fields in record.py),
write its formula in stats.py, and call it from each backend's hook.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EVERY, SAMPLED = "every", "sampled"
MEAN, SUM, MAX, MIN, LOCAL = "mean", "sum", "max", "min", "local"
L2, L2_RATIO = "l2", "l2_ratio"
SCALAR, PER_PARAM, PER_ACTIVATION = "scalar", "param", "activation"


@dataclass(frozen=True)
class Stat:
    """One statistic: the StepRecord ``fields`` it fills (with each field's rank combine),
    ``per`` (SCALAR: one value per field; PER_PARAM: one per parameter; PER_ACTIVATION: the
    fields for each watched activation) and its ``schedule``."""

    name: str
    fields: tuple[tuple[str, str], ...]   # (StepRecord field, rank combine)
    schedule: str
    per: str = SCALAR

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.fields)


_STATS = (
    # the loss of the step (the mean of its losses under gradient accumulation) and a 1.0 seen flag
    Stat("loss", (("loss", MEAN), ("loss_seen", MAX)), EVERY),
    Stat("lr", (("lr", LOCAL),), EVERY),
    # 1.0 when the batch's inputs hold a NaN or Inf (their float32 sum is not finite), else 0.0
    Stat("input_nonfinite", (("input_nonfinite", MAX),), EVERY),
    Stat("input", (("input_abs_max", MAX), ("input_mean", MEAN), ("input_std", MEAN)), SAMPLED),
    # the batch's first dimension (known on the host; noise at each batch's size, epoch ends)
    Stat("batch", (("batch_size", SUM),), EVERY),
    # the model output ("logits"); saturation: share of rows whose top-1 minus runner-up is
    # >= SATURATION_MARGIN (softmax exactly one-hot); underflow: top-1 minus the lowest is (some
    # class exactly 0); prob_rows: share of rows in [0, 1] summing to 1 (within PROB_TOLERANCE)
    Stat("output", (("logit_abs_max", MAX), ("logit_std", MEAN), ("output_mean", MEAN),
                    ("softmax_saturation", MEAN), ("softmax_underflow", MEAN), ("prob_rows", MEAN),
                    ("output_nonfinite", SUM)), SAMPLED),
    # targets (class indices when a one-hot target feeds a classification loss)
    Stat("target", (("target_min", MIN), ("target_max", MAX), ("target_mean", MEAN), ("target_std", MEAN),
                    ("target_distinct", MAX), ("target_is_index", MAX), ("target_fractional", MEAN)), SAMPLED),
    # per-parameter L2 gradient norm (sentinels: MISSING = no gradient, UNMEASURED = unreadable)
    Stat("grad", (("param_grad_norms", L2),), EVERY, PER_PARAM),
    # |gradient already in .grad at the step's first backward|; decoded relative to grad_norm
    Stat("carried", (("grad_carried", L2_RATIO),), SAMPLED),
    Stat("param_norm", (("param_norms", L2),), SAMPLED, PER_PARAM),
    # |dW| / |W| of each weight tensor over the step, on UPDATE_SAMPLE elements (update_sample_index)
    Stat("update", (("update_ratios", L2_RATIO),), SAMPLED, PER_PARAM),
    # per activation: share of dead units (ReLU), share at the bounds (sigmoid/tanh), std
    Stat("act", (("act_dead", LOCAL), ("act_sat", LOCAL), ("act_scale", LOCAL)), SAMPLED, PER_ACTIVATION),
    # known on the host: BatchNorm layers found in eval mode on a sampled training step
    Stat("bn_eval", (("bn_eval_in_train", MAX),), SAMPLED),
)
STATS: dict[str, Stat] = {s.name: s for s in _STATS}
RANK_COMBINE: dict[str, str] = {f: c for s in _STATS for f, c in s.fields}
# the denominator of each L2_RATIO field: grad_carried is decoded relative to grad_norm, an
# update ratio is |dW| / |W| of a weight whose norm param_norms holds on the same step
RATIO_OF: dict[str, str] = {"grad_carried": "grad_norm", "update_ratios": "param_norms"}


def combine(kind: str, values: np.ndarray, denominators: np.ndarray | None = None, copies=1.0) -> np.ndarray:
    """One value from the ranks' values of a statistic: ``values`` has the ranks on axis 0.

    ``L2``: the ranks hold pieces of a tensor and their norms; the tensor's norm is the root
    of the sum of squares, a piece held by ``copies`` ranks counted once. ``L2_RATIO``: the
    ranks hold ratios a_r / b_r with ``denominators`` b_r; the result is |a| / |b| (nan
    where |b| is 0). NaN and Inf on any rank carry through (a non-finite piece makes the
    tensor non-finite).

    Example::

        combine(L2, np.array([[3.0], [4.0]]))                          # [5.]
        combine(L2_RATIO, np.array([[0.1], [0.1]]), np.array([[3.0], [4.0]]))   # [0.1]
        combine(MAX, np.array([0.0, 1.0]))                             # 1.0
    """
    v = np.asarray(values, dtype=np.float64)
    if kind == L2:
        return np.sqrt(np.sum(v * v, axis=0) / copies)
    if kind == L2_RATIO:
        b = np.asarray(denominators, dtype=np.float64)
        den = np.sqrt(np.sum(b * b, axis=0))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, np.sqrt(np.sum((v * b) ** 2, axis=0)) / den, np.nan)
    return {MEAN: np.mean, SUM: np.sum, MAX: np.max, MIN: np.min}[kind](v, axis=0)

# -- constants every backend uses -------------------------------------------------------------
SATURATION_MARGIN = -math.log(float(np.finfo(np.float32).tiny))
"""87.3365: a top-1 logit this far above every other class gives them a float32 softmax
probability below the smallest normal float -- 0 on every CPU and GPU."""
PROB_TOLERANCE = 1e-3      # a row "looks like probabilities": in [0, 1], |sum - 1| below this
BOUND_EDGE = 1e-3          # sigmoid/tanh outputs within this of a bound are saturated
UPDATE_SAMPLE = 4096       # elements per weight tensor for update/weight ratios
ACT_SAMPLE = 65536         # activation values read for saturation and scale (strided)
MISSING, UNMEASURED = -1.0, -2.0   # gradient-norm sentinels (norms are >= 0 or nan)


EARLY_STEPS = 3
"""The first steps are all sampled: a short run (a few dozen steps) or one that breaks at
once (a learning rate that blows up in two steps) still gets its set-up checks."""


def is_sampled(step, every):
    """Step ``step`` is sampled: each of the first EARLY_STEPS, then one step in each block
    of ``every``, at offset block % every (0, 11, 22, ... for every=10) -- a fixed phase
    would alias with periodic pipelines (alternating shards or tasks). Works on Python ints
    and on framework integer tensors."""
    return (step < EARLY_STEPS) | (step % every == (step // every) % every)


def update_sample_index(size: int, seed: int = 0) -> np.ndarray | None:
    """The fixed, sorted random sample of at most UPDATE_SAMPLE flat indices of a weight
    tensor with ``size`` elements whose update/weight ratio is measured (None: all of them).
    |dW_S| / |W_S| estimates |dW| / |W|; a strided sample would alias with the row length."""
    if size <= UPDATE_SAMPLE:
        return None
    rng = np.random.default_rng(seed + size)
    return np.sort(rng.choice(size, UPDATE_SAMPLE, replace=False)).astype(np.int64)
