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
from typing import Any, Callable, Sequence

import numpy as np

from ..record import Layout, StepRecord
from .spec import MAX, MEAN, MIN, MISSING, PER_ACTIVATION, PER_PARAM, STATS, SUM, UNMEASURED, combine

# how replicas' values of one column become one value (capture.spec's rank combine); a NaN
# in any replica's value stays NaN (a non-finite loss on one replica is the step's)
_ELEMENTWISE = (MEAN, SUM, MAX, MIN)   # rank combines a replica row's columns use one by one


class Columns:
    """Column spans of one step's row, for a layout."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.n_params, self.n_acts = len(layout.params), len(layout.activations)
        self._spans: dict[str, tuple[int, int]] = {}
        scalar_cols, self._scalar_names, self._param_spans = [], [], []
        at = 0
        for stat in STATS.values():
            n = len(stat.fields)
            if stat.per == PER_PARAM:
                n = self.n_params
                self._param_spans.append((stat.fields[0][0], at, at + n))
            elif stat.per == PER_ACTIVATION:
                n *= self.n_acts
            else:
                scalar_cols.extend(range(at, at + n))
                self._scalar_names.extend(stat.field_names)
            self._spans[stat.name] = (at, at + n)
            at += n
        self._scalar_cols = np.array(scalar_cols, dtype=np.int64)
        self.width = at
        self._combine = self._combine_plan()
        self._cols: dict[tuple[str, int | None], np.ndarray] = {}

    def span(self, name: str, j: int | None = None) -> np.ndarray:
        """The column indices of statistic ``name`` (of activation ``j`` for a per-activation one)."""
        cols = self._cols.get((name, j))
        if cols is None:
            a, b = self._spans[name]
            if j is not None:
                k = len(STATS[name].fields)
                a, b = a + k * j, a + k * (j + 1)
            cols = self._cols[(name, j)] = np.arange(a, b)
            cols.flags.writeable = False
        return cols

    def start(self, name: str) -> int:
        return self._spans[name][0]

    def field(self, name: str) -> int:
        """The column of a scalar StepRecord field."""
        for stat in STATS.values():
            if name in stat.field_names and stat.per not in (PER_PARAM, PER_ACTIVATION):
                return self._spans[stat.name][0] + stat.field_names.index(name)
        raise KeyError(name)

    def _combine_plan(self) -> list[tuple[str, np.ndarray]]:
        """(rank combine, columns) for every scalar field whose ranks combine (LOCAL ones stay)."""
        by_kind: dict[str, list[int]] = {}
        for stat in STATS.values():
            if stat.per in (PER_PARAM, PER_ACTIVATION):
                continue   # per-parameter and per-activation statistics are LOCAL
            a = self._spans[stat.name][0]
            for k, (_, how) in enumerate(stat.fields):
                if how in _ELEMENTWISE:
                    by_kind.setdefault(how, []).append(a + k)
        return [(how, np.array(cols, dtype=np.int64)) for how, cols in by_kind.items()]

    def combine(self, rows: np.ndarray) -> np.ndarray:
        """One row from the rows of the same step on several replicas (``rows[0]``: the
        publishing replica's), each column as :data:`~lossprobe.capture.spec.RANK_COMBINE`
        says; LOCAL columns keep ``rows[0]``'s values.

        Example::

            cols.combine(np.stack([row_replica0, row_replica1]))   # loss: mean, batch: sum, ...
        """
        rows = np.asarray(rows, dtype=float)
        out = rows[0].copy()
        if len(rows) > 1:
            for how, cols in self._combine:
                out[cols] = combine(how, rows[:, cols])
        return out

    def empty_row(self) -> np.ndarray:
        return np.full(self.width, np.nan)

    def decode(self, step: int, row: np.ndarray) -> StepRecord:
        """A StepRecord from one row (nan = not measured)."""
        return self.decode_rows([step], np.asarray(row, dtype=float)[None, :])[0]

    def decode_rows(self, steps: Sequence[int], rows: np.ndarray) -> list[StepRecord]:
        """StepRecords from rows (one per step; nan = not measured), as :meth:`decode` makes
        each: every column is read out of the whole block at once, and each record gets its
        rows of the per-parameter and per-activation blocks (views of one copy)."""
        rows = np.asarray(rows, dtype=float)
        n = len(steps)
        blocks = {name: rows[:, a:b].copy() for name, a, b in self._param_spans}
        a, b = self._spans["act"]
        per = rows[:, a:b].reshape(n, self.n_acts, len(STATS["act"].fields))
        for k, name in enumerate(STATS["act"].field_names):
            blocks[name] = per[:, :, k].copy()
        blocks.update(grad_blocks(blocks["param_grad_norms"]))
        grad_norm = blocks.pop("grad_norm")
        scalars = rows[:, self._scalar_cols].tolist()
        names, cols = list(blocks), [list(m) for m in blocks.values()]
        out = []
        for i, step in enumerate(steps):
            rec = StepRecord.__new__(StepRecord)   # every field is set here, from the row
            fields = dict(zip(self._scalar_names, scalars[i]), step=int(step), rank=0)
            fields.update(zip(names, [c[i] for c in cols]))
            fields["grad_norm"] = grad_norm[i]
            rec.__dict__.update(fields)
            if rec.loss_seen != 1.0:
                rec.loss, rec.loss_seen = math.nan, 0.0
            # the gradient already in .grad at the first backward, relative to the applied one
            if not math.isnan(rec.grad_carried):
                rec.grad_carried = rec.grad_carried / rec.grad_norm if rec.grad_norm > 0 else \
                    (0.0 if rec.grad_carried == 0 else math.nan)
            out.append(rec)
        return out


def grad_blocks(g: np.ndarray) -> dict[str, Any]:
    """:func:`decode_grads` of a block of rows (one step each) at once: ``g`` becomes the
    per-parameter norms (sentinels turned to nan, in place); the masks as blocks and each
    row's global gradient norm as a list of floats."""
    missing, unmeasured = g == MISSING, g == UNMEASURED
    g[g < 0] = np.nan
    measured = ~missing & ~unmeasured
    if measured.all():   # every row whole: one reduction (each row summed as on its own)
        norms = np.sqrt(np.sum(g ** 2, axis=1)).tolist() if g.shape[1] else [math.nan] * len(g)
    else:
        norms = [_global_norm(row[m]) for row, m in zip(g, measured)]
    return {"param_grad_norms": g, "param_grad_missing": missing, "param_grad_unmeasured": unmeasured,
            "grad_norm": norms}


def _global_norm(measured: np.ndarray) -> float:
    """The L2 norm over the measured per-parameter norms (nan when none was measured)."""
    return float(np.sqrt(np.sum(measured.astype(np.float64) ** 2))) \
        if measured.size and not np.isnan(measured).all() else math.nan


def decode_grads(rec: StepRecord, g: np.ndarray) -> None:
    """The gradient fields of ``rec`` from per-parameter norms with the MISSING/UNMEASURED
    sentinels (``g`` becomes ``rec.param_grad_norms``, sentinels turned to nan): the masks
    and the global gradient norm over the measured parameters (:func:`grad_blocks` of one row)."""
    block = grad_blocks(g[None, :])   # row 0 is a view of g: its sentinels become nan in g
    rec.param_grad_norms = g
    rec.param_grad_missing = block["param_grad_missing"][0]
    rec.param_grad_unmeasured = block["param_grad_unmeasured"][0]
    rec.grad_norm = block["grad_norm"][0]


def grad_sentinels(rec: StepRecord) -> np.ndarray:
    """``rec``'s per-parameter gradient norms with the sentinels back in (what
    :func:`decode_grads` reads)."""
    g = np.array(rec.param_grad_norms, dtype=float)
    g[rec.param_grad_missing] = MISSING
    g[rec.param_grad_unmeasured] = UNMEASURED
    return g


class StepValues:
    """One step's statistics while they still live on the device (eager backends).

    ``put(columns, value, scale)``: a device tensor (or a list of 0-d tensors) for those
    columns; ``scale``: host factors it is multiplied by when read, or a function of the
    read values (:func:`~lossprobe.capture.stats.nonfinite_flag`: a test made once per
    flush on the host instead of once per step on the device). ``host(columns, values)``:
    values already known on the host."""

    __slots__ = ("step", "sampled", "device", "known")

    def __init__(self, step: int, sampled: bool):
        self.step, self.sampled = step, sampled
        self.device: list[tuple[np.ndarray, Any, np.ndarray | None]] = []
        self.known: list[tuple[np.ndarray, np.ndarray]] = []

    def put(self, columns: np.ndarray, value: Any, scale: np.ndarray | Callable | None = None) -> None:
        self.device.append((columns if type(columns) is np.ndarray else np.asarray(columns), value, scale))

    def host(self, columns: np.ndarray, values) -> None:
        self.known.append((columns if type(columns) is np.ndarray else np.asarray(columns), values))


def pack(ops, steps: Sequence[StepValues], extra: Sequence[Any] = ()) -> tuple[Any, list]:
    """All device values of ``steps`` (and ``extra`` tensors, e.g. validation losses) as one
    flat device tensor -- every one-element value first, in one stack, then the vectors --
    and the plan to unpack its host copy."""
    entries = [(i, cols, value, scale) for i, s in enumerate(steps) for cols, value, scale in s.device]
    entries += [(-1 - k, None, v, None) for k, v in enumerate(extra)]
    scalars: list[Any] = []
    vectors: list[Any] = []
    placed: list[tuple[int, np.ndarray | None, list, np.ndarray | None]] = []
    for i, cols, value, scale in entries:
        if isinstance(value, (list, tuple)):   # one-element values (gradient norms): no size asked
            where = [(0, len(scalars), len(value))]
            scalars.extend(value)
        else:
            n = ops.size(value)
            where = [(0, len(scalars), 1)] if n == 1 else [(1, len(vectors), n)]
            (scalars if n == 1 else vectors).append(value)
        placed.append((i, cols, where, scale))
    if not scalars and not vectors:
        return None, []
    starts = np.cumsum([len(scalars)] + [ops.size(v) for v in vectors])
    plan = []
    for i, cols, where, scale in placed:
        spans = [(k, k + n) if seg == 0 else (int(starts[k]), int(starts[k]) + n) for seg, k, n in where]
        if all(b == spans[j + 1][0] for j, (_, b) in enumerate(spans[:-1])):   # contiguous: one slice
            plan.append((i, cols, spans[0][0], spans[-1][1] - spans[0][0], scale))
        else:
            plan.append((i, cols, np.concatenate([np.arange(a, b) for a, b in spans]), None, scale))
    return ops.cat_flat(scalars, vectors), plan


def unpack(columns: Columns, steps: Sequence[StepValues], host: np.ndarray | None, plan: list) -> np.ndarray:
    """The rows of ``steps`` (one per step) from the host copy of :func:`pack`'s tensor."""
    rows = np.full((len(steps), columns.width), np.nan)
    for row, s in zip(rows, steps):
        for cols, vals in s.known:
            row[cols] = vals
    for i, cols, a, n, scale in plan:
        if i >= 0:
            vals = _read(host, a, n)
            rows[i, cols] = vals if scale is None else scale(vals) if callable(scale) else vals * scale
    return rows


def extras(host: np.ndarray | None, plan: list) -> list[np.ndarray]:
    """The ``extra`` values :func:`pack` was given, from its host copy, in order."""
    return [np.asarray(_read(host, a, n), dtype=float) for i, _, a, n, _ in plan if i < 0]


def _read(host: np.ndarray, at, n):
    """A plan entry's values: a slice (``at``, ``n``) or, for pieces packed apart, an index array."""
    return host[at] if n is None else host[at:at + n]
