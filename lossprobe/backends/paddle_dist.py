"""Data-parallel training (``paddle.DataParallel``) for the Paddle backend.

Attach on every rank, after ``init_parallel_env()``, to the ``DataParallel`` model or to
its inner layer; launch with ``paddle.distributed.spawn`` or ``python -m
paddle.distributed.launch`` (both run on CPU with gloo)::

    dist.init_parallel_env()
    model = paddle.DataParallel(net)
    probe = lossprobe.attach(model, optimizer=opt, sinks=["console", "mlflow"])
    ...train as usual...
    probe.detach()                                  # on every rank: a flush is a collective

What happens, as under PyTorch DDP (:mod:`lossprobe.backends.torch_dist`):

* **rank detection**: the global rank of an initialised ``paddle.distributed``; before
  ``init_parallel_env()``, the launcher's ``PADDLE_TRAINER_ID`` / ``RANK``
  (:func:`~lossprobe.capture.ranks.launcher_rank`; a local rank alone is never used).
* **one publisher**: a probe on a rank other than 0 keeps no sink (one tracker run).
* **every rank is seen**: each flush, once the collectives are up, the ranks exchange a
  small summary per step (:func:`~lossprobe.capture.ranks.rank_summaries`) with *one*
  ``all_gather_object`` -- never per step. Records carry the cross-rank mean loss and the
  worst non-finite flags, and the :class:`~lossprobe.rules.distributed.RankTable` lets
  ``nan_loss`` and friends name the rank where the fault appeared.
* **local gradients**: the gradient hooks see each gradient before ``DataParallel``
  all-reduces it; under several ranks they add up its square on the device, so a rank
  whose own gradient went non-finite is named even though the reduced gradient is
  non-finite on every rank. (Under gradient accumulation: the sum over the step's
  backward passes.)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import paddle

from ..capture.ranks import launcher_rank, merge_ranks, rank_summaries
from ..record import StepRecord
from ..rules.distributed import RankTable


def rank_world() -> tuple[int, int]:
    """(rank, world size) from an initialised ``paddle.distributed``, else (0, 1)."""
    d = getattr(paddle, "distributed", None)
    initialised = getattr(d, "is_initialized", None)
    if initialised is not None and initialised():
        return int(d.get_rank()), int(d.get_world_size())
    return 0, 1


def publisher_rank() -> int:
    """This process's rank for publishing: paddle.distributed's when initialised, else the
    launcher's global rank from the environment, else 0."""
    rank, world = rank_world()
    if world > 1:
        return rank
    env = launcher_rank()
    return 0 if env is None else env


class PaddleRanks:
    """The cross-rank exchange of one probe (created by :meth:`create` when there are ranks).

    The backend calls :meth:`on_grad` from its gradient hooks, :meth:`take_tensors` when it
    packs a flush (the local norms join its one device->host copy) and :meth:`on_flush` with
    the decoded records, on the training thread.
    """

    def __init__(self, rank: int, world: int, window: int, warn: Callable[[str, str], None]):
        self.rank, self.world = rank, world
        self._warn = warn
        self.table = RankTable(world, window=window)
        self._local: dict[int, Any] = {}   # step -> device scalar: sum of squares of this rank's own gradients
        self._taken: list[int] = []        # the steps whose local norms ride in the current flush
        self.n_gathers = 0

    @classmethod
    def create(cls, config: Any, warn: Callable[[str, str], None]) -> "PaddleRanks | None":
        """The exchange for an initialised ``paddle.distributed`` of several ranks, else None;
        ``warn(key, message)`` reports a part that failed."""
        rank, world = rank_world()
        if world <= 1:
            return None
        # the rank rules read the last curve_window steps: a little more, not the whole run
        return cls(rank, world, max(2 * int(getattr(config, "curve_window", 60)), 128), warn)

    def layout_extra(self) -> dict[str, Any]:
        """What the rules read from ``Layout.extra``."""
        return {"dist": self.table, "rank": self.rank, "world_size": self.world}

    def on_grad(self, step: int, grad) -> None:
        """A gradient hook of step ``step`` got ``grad`` (this rank's own, not yet reduced)."""
        if grad.is_selected_rows():
            return
        with paddle.no_grad():
            sq = paddle.square(grad.astype("float32")).sum()
            prev = self._local.get(step)
            self._local[step] = sq if prev is None else prev + sq

    def take_tensors(self, before: int) -> Any:
        """The local squared norms of the steps before ``before`` (the closed ones), as one
        1-D device tensor for the flush's copy, or None."""
        self._taken = sorted(s for s in self._local if s < before)
        if not self._taken:
            return None
        return paddle.stack([self._local.pop(s).reshape([]) for s in self._taken]).reshape([-1])

    def on_flush(self, records: list[StepRecord], local_host: np.ndarray | None) -> list[StepRecord]:
        """Gathers every rank's summaries of this flush's steps (one collective) and merges
        them into ``records`` and the rank table. Every rank flushes at the same step, so all
        take part; a flush without records (validation points only) exchanges nothing."""
        taken, self._taken = self._taken, []
        for rec in records:
            rec.rank = self.rank
        if not records:
            return records
        try:
            by_step: dict[int, dict[str, float]] = {}
            if local_host is not None and len(local_host) == len(taken):
                by_step = {s: {"local_sq": float(v)} for s, v in zip(taken, local_host)}
            mine = rank_summaries(records, by_step)
        except Exception as exc:   # never skip the exchange: the other ranks wait for it
            self._warn("dist:summary", f"per-rank summary failed ({type(exc).__name__}: {exc}); "
                       "this rank reports steps only, training continues")
            mine = [{"step": float(r.step)} for r in records]
        merge_ranks(records, self._gather(mine), self.table)
        return records

    def _gather(self, mine: Sequence[dict[str, float]]) -> list[list[dict[str, float]]]:
        out: list[Any] = []
        paddle.distributed.all_gather_object(out, list(mine))  # the one cross-rank exchange of this flush
        self.n_gathers += 1
        return [o or [] for o in out]
