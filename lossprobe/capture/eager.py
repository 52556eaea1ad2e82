"""The step lifecycle the eager backends (torch, Paddle) share: open and close steps,
record statistics into the open step, validation losses, ``observe()``, and the flush
(one host read of everything pending, decoded off the training thread).

A backend subclasses :class:`EagerCapture`, calls :meth:`EagerCapture._init_capture` with
its layout, and keeps only its hooks and step boundaries; they call the ``_record_*``
methods, :meth:`_current` (open a step) and :meth:`_close_step`.

Example (inside a backend's hooks)::

    cur = self._current()
    self._record_inputs(cur, x)
    ...
    self._close_step()            # optimizer.step() happened
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Sequence

import numpy as np

from ..backends.base import CaptureGuard
from ..record import Flush, Layout, StepRecord
from . import stats
from .buffer import Columns, StepValues, extras, pack, unpack
from .facts import FactSheet, loss_from_graph, output_activation
from .ops import Ops, first_tensor
from .spec import MISSING, UNMEASURED, is_sampled, update_sample_index


class Step(StepValues):
    """One training step while its statistics live on the device."""

    __slots__ = ("losses", "forwards", "backwards", "auto_loss", "tentative", "grads", "acts_done",
                 "targets", "outputs_done", "carried", "clean_start")

    def __init__(self, step: int, sampled: bool):
        super().__init__(step, sampled)
        self.losses: list[Any] = []     # device scalars or host floats
        self.forwards = 0               # training forwards of the model in this step
        self.backwards = 0              # backward passes that reached the model's output
        self.auto_loss = False          # a loss the hooks captured (observe() does not add another)
        self.tentative = False          # an eval-mode forward: training only if optimizer.step() follows
        self.grads: tuple | None = None # the latest gradient read: (index, norms, scale, sentinels); index None: all
        self.acts_done: set[int] = set()
        self.targets: list[Any] = []    # target statistics of each loss of the step (a few at most)
        self.outputs_done = False
        self.carried: list[Any] = []    # |.grad| found before each backward of a sampled step
        self.clean_start = False        # some backward of the step started from cleared gradients


class EagerCapture(CaptureGuard):
    """Shared state and statistics of the eager backends (see the module docstring).

    A subclass sets ``ops`` and says how its framework's autograd nodes link
    (``_node_inputs``), which gradients a device op can read (``_grad_readable``) and, for
    sharded parameters, which piece of a tensor this process reads (``_local``)."""

    ops: Ops
    # the output hook may be left off on unsampled steps of a loop that backpropagates the
    # loss a loss hook gave (a backend whose backward needs nothing else from the hook)
    OUTPUT_HOOK_OPTIONAL = False

    @staticmethod
    def _node_inputs(node) -> list:
        raise NotImplementedError

    @staticmethod
    def _grad_readable(g) -> bool:
        return True

    @staticmethod
    def _local(t):
        """The tensor the device ops read for parameter or gradient ``t``: ``t`` itself, or
        this process's shard of a sharded one (combined across ranks at flush time)."""
        return t

    def _init_capture(self, layout: Layout, config: Any, params: Sequence, weight_idx: Sequence[int],
                      facts: FactSheet, readable: Sequence[int] | None = None) -> None:
        """``weight_idx``: the weight tensors (update ratios); ``readable``: the parameters a
        device op can read (their norms; default all)."""
        self.layout, self.cfg, self.facts = layout, config, facts
        self.columns = Columns(layout)
        self.params = list(params)
        self._readable = list(range(len(self.params))) if readable is None else list(readable)
        self.weight_idx = [i for i in (list(weight_idx) or range(len(self.params))) if i in set(self._readable)]
        self._upd_index = [update_sample_index(int(self.ops.size(self._local(self.params[i])))) for i in self.weight_idx]
        self.channel = None
        self.n_host_reads = 0
        self.validation_losses_seen = 0
        self._step = 0
        self._cur: Step | None = None
        self._pending: list[Step] = []
        self._val_pending: list[tuple[int, Any]] = []
        self._val_sum: Any = None
        self._val_n = 0
        self._before: list[Any] | None = None
        self._last_loss: Any = None
        self._disabled: set[str] = set()
        self._act_out: dict[int, int] = {}    # id(output tensor) -> activation index (this forward)
        self._producer: dict[int, tuple] = {} # id(output tensor) -> (weakref, the layer that made it), sampled steps
        self._reached = False                 # a backward reached this model's output
        self._outputs_known = False           # the output's facts were learned (at the first training forward)
        self._backward_from_loss = False      # the last backward started from the loss a loss hook gave
        self._unwatched = False               # this forward's output carries no backward hook
        self._loss_since_backward = False     # a loss hook / observe() gave the coming backward's loss

    # -- steps ------------------------------------------------------------------------
    def _current(self) -> Step:
        """The open step (opened now if none is): flushes first when ``flush_every`` are pending."""
        if self._cur is None:
            if len(self._pending) >= self.cfg.flush_every:
                self.flush()
            self._cur = Step(self._step, bool(is_sampled(self._step, self.cfg.activation_every)))
        return self._cur

    def _close_step(self) -> None:
        cur, self._cur = self._cur, None
        if cur is not None:
            self._pending.append(cur)
            self._step += 1

    def _loss_step(self) -> Step:
        """The step a loss belongs to: the open one, else the one optimizer.step() just closed."""
        if self._cur is not None and (self._cur.forwards or self._cur.grads is not None or not self._pending):
            return self._cur
        return self._pending[-1] if self._pending else self._current()

    # -- statistics of the open step ------------------------------------------------------
    def _record_inputs(self, cur: Step, args) -> None:
        x = first_tensor(self.ops, args)
        if x is None or not self.ops.is_float(x) or not self.ops.size(x):
            return
        c = self.columns
        shape = self.ops.shape(x)
        cur.host(c.span("batch"), [float(shape[0]) if shape else 1.0])   # a host int: no device read
        cur.put(c.span("input_nonfinite"), stats.input_sum(self.ops, x), stats.nonfinite_flag)
        if cur.sampled:
            cur.put(c.span("input"), stats.input_stats(self.ops, x))

    def _model_output(self, cur: Step, output, out) -> None:
        """The model's output (``out``: its tensor) on a training forward: a backward hook on
        it (loss and carried gradient attribution), its facts and, on sampled steps, its
        statistics."""
        if out is None:
            if "outputs-shape" not in self._disabled:
                self._disabled.add("outputs-shape")
                self._warn("outputs", f"model output of type {type(output).__name__} holds "
                           "no tensor; output statistics are off for this run")
            return
        self._unwatched = False
        if self.ops.requires_grad(out):
            if cur.sampled or not self._backward_from_loss:
                out.register_hook(self._output_reached)   # lives on the autograd graph, not on the model
            else:
                self._unwatched = True   # the backward's start tells (_reached_unwatched)
        if not self.cfg.capture_outputs or (not cur.sampled and self._outputs_known):
            return   # nothing more to learn from an unsampled step's output
        if not self.ops.is_float(out) or not self.ops.size(out):
            return
        if cur.sampled or not self.facts.knows("output_units"):
            shape, f = self.ops.shape(out), self.facts.facts
            self.facts.learn(output_units=int(shape[-1]) if shape else 1,
                             output_activation=output_activation(out.grad_fn, self._node_inputs) or f.output_activation,
                             output_activation_index=self._act_out.get(id(out), -1),
                             output_layer=self._producer_of(out) or f.output_layer)
            self._producer.clear()
            self._outputs_known = True
        if cur.sampled and not cur.outputs_done:
            cur.outputs_done = True
            cur.put(self.columns.span("output"), stats.output_stats(self.ops, out))

    def _note_producer(self, output, name: str) -> None:
        """Layer ``name`` made ``output`` (the innermost such layer is kept)."""
        ref, _ = self._producer.get(id(output), (None, ""))
        if ref is None or ref() is not output:
            self._producer[id(output)] = (weakref.ref(output), name)

    def _producer_of(self, out) -> str:
        ref, name = self._producer.get(id(out), (None, ""))
        return name if ref is not None and ref() is out else ""

    def _output_reached(self, grad):
        """Backward has come to the model's output: the parameters' gradients are accumulated
        after this, so ``.grad`` still holds what was there before this backward."""
        self._reached = True
        cur = self._cur
        if cur is not None and cur.sampled and not cur.clean_start:  # (grad mode is off inside backward)
            # only what the optimizer steps: a parameter it does not hold keeps its gradient by
            # design (zero_grad clears the optimizer's parameters), and frozen_parameters names it
            held = self.facts.facts.in_optimizer
            params = self.params if held is None else [p for p, h in zip(self.params, held) if h]
            grads = [self._local(p.grad) for p in params if p.grad is not None]
            self._safe("backward", self._record_carried, cur, [g for g in grads if self._grad_readable(g)])
        return None

    def _after_backward(self, tensors) -> None:
        """After a backward that reached the model's output: a loss no hook or observe() gave
        is the tensor backward() ran from, however it was computed."""
        if self._cur is None:
            return
        loss = first_tensor(self.ops, tensors)
        loss = getattr(loss, "_lossprobe_unscaled", loss)   # AMP's loss scaling undone (torch)
        if not self._reached and not (self._unwatched and self._reached_unwatched(loss)):
            return
        self._reached = self._unwatched = False
        cur = self._cur
        cur.backwards += 1
        self._backward_done(cur)
        # the loop's pattern: backward from the loss a loss hook just gave. Its unsampled steps
        # then need no hook on the output (a hook and its call in every backward)
        self._backward_from_loss = self.OUTPUT_HOOK_OPTIONAL and self._loss_since_backward \
            and loss is self._last_loss
        if self._loss_since_backward:
            self._loss_since_backward = False
            return
        if loss is not None and self.ops.size(loss) == 1 and loss is not self._last_loss:
            self._record_loss(cur, loss, auto=True)
            if not self.facts.knows("loss_kind"):
                self.facts.learn(**loss_from_graph(loss.grad_fn, self._node_inputs))

    # -- objects known by identity (loss modules/layers): a lookup that makes no weakref ----
    KNOWN_PRUNE = 64   # entries past which dead ones are dropped (a loss module made every step)

    @staticmethod
    def _known(table: dict, obj) -> bool:
        """Is ``obj`` in ``table`` (``id -> (weakref, ...)``)? A WeakSet/WeakKeyDictionary
        makes a weakref on every lookup, once per step on the hot path."""
        entry = table.get(id(obj))
        return entry is not None and entry[0]() is obj

    def _remember(self, table: dict, obj, *values) -> None:
        """Enter ``obj`` (and ``values``) in ``table``; dead entries go once it has grown."""
        if len(table) >= self.KNOWN_PRUNE:
            for key in [k for k, e in table.items() if e[0]() is None]:
                del table[key]
        table[id(obj)] = (weakref.ref(obj), *values)

    def _reached_unwatched(self, loss) -> bool:
        """Did a backward from ``loss`` reach the model's output, which carried no hook? Yes
        when ``loss`` is the loss a loss hook gave this step; a subclass may follow the graph."""
        return loss is not None and loss is self._last_loss and self._loss_since_backward

    def _backward_done(self, cur: Step) -> None:
        """A backward reached the model (subclasses: more to do then)."""

    def _loss_output(self, cur: Step, loss, facts: dict | None, targets=None) -> None:
        """A training loss a loss hook caught (a loss module/layer), with its facts (None:
        nothing new since the last call) and targets."""
        if facts:
            self.facts.learn(**facts)
        self._record_loss(cur, loss, auto=True)
        self._loss_since_backward = True
        if targets is not None:
            self._record_target(cur, targets)

    def _record_activation(self, cur: Step, j: int, output) -> None:
        """Watched activation ``j``'s output on a sampled training step (a unit of a 4-D
        NCHW map is a channel, else a feature)."""
        y = first_tensor(self.ops, output)
        if y is None:
            return
        self._act_out[id(y)] = j
        if not self.ops.is_float(y) or not self.ops.size(y) or j in cur.acts_done:
            return
        cur.acts_done.add(j)
        axis = 1 if len(self.ops.shape(y)) == 4 else -1
        cur.put(self.columns.span("act", j), stats.activation_stats(self.ops, y, self.layout.kinds[j], axis))

    MAX_TARGETS = 4   # losses per step whose targets are measured

    def _record_target(self, cur: Step, y) -> None:
        if not cur.sampled or len(cur.targets) >= self.MAX_TARGETS or not self.ops.is_tensor(y) or not self.ops.size(y):
            return
        f = self.facts.facts
        shape = self.ops.shape(y)
        classes = f.output_units if f.output_units >= 2 else 0
        one_hot = self.ops.is_float(y) and len(shape) >= 2 and classes >= 2 and shape[-1] == classes \
            and f.loss_kind in ("cross_entropy", "nll")
        cur.targets.append(stats.target_stats(self.ops, y, classes, one_hot, as_index=False))

    def _record_loss(self, cur: Step, loss: Any, auto: bool) -> None:
        is_tensor = self.ops.is_tensor(loss)
        cur.losses.append(self.ops.scalar(loss) if is_tensor else float(loss))
        cur.auto_loss = cur.auto_loss or auto
        self._last_loss = loss

    def _record_grads(self, cur: Step, grads: list, index: list[int], missing: Sequence[int],
                      unmeasured: Sequence[int], norms: list | None = None, scale: np.ndarray | None = None) -> None:
        """Per-parameter gradient norms: ``grads`` of the parameters ``index`` (their norms
        computed here unless given), the others missing or unmeasured. A later read of the
        same step (gradients re-read after an optimizer closure) replaces this one."""
        sentinels = None
        if missing or unmeasured:
            sentinels = np.full(len(self.params), np.nan)
            sentinels[list(missing)] = MISSING
            sentinels[list(unmeasured)] = UNMEASURED
        if grads and norms is None:
            norms = self.ops.norm_row(grads)
        cur.grads = (list(index), norms if grads else None, scale, sentinels)

    def _sort_grads(self, found: Sequence, readable) -> tuple[list, list[int], list[int], list[int]]:
        """(gradients, their parameter indices, missing, unmeasured) from each parameter's
        gradient or None; ``readable(g)``: a device op can read it (else it is unmeasured,
        said once in the log)."""
        grads, idx, missing, unmeasured = [], [], [], []
        for i, g in enumerate(found):
            if g is None:
                missing.append(i)
            elif not readable(g):
                unmeasured.append(i)
            else:
                grads.append(g)
                idx.append(i)
        if unmeasured:
            self._warn("unmeasured-gradients", f"the gradients of {len(unmeasured)} parameter(s) "
                       f"({self.layout.params[unmeasured[0]]}, ...) cannot be read here (sparse, DTensor or "
                       "traced): they are unmeasured, not faults")
        return grads, idx, missing, unmeasured

    def _record_lr(self, cur: Step, lr: Any) -> None:
        if self.ops.is_tensor(lr):
            cur.put(self.columns.span("lr"), self.ops.scalar(lr))
        elif lr is not None and not (isinstance(lr, float) and math.isnan(lr)):
            cur.host(self.columns.span("lr"), [float(lr)])

    def _record_bn_eval(self, cur: Step, layers: Sequence) -> None:
        if cur.sampled and layers:
            cur.host(self.columns.span("bn_eval"), [float(sum(1 for m in layers if not m.training))])

    def _record_carried(self, cur: Step, grads: list) -> None:
        """Before each backward of a sampled step that reaches the model: the norm of the
        gradient already sitting in ``.grad``. The step keeps the smallest (decoded relative
        to the step's gradient): 0 when some backward of the step started from cleared
        gradients, ~1 when none did -- a loop without ``zero_grad()`` adds each step's gradient
        to all the ones before. A GAN's generator backward runs through the discriminator
        after the discriminator's step, but the discriminator's own backward starts clean."""
        if not cur.sampled or cur.clean_start:
            return
        if not grads:
            cur.clean_start, cur.carried = True, []
            return
        cur.carried.append(self.ops.sqrt(stats.squared_norm(self.ops, grads)))

    def _snapshot(self, cur: Step) -> None:
        """Before a sampled step's update: parameter norms and the weight samples."""
        if self._readable:
            cur.put(self.columns.span("param_norm")[self._readable],
                    stats.param_norms(self.ops, [self._local(self.params[i]) for i in self._readable]))
        self._before = [stats.weight_sample(self.ops, self._local(self.params[i]), idx)
                        for i, idx in zip(self.weight_idx, self._upd_index)] or None

    def _record_updates(self, cur: Step) -> None:
        """After the update: |dW| / |W| on the samples of :meth:`_snapshot`."""
        before, self._before = self._before, None
        if before is None:
            return
        after = [stats.weight_sample(self.ops, self._local(self.params[i]), idx)
                 for i, idx in zip(self.weight_idx, self._upd_index)]
        cur.put(self.columns.span("update")[self.weight_idx], stats.update_ratios(self.ops, before, after))

    # -- validation --------------------------------------------------------------------------
    def _add_val(self, loss: Any) -> None:
        """A validation loss (accumulated on the device, emitted at the next training step)."""
        v = self.ops.scalar(loss) if self.ops.is_tensor(loss) else float(loss)
        self._val_sum = v if self._val_sum is None else self._val_sum + v
        self._val_n += 1

    def _val_step(self) -> int:
        """Training steps done when a validation loss is measured (its x position)."""
        return max(0, self._step - 1)

    def _emit_val(self) -> None:
        if self._val_n:
            self._val_pending.append((self._val_step(), self._val_sum / self._val_n))
            self._val_sum, self._val_n = None, 0

    # -- observe() -------------------------------------------------------------------------------
    def observe(self, loss, targets, val_loss, gradients, step) -> None:
        if val_loss is not None:
            v = self.ops.scalar(val_loss) if self.ops.is_tensor(val_loss) else float(val_loss)
            self._val_pending.append((self._val_step(), v))
        if loss is None and targets is None:
            return
        is_tensor = self.ops.is_tensor(loss)
        if loss is not None and not self._training() and not (is_tensor and self.ops.requires_grad(loss)):
            if val_loss is None:  # a loss computed in eval()/no_grad() is validation, never training loss
                self._add_val(loss)
            return
        target = self._loss_step()
        if loss is not None and not target.auto_loss and loss is not self._last_loss:
            self._record_loss(target, loss, auto=False)
            # given before its backward(): that backward brings no second loss
            self._loss_since_backward = target is self._cur
        if targets is not None:
            self._record_target(target, targets)

    def _training(self) -> bool:
        raise NotImplementedError

    # -- flush: the one host read ---------------------------------------------------------------
    def _take_pending(self) -> tuple[list[Step], list[tuple[int, Any]]]:
        self._emit_val()
        steps, self._pending = self._pending, []
        vals, self._val_pending = self._val_pending, []
        return steps, vals

    def flush(self) -> None:
        """Read every pending statistic to the host in one copy and hand the flush over; a
        failure (a value no device op can read) drops these steps, never the training."""
        try:
            self._flush()
        except Exception as exc:
            self._warn("flush", f"a flush failed ({type(exc).__name__}: {exc}); its steps are dropped, "
                       "training continues")

    def _flush(self) -> None:
        steps, vals = self._take_pending()
        if not steps and not vals:
            return
        host_vals, extra_dev = self._finish_losses(steps, vals)
        flat, plan = pack(self.ops, steps, extra_dev + self._extra_tensors())
        host = None
        if flat is not None:
            host = self.ops.to_host(flat)   # the single device->host copy of this flush
            self.n_host_reads += 1
        extra_host = extras(host, plan)
        val_points = [(s, float(v if not self.ops.is_tensor(v) else extra_host.pop(0)[0])) for s, v in host_vals]
        self._hand_over(steps, host, plan, val_points, extra_host)

    def _finish_losses(self, steps: list[Step], vals: list) -> tuple[list, list]:
        """Each step's loss (the mean of its losses) and gradient norms into its row;
        validation losses on the device go into the flush's one copy."""
        col, grad_col = self.columns.span("loss"), self.columns.span("grad")
        carried_col = self.columns.span("carried")
        for s in steps:
            if s.clean_start:
                s.host(carried_col, [0.0])
            elif s.carried:
                s.put(carried_col, s.carried[0] if len(s.carried) == 1 else self.ops.amin(self.ops.stack(s.carried)))
            if s.targets:
                s.put(self.columns.span("target"), stats.combine_targets(self.ops, s.targets))
            if s.grads is not None:
                index, norms, scale, sentinels = s.grads
                if sentinels is not None:
                    s.host(grad_col, sentinels)
                if norms is not None:
                    s.put(grad_col if index is None else grad_col[index], norms, scale)
            if not s.losses:
                continue
            device = [l for l in s.losses if self.ops.is_tensor(l)]
            if device and len(device) == len(s.losses):
                mean = device[0] if len(device) == 1 else self.ops.mean(self.ops.stack(device))
                s.put(col[:1], mean)
                s.host(col[1:], [1.0])
            elif not device:
                s.host(col, [float(np.mean(s.losses)), 1.0])
            else:
                floats = [self.ops.full(l, device[0]) if not self.ops.is_tensor(l) else l for l in s.losses]
                s.put(col[:1], self.ops.mean(self.ops.stack(floats)))
                s.host(col[1:], [1.0])
        return vals, [v for _, v in vals if self.ops.is_tensor(v)]

    def _extra_tensors(self) -> list:
        """More device values for this flush's one copy (the data-parallel helper's)."""
        return []

    def _hand_over(self, steps: list[Step], host, plan: list, val_points: list, extra_host: list) -> None:
        """Give the flush to the probe: unpacked and decoded on its worker thread."""
        if self.channel is not None:
            self.channel.ingest(Flush(decode=lambda pause: (self._decode(steps, host, plan, pause), ()),
                                      val_points=val_points, facts=self.facts.facts))

    def _decode(self, steps: list[Step], host, plan: list, pause=None) -> list[StepRecord]:
        """StepRecords from the host copy (numpy only); ``pause`` now and then."""
        rows = unpack(self.columns, steps, host, plan)
        if pause is not None:
            pause()
        return self.columns.decode_rows([s.step for s in steps], rows)
