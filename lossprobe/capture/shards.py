"""Sharded parameters (FSDP): what each rank sends at flush time, and how the ranks' pieces
make the statistics of whole tensors.

Under FSDP every rank holds a piece of each parameter and of its gradient. A backend
measures its pieces with the ordinary device ops (norms of the local shard), decodes its
StepRecords as usual, and at flush time -- never per step -- the ranks exchange
:func:`shard_summary` of each record and each rank applies :func:`merge_shards`: per-layer
gradient norms, the global gradient norm, weight norms, update ratios and the carried
gradient then describe the whole tensors, combined as :mod:`lossprobe.capture.spec` says
(``RANK_COMBINE``, ``RATIO_OF``, :func:`~lossprobe.capture.spec.combine`).

Framework-free (numpy). Example (two ranks, one parameter split in two)::

    parts = [shard_summary(rec0, [0]), shard_summary(rec1, [0])]   # gathered at flush
    merge_shards(rec0, [0], copies=np.ones(1), parts=parts)
    rec0.param_grad_norms[0]     # sqrt(|g0|^2 + |g1|^2): the whole gradient's norm
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..record import StepRecord
from .buffer import decode_grads, grad_sentinels
from .spec import MISSING, RANK_COMBINE, RATIO_OF, UNMEASURED, combine

# per-parameter fields a rank sends on the steps that measured them (sampled steps)
_SAMPLED_FIELDS = ("param_norms", "update_ratios")


def shard_summary(rec: StepRecord, sharded: Sequence[int]) -> dict:
    """What one rank sends about record ``rec``: its local values for the ``sharded``
    parameters (float32: the values went through a float32 device copy already), and the
    carried gradient with its denominator."""
    idx = np.asarray(sharded, dtype=np.int64)
    out = {"grad": grad_sentinels(rec)[idx].astype(np.float32),
           "grad_norm": rec.grad_norm, "grad_carried": rec.grad_carried}
    for name in _SAMPLED_FIELDS:
        v = np.asarray(getattr(rec, name))[idx]
        if not np.isnan(v).all():   # measured on this step
            out[name] = v.astype(np.float32)
    return out


def merge_shards(rec: StepRecord, sharded: Sequence[int], copies: np.ndarray, parts: Sequence[dict | None]) -> None:
    """Set ``rec``'s per-parameter statistics of the ``sharded`` parameters (each held by
    ``copies`` ranks) to the whole tensors' from every rank's :func:`shard_summary`
    (``parts``, one per rank), and the global gradient norm with them. A rank that sent
    nothing makes them unmeasured."""
    idx = np.asarray(sharded, dtype=np.int64)
    g = grad_sentinels(rec)
    if any(p is None for p in parts):
        g[idx] = UNMEASURED
        decode_grads(rec, g)
        for name in _SAMPLED_FIELDS:
            getattr(rec, name)[idx] = np.nan
        rec.grad_carried = math.nan
        return
    local_norm = np.array([p["grad_norm"] for p in parts])
    pieces = np.stack([p["grad"] for p in parts]).astype(np.float64)
    merged = combine(RANK_COMBINE["param_grad_norms"], np.where(pieces < 0, 0.0, pieces), copies=copies)
    missing, unmeasured = (pieces == MISSING).all(axis=0), (pieces < 0).any(axis=0)
    g[idx] = np.where(missing, MISSING, np.where(unmeasured, UNMEASURED, merged))
    decode_grads(rec, g)
    carried = np.array([p["grad_carried"] for p in parts])
    if not np.isnan(carried).all():
        rec.grad_carried = float(combine(RANK_COMBINE["grad_carried"], carried, local_norm))
    sent = {name: np.stack([p[name] for p in parts]) for name in _SAMPLED_FIELDS if all(name in p for p in parts)}
    for name, values in sent.items():   # ratios over the local norms sent with them
        if RATIO_OF.get(name) in sent:
            getattr(rec, name)[idx] = combine(RANK_COMBINE[name], values, sent[RATIO_OF[name]])
    if "param_norms" in sent:
        rec.param_norms[idx] = combine(RANK_COMBINE["param_norms"], sent["param_norms"], copies=copies)
