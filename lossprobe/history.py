"""Bounded history of StepRecords: memory does not grow with run length.

Two views are kept:

* a *recent window* (``window`` steps) of every field, as numpy ring buffers —
  what the rules read;
* a *whole-run sketch* of the loss (and validation loss): at most ``sketch`` points,
  halved (every other point dropped) whenever full, so a million-step run still
  has an evenly spaced outline for plots and trend rules.

Example::

    h = History(layout, window=512)
    h.append(record)
    h.series("loss")          # recent losses, oldest first
    h.loss_sketch()           # (steps, losses) over the whole run
    h.facts.n_classes         # what the backend learned (Facts(); the latest flush's)
"""
from __future__ import annotations

import math
import operator
from typing import Sequence

import numpy as np

from .record import ACTIVATION_FIELDS, MASK_FIELDS, PARAM_FIELDS, SCALAR_FIELDS, Facts, Layout, StepRecord

_scalars_of = operator.attrgetter(*SCALAR_FIELDS)   # a record's scalar fields, as a tuple

# The initial loss is taken over the first steps until this many samples were seen (one step
# at ordinary batch sizes), and over no more than this many steps.
INITIAL_SAMPLES = 8
INITIAL_STEPS = 8


class _Ring:
    """The last ``capacity`` rows appended, oldest first, always contiguous: rows are written
    one after another into a buffer a quarter longer than the capacity; when it is full, the
    rows still in the window move to the front of a new buffer. A view is a slice (no copy
    per evaluation), and a view once handed out never changes: writes go past its end, and a
    full buffer is replaced, not overwritten."""

    def __init__(self, capacity: int, row_shape: tuple[int, ...] = (), dtype=float):
        self.capacity = capacity
        self._fill = np.nan if dtype is float else 0
        self.data = np.full((capacity + max(1, capacity // 4), *row_shape), self._fill, dtype=dtype)
        self.end = 0    # rows written into data; the window is the last min(count, capacity)
        self.count = 0  # total rows ever appended
        self._view: np.ndarray | None = None   # the window, until the next write

    def append(self, row) -> None:
        if self.end == len(self.data):
            self._renew(1)
        self.data[self.end] = row
        self.end += 1
        self.count += 1
        self._view = None

    def extend(self, rows: np.ndarray) -> None:
        """Append ``rows`` in order (what ``append`` of each does, in one write)."""
        kept = rows[-self.capacity:]            # more rows than the ring holds: the last ones
        if self.end + len(kept) > len(self.data):
            self._renew(len(kept))
        self.data[self.end:self.end + len(kept)] = kept
        self.end += len(kept)
        self.count += len(rows)
        self._view = None

    def _renew(self, incoming: int) -> None:
        """A new buffer, holding at its front the rows that stay in the window once
        ``incoming`` more arrive."""
        keep = min(self.count, self.capacity - incoming)
        new = np.full_like(self.data, self._fill)
        new[:keep] = self.data[self.end - keep:self.end]
        self.data, self.end = new, keep

    def view(self) -> np.ndarray:
        """Rows oldest first, read-only (one slice between writes: the rules of one evaluation
        read the same series many times)."""
        if self._view is None:
            self._view = self.data[self.end - min(self.count, self.capacity):self.end]
            self._view.flags.writeable = False
        return self._view


class _Sketch:
    """Evenly decimated (step, value) pairs over the whole run, bounded in size."""

    def __init__(self, capacity: int):
        self.capacity = max(4, capacity)
        self.steps: list[int] = []
        self.values: list[float] = []
        self.stride = 1
        self._seen = 0

    def append(self, step: int, value: float) -> None:
        if self._seen % self.stride == 0:
            self.steps.append(step)
            self.values.append(value)
            if len(self.steps) >= self.capacity:
                self.steps, self.values = self.steps[::2], self.values[::2]
                self.stride *= 2
        self._seen += 1


class History:
    """Recent window of all StepRecord fields plus a whole-run loss sketch."""

    def __init__(self, layout: Layout, window: int = 1024, sketch: int = 2000, facts: Facts | None = None):
        self.layout = layout
        self.facts = facts if facts is not None else Facts()
        self.window = window
        n_p, n_a = len(layout.params), len(layout.activations)
        self._steps = _Ring(window, dtype=np.int64)
        self._scalars = {name: _Ring(window) for name in SCALAR_FIELDS}
        self._params = {name: _Ring(window, (n_p,)) for name in PARAM_FIELDS}
        self._masks = {name: _Ring(window, (n_p,), dtype=bool) for name in MASK_FIELDS}
        self._acts = {name: _Ring(window, (n_a,)) for name in ACTIVATION_FIELDS}
        self._fields = {**self._scalars, **self._params, **self._masks, **self._acts}   # by StepRecord field
        self._loss_sketch = _Sketch(sketch)
        self._val_sketch = _Sketch(sketch)
        # whole-run facts that rules need without the window
        self.n_steps = 0
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.initial_loss = math.nan
        self._initial: list[float] = []
        self._initial_samples = 0.0
        self._initial_done = False
        self.min_loss = math.inf
        self.ever_had_grad = np.zeros(n_p, bool)
        self.first_param_norms = np.full(n_p, np.nan)
        self._memo: dict = {}   # what several rules of one evaluation compute alike (see memo)
        self._kept: dict = {}   # per-record values kept from one evaluation to the next (see per_record)

    # -- writing ---------------------------------------------------------
    def append(self, rec: StepRecord) -> None:
        """Append one record (:meth:`extend` appends a flush's records at once)."""
        self._memo.clear()
        self._steps.append(rec.step)
        for name, ring in self._fields.items():
            ring.append(getattr(rec, name))
        self._note_run([rec])
        self._note_params(rec.param_grad_missing[None, :], rec.param_norms[None, :])

    def extend(self, records: Sequence[StepRecord]) -> None:
        """Append records in order: each field of all of them as one block (a flush's records
        cost a few numpy writes per field, not one per record and field)."""
        if not records:
            return
        self._memo.clear()
        self._steps.extend(np.array([r.step for r in records], dtype=np.int64))
        scalars = np.array([_scalars_of(r) for r in records], dtype=float)
        for k, name in enumerate(SCALAR_FIELDS):
            self._scalars[name].extend(scalars[:, k])
        blocks = {}
        for rings in (self._params, self._masks, self._acts):
            for name, ring in rings.items():
                blocks[name] = np.array([getattr(r, name) for r in records], dtype=ring.data.dtype)
                ring.extend(blocks[name])
        self._note_run(records)
        self._note_params(blocks["param_grad_missing"], blocks["param_norms"])

    def _note_run(self, records: Sequence[StepRecord]) -> None:
        """Whole-run facts of the loss and the steps from records, in order."""
        for rec in records:
            if self.first_step is None:
                self.first_step = rec.step
            self.last_step = rec.step
            self.n_steps += 1
            if rec.loss_seen and math.isfinite(rec.loss):
                self._note_initial(rec)
                self.min_loss = min(self.min_loss, rec.loss)
                self._loss_sketch.append(rec.step, rec.loss)

    def _note_params(self, missing: np.ndarray, norms: np.ndarray) -> None:
        """Whole-run facts of the parameters from a block of records (a row each): which ever
        had a gradient, and the first record's norms (the first with any norm measured)."""
        if missing.shape[1]:
            self.ever_had_grad |= ~missing.all(axis=0)
        if norms.shape[1] and np.isnan(self.first_param_norms).all():
            measured = ~np.isnan(norms).all(axis=1)
            self.first_param_norms = np.array(norms[int(np.argmax(measured)) if measured.any() else -1], dtype=float)

    def _note_initial(self, rec: StepRecord) -> None:
        """The initial loss: the first step's, or with batches of a few samples the median over
        the first steps until ``INITIAL_SAMPLES`` samples (at most ``INITIAL_STEPS`` steps) when
        that is higher -- one sample's loss is no reference (at batch size 1 it can be 1e-4 on
        an untrained model)."""
        if self._initial_done:
            return
        self._initial.append(rec.loss)
        b = rec.batch_size if math.isfinite(rec.batch_size) and rec.batch_size > 0 else INITIAL_SAMPLES
        self._initial_samples += b
        # the lower median (of two losses the smaller: one blown-up step is no reference either),
        # never below the first step's: a loss that falls fast from step 0 starts at its first value
        low_median = sorted(self._initial)[(len(self._initial) - 1) // 2]
        self.initial_loss = max(self._initial[0], float(low_median))
        self._initial_done = self._initial_samples >= INITIAL_SAMPLES or len(self._initial) >= INITIAL_STEPS

    def set_facts(self, facts: Facts) -> None:
        """The latest facts a backend sent (the newest wins)."""
        self._memo.clear()
        self.facts = facts

    def add_val(self, step: int, val_loss: float) -> None:
        """Record one validation loss measured at training step ``step``."""
        self._memo.clear()
        self._val_sketch.append(step, float(val_loss))

    def memo(self, key, compute):
        """``compute()``, computed once while the history stays as it is: several rules of one
        evaluation ask for the same trend of the same window. ``key`` must name everything
        the result depends on besides the history (the config values it reads)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def per_record(self, key, rows: np.ndarray, compute, depends=None) -> np.ndarray:
        """Values, one per window row in ``rows`` (ascending), of something that never changes
        once those rows are recorded: a function of each record alone, or of it and the records
        before it that every window holding it still holds (the 30 losses before a loss).
        ``compute(start)`` returns the values of ``rows[start:]``; the values an earlier
        evaluation computed for rows still in the window are kept (by run-wide index, see
        :attr:`first_index`), so an evaluation computes only the rows new since then.
        ``depends``: what else the values depend on (a config value, a fact; compared with
        ``==``, so a number, string, bytes or tuple): when it changes, all are computed
        again. ``key`` names the computation.

        Example::

            h.per_record("grad_rms", np.arange(n), lambda start: rms_of(g[start:]))
        """
        index = self.first_index + np.asarray(rows)
        kept = self._kept.get(key)
        at = m = 0   # kept[2][at:at + m]: the values of the leading m rows
        if kept is not None and kept[0] == depends and index.size:
            at = int(np.searchsorted(kept[1], index[0]))
            m = min(kept[1].size - at, index.size)
            if not np.array_equal(kept[1][at:at + m], index[:m]):
                m = 0   # not the rows the kept values came from: compute all
        if m and m == index.size:
            values = kept[2][at:at + m]
        else:
            values = np.asarray(compute(m))
            if m:
                values = np.concatenate([kept[2][at:at + m], values])
            values.flags.writeable = False
        self._kept[key] = (depends, index, values)
        return values

    # -- reading ---------------------------------------------------------
    @property
    def first_index(self) -> int:
        """Run-wide index of the oldest step in the window (0: the first step ever appended):
        row ``i`` of every series and matrix holds the ``first_index + i``-th record appended."""
        return self._steps.count - min(self._steps.count, self._steps.capacity)

    def steps(self) -> np.ndarray:
        return self._steps.view()

    def series(self, name: str) -> np.ndarray:
        """Recent values of one scalar field, oldest first."""
        return self._scalars[name].view()

    def matrix(self, name: str) -> np.ndarray:
        """Recent per-parameter or per-activation rows: shape (steps, n)."""
        if name in self._params:
            return self._params[name].view()
        if name in self._masks:
            return self._masks[name].view()
        return self._acts[name].view()

    def loss_sketch(self) -> tuple[np.ndarray, np.ndarray]:
        s = self._loss_sketch
        return np.asarray(s.steps, dtype=np.int64), np.asarray(s.values, dtype=float)

    def val_sketch(self) -> tuple[np.ndarray, np.ndarray]:
        s = self._val_sketch
        return np.asarray(s.steps, dtype=np.int64), np.asarray(s.values, dtype=float)

    def nbytes(self) -> int:
        """Bytes held by the buffers (constant after construction, plus the bounded sketches)."""
        rings = [self._steps, *self._masks.values(), *self._scalars.values(), *self._params.values(), *self._acts.values()]
        sk = 16 * (len(self._loss_sketch.steps) + len(self._val_sketch.steps))
        return sum(r.data.nbytes for r in rings) + sk
