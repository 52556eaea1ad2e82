"""The flush buffer: where each statistic sits in a step's row, packing pending device
values into one host copy, and decoding rows into StepRecords -- one copy for every backend.

A step is one row of ``Columns.width`` float values; each :data:`~lossprobe.capture.spec.STATS`
entry owns a span of it (a value per field, per parameter, or the fields per activation).
TensorFlow keeps the rows on the device (a ``tf.Variable`` ring the compiled step writes
into); the eager backends (torch, Paddle) collect each step's device values in a
:class:`StepValues` and :func:`pack` turns all pending steps into one flat device tensor,
read to the host at once. Either way :meth:`Columns.decode` makes the StepRecord.

Example::

    cols = Columns(layout)
    vals = StepValues(step=0, sampled=True)
    vals.put(cols.span("output"), output_stats(ops, logits))
    rows = unpack(cols, [vals], *pack(ops, [vals]))        # the one host read is in here
    rec = cols.decode(0, rows[0])
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..record import Layout, StepRecord
from .spec import MISSING, PER_ACTIVATION, PER_PARAM, STATS, UNMEASURED


class Columns:
    """Column spans of one step's row, for a layout."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.n_params, self.n_acts = len(layout.params), len(layout.activations)
        self._spans: dict[str, tuple[int, int]] = {}
        at = 0
        for stat in STATS.values():
            n = len(stat.fields)
            if stat.per == PER_PARAM:
                n = self.n_params
            elif stat.per == PER_ACTIVATION:
                n *= self.n_acts
            self._spans[stat.name] = (at, at + n)
            at += n
        self.width = at

    def span(self, name: str, j: int | None = None) -> np.ndarray:
        """The column indices of statistic ``name`` (of activation ``j`` for a per-activation one)."""
        a, b = self._spans[name]
        if j is not None:
            k = len(STATS[name].fields)
            a, b = a + k * j, a + k * (j + 1)
        return np.arange(a, b)

    def start(self, name: str) -> int:
        return self._spans[name][0]

    def field(self, name: str) -> int:
        """The column of a scalar StepRecord field."""
        for stat in STATS.values():
            if name in stat.field_names and stat.per not in (PER_PARAM, PER_ACTIVATION):
                return self._spans[stat.name][0] + stat.field_names.index(name)
        raise KeyError(name)

    def empty_row(self) -> np.ndarray:
        return np.full(self.width, np.nan)

    def decode(self, step: int, row: np.ndarray) -> StepRecord:
        """A StepRecord from one row (nan = not measured)."""
        rec = StepRecord.empty(step, self.layout)
        for stat in STATS.values():
            a, b = self._spans[stat.name]
            block = np.asarray(row[a:b], dtype=float)
            if stat.per == PER_PARAM:
                if stat.name == "grad":
                    self._decode_grads(rec, block)
                else:
                    setattr(rec, stat.fields[0][0], block.copy())
            elif stat.per == PER_ACTIVATION:
                per = block.reshape(self.n_acts, len(stat.fields))
                for k, name in enumerate(stat.field_names):
                    setattr(rec, name, per[:, k].copy())
            else:
                for k, name in enumerate(stat.field_names):
                    setattr(rec, name, float(block[k]))
        if rec.loss_seen != 1.0:
            rec.loss, rec.loss_seen = math.nan, 0.0
        # the gradient already in .grad at the first backward, relative to the applied one
        if not math.isnan(rec.grad_carried):
            rec.grad_carried = rec.grad_carried / rec.grad_norm if rec.grad_norm > 0 else \
                (0.0 if rec.grad_carried == 0 else math.nan)
        return rec

    @staticmethod
    def _decode_grads(rec: StepRecord, g: np.ndarray) -> None:
        rec.param_grad_missing = g == MISSING
        rec.param_grad_unmeasured = g == UNMEASURED
        g = np.where(g < 0, np.nan, g)
        rec.param_grad_norms = g
        measured = g[~rec.param_grad_missing & ~rec.param_grad_unmeasured]
        if measured.size and not np.isnan(measured).all():
            rec.grad_norm = float(np.sqrt(np.sum(measured.astype(np.float64) ** 2)))


class StepValues:
    """One step's statistics while they still live on the device (eager backends).

    ``put(columns, value)``: a device tensor (or a list of 0-d tensors) for those columns,
    ``scale``: host factors it is multiplied by when read. ``host(columns, values)``:
    values already known on the host."""

    __slots__ = ("step", "sampled", "device", "known")

    def __init__(self, step: int, sampled: bool):
        self.step, self.sampled = step, sampled
        self.device: list[tuple[np.ndarray, Any, np.ndarray | None]] = []
        self.known: list[tuple[np.ndarray, np.ndarray]] = []

    def put(self, columns: np.ndarray, value: Any, scale: np.ndarray | None = None) -> None:
        self.device.append((np.asarray(columns), value, scale))

    def host(self, columns: np.ndarray, values) -> None:
        self.known.append((np.asarray(columns), np.asarray(values, dtype=float)))


def pack(ops, steps: Sequence[StepValues], extra: Sequence[Any] = ()) -> tuple[Any, list]:
    """All device values of ``steps`` (and ``extra`` 1-D tensors, e.g. validation losses)
    as one flat device tensor, and the plan to unpack its host copy."""
    pieces: list[Any] = []
    plan: list[tuple[int, np.ndarray | None, int, int, np.ndarray | None]] = []
    at = 0
    for i, s in enumerate(steps):
        for cols, value, scale in s.device:
            parts = list(value) if isinstance(value, (list, tuple)) else [value]
            n = 0
            for v in parts:
                pieces.append(v)
                n += ops.size(v) or 1
            plan.append((i, cols, at, n, scale))
            at += n
    for k, v in enumerate(extra):
        pieces.append(v)
        n = ops.size(v) or 1
        plan.append((-1 - k, None, at, n, None))
        at += n
    return (ops.cat(pieces) if pieces else None), plan


def unpack(columns: Columns, steps: Sequence[StepValues], host: np.ndarray | None,
           plan: list) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rows of ``steps`` from the host copy of :func:`pack`'s tensor, and the ``extra`` values."""
    rows = [columns.empty_row() for _ in steps]
    for row, s in zip(rows, steps):
        for cols, vals in s.known:
            row[cols] = vals
    extra: list[np.ndarray] = []
    for i, cols, a, n, scale in plan:
        vals = np.asarray(host[a:a + n], dtype=float)
        if i < 0:
            extra.append(vals)
            continue
        rows[i][cols] = vals if scale is None else vals * scale
    return rows, extra
