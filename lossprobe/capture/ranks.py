"""What data-parallel ranks exchange at a flush, and how it is merged -- the same for every
framework (numpy only; the backends' ``*_dist`` modules do the gather itself).

At each flush every rank turns its decoded records into one small summary per step
(:func:`rank_summaries`: loss, non-finite flags, the local squared gradient norm, batch),
the backend gathers the summaries of all ranks with one collective, and
:func:`merge_ranks` writes them into the :class:`~lossprobe.rules.distributed.RankTable`
and gives each record the cross-rank values (as :data:`~lossprobe.capture.spec.RANK_COMBINE`
says), so every rank's probe reaches the same verdicts.

Example::

    mine = rank_summaries(records, {7: {"local_sq": 0.3}})
    gathered = all_gather_object(mine)            # framework-specific: one per flush
    merge_ranks(records, gathered, table)         # records now hold the cross-rank loss

:func:`launcher_rank` reads the global rank a launcher put in the environment.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from ..record import StepRecord
from ..rules.distributed import RankTable
from .spec import RANK_COMBINE, combine

GLOBAL_RANK_VARS = ("RANK", "PADDLE_TRAINER_ID")
"""Environment variables that hold a process's *global* rank (``torchrun``, Paddle's
``launch``/``spawn``); a local rank (``LOCAL_RANK``) alone is ambiguous on several nodes."""


def launcher_rank(keys: Sequence[str] = GLOBAL_RANK_VARS) -> int | None:
    """The global rank a launcher set in the environment (the first of ``keys`` that holds an
    integer), or None.

    Example::

        os.environ["PADDLE_TRAINER_ID"] = "3"
        launcher_rank()          # 3
    """
    for key in keys:
        value = env_int(key)
        if value is not None:
            return value
    return None


def env_int(key: str) -> int | None:
    """The integer in environment variable ``key``, or None (unset or not an integer)."""
    try:
        return int(os.environ[key])
    except (KeyError, ValueError):
        return None


def rank_summaries(records: Sequence[StepRecord], by_step: dict[int, dict[str, float]] | None = None
                   ) -> list[dict[str, float]]:
    """This rank's summary of each record: ``step``, ``loss`` (NaN when not finite),
    ``raw_loss``, the non-finite flags, and whatever the backend measured per step in
    ``by_step`` (``local_sq``: the squared norm of this rank's own gradient, before the
    all-reduce -- a non-finite one sets ``grad_nonfinite``; ``samples``; ...)."""
    by_step = by_step or {}
    rows = []
    for rec in records:
        d = dict(by_step.get(rec.step, {}))
        d["step"] = float(rec.step)
        if rec.loss_seen:
            d["loss"] = rec.loss if math.isfinite(rec.loss) else math.nan
            d["loss_nonfinite"] = 0.0 if math.isfinite(rec.loss) else 1.0
        d["input_nonfinite"] = rec.input_nonfinite
        d["output_nonfinite"] = rec.output_nonfinite
        if "local_sq" in d:
            d["grad_nonfinite"] = 0.0 if math.isfinite(d["local_sq"]) else 1.0
        d["raw_loss"] = rec.loss if rec.loss_seen else math.nan
        rows.append(d)
    return rows


def merge_ranks(records: Sequence[StepRecord], gathered: Sequence[Sequence[dict[str, float]]],
                table: RankTable) -> list[list[dict[str, float]]]:
    """Per-rank rows (``gathered[r]``: rank r's :func:`rank_summaries`) into ``table``; each
    record gets the cross-rank mean loss (a non-finite loss on any rank wins) and the worst
    non-finite input/output flags. Returns each record's rows, one per rank ({} where a rank
    sent none), for what a backend merges besides (FSDP2's shard pieces)."""
    per_rank = [{int(r["step"]): r for r in rows} for rows in gathered]
    by_record = []
    for rec in records:
        rows = [pr.get(rec.step, {}) for pr in per_rank]
        by_record.append(rows)
        table.append(rec.step, rows)
        seen = [r for r in rows if "loss_nonfinite" in r]
        if seen:
            bad = [r["raw_loss"] for r in seen if r["loss_nonfinite"] > 0]
            rec.loss = float(bad[0]) if bad else float(np.mean([r["raw_loss"] for r in seen]))
            rec.loss_seen = 1.0
        for name in ("input_nonfinite", "output_nonfinite"):
            vals = [r[name] for r in rows if name in r and not math.isnan(r[name])]
            if vals:   # as capture.spec says the ranks combine it
                setattr(rec, name, float(combine(RANK_COMBINE[name], np.array(vals))))
    return by_record
