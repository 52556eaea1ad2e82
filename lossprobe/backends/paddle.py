"""Paddle backend: layer hooks, parameter gradient hooks, on-device reductions.

Two ways to train are covered, with the same Probe API and the same codes::

    # 1. a plain dygraph loop: one extra line hands over the loss and its targets
    probe = lossprobe.attach(net)                 # optionally optimizer=opt
    for x, y in loader:
        loss = loss_fn(net(x), y)
        loss.backward(); opt.step(); opt.clear_grad()
        probe.observe(loss, targets=y)
    probe.detach()

    # 2. the high-level API: nothing else to add
    model = paddle.Model(net)
    model.prepare(opt, paddle.nn.CrossEntropyLoss())
    with lossprobe.attach(model) as probe:         # or attach(net)
        model.fit(train_data, eval_data=val_data, epochs=5)

Paddle has no global layer hook and no optimizer step hook, so the pieces are:

* forward pre/post hooks on the root layer: input statistics, ``|logits|.max()``;
  a training-mode forward opens a step;
* forward post hooks on ReLU / Sigmoid / Tanh / Softmax / BatchNorm sublayers
  (activation statistics, every ``activation_every`` steps);
* ``Tensor.register_hook`` on every trainable parameter: which gradients arrived, and
  (when no optimizer is wrapped) the squared L2 norm of each, computed on the device as
  it arrives; with a wrapped optimizer the norms are read from ``p.grad`` at its
  ``step()``/``minimize()``, so accumulated gradients are measured exactly;
* the step boundary, in the first of these that applies:
  ``paddle.Model.train_batch`` (wrapped on the instance; ``Model.fit`` calls it),
  the optimizer given to ``attach`` (its ``step``/``minimize`` wrapped on the instance),
  else the next training-mode forward of the root layer once gradients have arrived;
* the loss: the ``paddle.Model``'s loss (set by ``prepare``) is hooked, as is any loss
  layer (``paddle.nn.CrossEntropyLoss`` ...) that is a sublayer of the model; in a
  dygraph loop ``probe.observe(loss, targets=y)`` hands it over. Losses seen in
  ``eval()`` mode or under ``paddle.no_grad()`` are validation losses, never steps.

When ``attach`` gets the bare network and training runs through ``paddle.Model.fit``,
the first forward finds the ``paddle.Model`` that called it (by looking a few stack
frames up) and links to it, so the loss and the validation loss are still captured.

Limits: in a loop without ``optimizer=`` each training forward after a backward starts a
new step, so pass ``optimizer=opt`` when gradients are accumulated over several forwards.
Squared norms are float32: a gradient norm past ~1.8e19 reads as non-finite. Static-graph
programs (``paddle.jit.to_static``, ``paddle.enable_static``) run no Python hooks.

Every pending device value is concatenated and read to the host once per
``flush_every`` steps (``n_host_reads`` counts those reads); nothing in a hook reads
a tensor's value on the host. Every wrapped method is restored by ``detach()``.
"""
from __future__ import annotations

import math
import sys
import weakref
from typing import Any, Callable

import numpy as np
import paddle
from paddle import nn

from .base import CaptureGuard
from ..capture.facts import FactSheet, output_activation
from ..record import Flush, Layout, StepRecord

_BN_BASE = getattr(getattr(nn, "layer", None) and nn.layer.norm, "_BatchNormBase", None)
_BN_TYPES: tuple[type, ...] = (_BN_BASE,) if isinstance(_BN_BASE, type) else tuple(
    c for c in (getattr(nn, n, None) for n in ("BatchNorm", "BatchNorm1D", "BatchNorm2D", "BatchNorm3D",
                                                "SyncBatchNorm")) if isinstance(c, type))
_ACTIVATION_KINDS: list[tuple[tuple[type, ...], str]] = [
    ((nn.ReLU, nn.ReLU6), "relu"), ((nn.Sigmoid,), "sigmoid"), ((nn.Tanh,), "tanh"),
    ((nn.Softmax,), "softmax"), (_BN_TYPES, "batchnorm"),
]
_LOSS_KINDS: list[tuple[str, str]] = [
    ("CrossEntropyLoss", "cross_entropy"), ("NLLLoss", "nll"), ("BCEWithLogitsLoss", "bce_logits"),
    ("BCELoss", "bce"), ("MSELoss", "mse"), ("L1Loss", "mse"), ("SmoothL1Loss", "mse"), ("HuberLoss", "mse"),
]
_ATTACHED: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _activation_kind(layer: nn.Layer) -> str | None:
    for classes, kind in _ACTIVATION_KINDS:
        if classes and isinstance(layer, classes):
            return kind
    return None


def _loss_kind(fn: Any) -> str:
    """Loss kind by class name (paddle.nn loss layers); '' when unknown."""
    for cls in type(fn).__mro__:
        for name, kind in _LOSS_KINDS:
            if cls.__name__ == name and cls.__module__.startswith("paddle."):
                if kind == "cross_entropy" and getattr(fn, "use_softmax", True) is False:
                    return "nll"  # expects probabilities, like NLL expects log-probabilities
                return kind
    return ""


def _loss_facts(fn: Any) -> dict[str, Any]:
    kind = _loss_kind(fn)
    name = type(fn).__name__ if isinstance(fn, nn.Layer) else getattr(fn, "__name__", type(fn).__name__)
    logits = {"cross_entropy": True, "bce_logits": True, "nll": False, "bce": False}.get(kind)
    return {"loss_kind": kind, "loss_name": name, "loss_from_logits": logits}


def _is_loss_layer(layer: nn.Layer) -> bool:
    return type(layer).__module__.startswith("paddle.nn.layer.loss")


def _first_tensor(obj: Any) -> paddle.Tensor | None:
    """The tensor a model's output (or input) most likely means: a tensor as-is; dicts by
    'logits'/'output' keys, else the first tensor value; tuples/lists: the first tensor."""
    if isinstance(obj, paddle.Tensor):
        return obj
    if isinstance(obj, dict):
        for key in ("logits", "output", "out", "y_pred"):
            if isinstance(obj.get(key), paddle.Tensor):
                return obj[key]
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _numel(t: paddle.Tensor) -> int:
    n = 1
    for d in t.shape:
        n *= int(d)
    return n


def _f32(t: paddle.Tensor) -> paddle.Tensor:
    return t if t.dtype == paddle.float32 else t.astype("float32")


def _nan(like: paddle.Tensor) -> paddle.Tensor:
    """A NaN scalar made on ``like``'s device (by a device op, not a host copy)."""
    return paddle.full_like(like, math.nan)


def _sumsq(t: paddle.Tensor) -> paddle.Tensor:
    """Sum of squares in float32 (20x faster than paddle.linalg.norm on CPU); sqrt on the host."""
    return paddle.square(_f32(t)).sum()


def _std(x: paddle.Tensor) -> paddle.Tensor:
    """Population std (Tensor.std() makes Paddle log a dtype-promotion warning)."""
    return paddle.sqrt(paddle.square(x - x.mean()).mean())


def _lr_of(opt: Any) -> float:
    """The optimizer's learning rate as a host float, without reading a device tensor."""
    if opt is None:
        return math.nan
    lr = getattr(opt, "_learning_rate", None)
    sched = getattr(getattr(paddle.optimizer, "lr", None), "LRScheduler", ())
    if isinstance(lr, (int, float)) or (sched and isinstance(lr, sched)):
        try:
            return float(opt.get_lr())
        except Exception:
            return math.nan
    return math.nan


def _opt_param_ids(opt: Any) -> set[int] | None:
    plist = getattr(opt, "_parameter_list", None)
    if not plist:
        return None
    ids: set[int] = set()
    for item in plist:
        if isinstance(item, dict):
            ids.update(id(p) for p in item.get("params", []))
        else:
            ids.add(id(item))
    return ids


class _Step:
    """One step's statistics while they still live on the device."""

    __slots__ = ("step", "sampled", "losses", "gnorm", "gseen", "x_sum", "x_stats", "out_max", "out_stats",
                 "t_stats", "batch", "acts", "upd", "pnorm", "lr", "bn_eval", "forwards", "auto_loss")

    def __init__(self, step: int, sampled: bool):
        self.step, self.sampled = step, sampled
        self.losses: list[Any] = []
        self.gnorm: dict[int, paddle.Tensor] = {}   # param index -> squared gradient L2 norm (device)
        self.gseen: set[int] = set()                # params whose gradient arrived in a backward pass
        self.x_sum = self.x_stats = self.out_max = self.out_stats = self.t_stats = None
        self.batch = math.nan
        self.acts: dict[int, paddle.Tensor] = {}
        self.upd = self.pnorm = None
        self.lr = math.nan
        self.bn_eval = math.nan
        self.forwards = 0
        self.auto_loss = False


class PaddleBackend(CaptureGuard):
    """Probe backend for ``paddle.nn.Layer`` and ``paddle.Model``; create it via ``lossprobe.attach``."""

    framework = "paddle"

    def __init__(self, model: Any, optimizer: Any = None, config: Any = None):
        from ..config import Config

        hapi_cls = getattr(paddle, "Model", None)
        self.hapi = model if hapi_cls is not None and isinstance(model, hapi_cls) else None
        net = model.network if self.hapi is not None else model
        inner = getattr(net, "_layers", None)  # paddle.DataParallel
        self.net: nn.Layer = inner if isinstance(net, paddle.DataParallel) and isinstance(inner, nn.Layer) else net
        if self.net in _ATTACHED:
            raise RuntimeError(
                "lossprobe.attach: this model already has a probe attached; call probe.detach() "
                "on the first one (or use it as a context manager) before attaching again.")
        self.model = model
        self.cfg = config or Config()
        named = [(n, p) for n, p in self.net.named_parameters() if not p.stop_gradient]
        sub = dict(self.net.named_sublayers())
        self.params = [p for _, p in named]
        self.weight_idx = [i for i, p in enumerate(self.params) if len(p.shape) >= 2]
        acts = [(n or "root", m, _activation_kind(m)) for n, m in self.net.named_sublayers(include_self=True)]
        acts = [(n, m, k) for n, m, k in acts if k]
        self._act_layers = [m for _, m, _ in acts]
        self._bn_layers = [m for _, m, k in acts if k == "batchnorm"]
        self._loss_layers = [m for _, m in self.net.named_sublayers() if _is_loss_layer(m)]
        self.layout = Layout(
            framework="paddle", params=[n for n, _ in named], param_sizes=[_numel(p) for p in self.params],
            activations=[n for n, _, _ in acts], kinds=[k for _, _, k in acts],
            is_weight=[len(p.shape) >= 2 for p in self.params],
            activation_types=[type(m).__name__ for _, m, _ in acts],
            param_owner_types=[type(sub.get(n.rpartition(".")[0], self.net)).__name__ for n, _ in named])
        self.facts = FactSheet(dropout_rates=tuple(
            (n, float(m.p)) for n, m in self.net.named_sublayers()
            if isinstance(m, nn.Dropout) and isinstance(getattr(m, "p", None), (int, float)) and m.p > 0))
        self.optimizer = optimizer
        self.mode = "forward"          # what closes a step: "hapi" | "optimizer" | "forward"
        self.channel = None
        self.n_host_reads = 0
        self.validation_losses_seen = 0
        self._handles: list[Any] = []
        self._restore: list[tuple[Any, str, bool, Any, Any]] = []
        self._linked: Any = None       # the paddle.Model whose train_batch is wrapped
        self._hooked_loss: Any = None  # the loss callable whose calls are captured
        self._step = 0
        self._cur: _Step | None = None
        self._pending: list[_Step] = []
        self._val_pending: list[tuple[int, Any]] = []
        self._val_sum: Any = None
        self._val_n = 0
        self._before: list[paddle.Tensor] | None = None
        self._before_norm: Any = None
        self._last_loss: Any = None
        self._opt_depth = 0
        self._opt_wrapped: Any = None  # optimizer whose step/minimize is wrapped: exact grads read there
        self._accumulating = False
        self._disabled: set[str] = set()
        self._act_out: dict[int, int] = {}  # id(output tensor) -> activation index (this forward)
        if optimizer is not None:
            self._set_in_optimizer(optimizer)

    # -- lifecycle ----------------------------------------------------------
    def start(self, channel) -> None:
        self.channel = channel
        _ATTACHED[self.net] = channel
        h = self._handles
        h.append(self.net.register_forward_pre_hook(self._root_pre))
        h.append(self.net.register_forward_post_hook(self._root_post))
        for j, m in enumerate(self._act_layers):
            h.append(m.register_forward_post_hook(self._make_act_hook(j)))
        for m in self._loss_layers:
            h.append(m.register_forward_post_hook(self._loss_layer_hook))
        for i, p in enumerate(self.params):
            h.append(p.register_hook(self._make_grad_hook(i)))
        if self.hapi is not None:
            self._link(self.hapi)
        elif self.optimizer is not None:
            self._wrap_optimizer(self.optimizer, closes_steps=True)

    def detach(self) -> None:
        for handle in self._handles:
            try:
                handle.remove()
            except Exception:
                pass
        self._handles.clear()
        for obj, name, had, previous, wrapper in reversed(self._restore):
            if obj.__dict__.get(name) is wrapper:
                if had:
                    setattr(obj, name, previous)
                else:
                    delattr(obj, name)
        self._restore.clear()
        _ATTACHED.pop(self.net, None)

    def _wrap(self, obj: Any, name: str, make: Callable[[Callable], Callable]) -> None:
        """Replace ``obj.name`` by ``make(original)`` on the instance; undone by detach()."""
        had = name in obj.__dict__
        previous = obj.__dict__.get(name)
        wrapper = make(getattr(obj, name))
        setattr(obj, name, wrapper)
        self._restore.append((obj, name, had, previous, wrapper))

    def _training(self) -> bool:
        return self.net.training and paddle.is_grad_enabled()

    def _current(self) -> _Step:
        if self._cur is None:
            if len(self._pending) >= self.cfg.flush_every:
                self.flush()
            sampled = self._step % self.cfg.activation_every == 0
            self._cur = _Step(self._step, sampled)
            if sampled:
                self._safe("updates", self._snapshot, self._cur)
        return self._cur

    def _open(self) -> _Step:
        """Open a step at a safe Python call site; raises a pending TrainingHealthError."""
        if self._cur is None:
            if len(self._pending) >= self.cfg.flush_every:
                self.flush()
            if self.channel is not None:
                self.channel.boundary()
        return self._current()

    def _close_step(self) -> None:
        cur, self._cur = self._cur, None
        if cur is None:
            return
        if cur.sampled and self._before is not None:
            self._safe("updates", self._update_ratios, cur)
        self._before = None
        if math.isnan(cur.lr):
            opt = self.optimizer if self.optimizer is not None else getattr(self._linked, "_optimizer", None)
            cur.lr = _lr_of(opt)
        self._pending.append(cur)
        self._step += 1

    # -- linking to paddle.Model / the optimizer -----------------------------------
    def _link(self, hm: Any) -> None:
        """Wrap a paddle.Model's train_batch (the step boundary) and fit (flush at its end)."""
        if self._linked is not None:
            return
        self._linked, self.mode = hm, "hapi"
        self._bind_hapi_parts(hm)

        def make_train(orig):
            def train_batch(*args, **kwargs):
                self._safe("steps", self._hapi_pre)
                out = orig(*args, **kwargs)
                # update=False: Model.fit(accumulate_grad_batches=k) gathers gradients first
                self._accumulating = not kwargs.get("update", args[2] if len(args) > 2 else True)
                if not self._accumulating:
                    self._safe("steps", self._close_step)
                return out
            return train_batch

        def make_fit(orig):
            def fit(*args, **kwargs):
                try:
                    return orig(*args, **kwargs)
                finally:
                    self._safe("flush", self.flush)  # findings are current when fit returns
            return fit

        self._wrap(hm, "train_batch", make_train)
        self._wrap(hm, "fit", make_fit)

    def _bind_hapi_parts(self, hm: Any) -> None:
        loss = getattr(hm, "_loss", None)
        if loss is not None and loss is not self._hooked_loss:
            self._hook_loss(hm, loss)
        opt = getattr(hm, "_optimizer", None)
        if opt is not None and self._opt_wrapped is None:
            self._set_in_optimizer(opt)
            self._wrap_optimizer(opt, closes_steps=False)  # train_batch closes; minimize reads grads

    def _hook_loss(self, hm: Any, loss: Any) -> None:
        self._hooked_loss = loss
        self.facts.learn(**_loss_facts(loss))
        if isinstance(loss, nn.Layer):
            if loss not in self._loss_layers:
                self._handles.append(loss.register_forward_post_hook(self._loss_layer_hook))
            return

        def make(orig):
            def loss_fn(*args, **kwargs):
                out = orig(*args, **kwargs)
                self._safe("loss", self._capture_loss, args, out)
                return out
            return loss_fn
        self._wrap(hm, "_loss", make)
        self._hooked_loss = hm._loss

    def _hapi_pre(self) -> None:
        if self._cur is not None and self._cur.gseen and not self._accumulating:
            self._close_step()  # a step whose update happened outside train_batch
        self._bind_hapi_parts(self._linked)  # prepare() may have run after attach
        self._open()

    def _find_caller_model(self) -> None:
        """attach(net) with paddle.Model.fit: find the Model whose train/eval_batch runs this forward."""
        hapi_cls = getattr(paddle, "Model", None)
        f = sys._getframe(2)
        for _ in range(12):
            if f is None:
                return
            code = f.f_code
            if code.co_name in ("train_batch", "eval_batch") and "hapi" in code.co_filename:
                s = f.f_locals.get("self")
                hm = s if isinstance(s, hapi_cls) else getattr(s, "model", None)
                if isinstance(hm, hapi_cls):
                    net = hm.network
                    if net is self.net or getattr(net, "_layers", None) is self.net:
                        self._link(hm)
                        return
            f = f.f_back

    def _set_in_optimizer(self, opt: Any) -> None:
        ids = _opt_param_ids(opt)
        if ids is not None:
            self.facts.learn(in_optimizer=tuple(id(p) in ids for p in self.params))

    def _wrap_optimizer(self, opt: Any, closes_steps: bool) -> None:
        self._opt_wrapped = opt
        if closes_steps:
            self.mode = "optimizer"
        for name in ("step", "minimize"):
            if callable(getattr(opt, name, None)):
                self._wrap(opt, name, self._make_opt_wrapper)

    def _make_opt_wrapper(self, orig):
        def wrapped(*args, **kwargs):
            outer = self._opt_depth == 0
            if outer:
                self._safe("steps", self._open)
                if self._cur is not None:
                    self._safe("gradients", self._read_grads, self._cur)
            self._opt_depth += 1
            try:
                return orig(*args, **kwargs)
            finally:
                self._opt_depth -= 1
                if outer and self.mode == "optimizer":
                    self._safe("steps", self._close_step)
        return wrapped

    # -- hooks ---------------------------------------------------------------------
    def _root_pre(self, layer, inputs):
        if self._linked is None and "link" not in self._disabled:
            self._safe("link", self._find_caller_model)
        if not self._training():
            return None
        self._safe("steps", self._forward_begin, inputs)
        return None

    def _forward_begin(self, inputs) -> None:
        if self.mode == "forward" and self._cur is not None and self._cur.gseen:
            self._close_step()  # forward-boundary mode: a new training forward ends the step
        if self._val_n:
            self._emit_val()
        cur = self._open()
        cur.forwards += 1
        if cur.forwards == 1 and self.cfg.capture_inputs:
            self._safe("inputs", self._input_stats, cur, inputs)
        if cur.sampled and self._bn_layers:
            cur.bn_eval = float(sum(1 for m in self._bn_layers if not m.training))
        self._act_out.clear()

    def _root_post(self, layer, inputs, output):
        if self._cur is None or not self.cfg.capture_outputs or not self._training():
            return None
        self._safe("outputs", self._output_stats, self._cur, output)
        return None

    def _make_act_hook(self, j: int):
        def hook(layer, inputs, output):
            cur = self._cur
            if cur is None or not cur.sampled or j in cur.acts or not self._training():
                return None
            self._safe("activations", self._act_stats, cur, j, output)
            return None
        return hook

    def _make_grad_hook(self, i: int):
        def hook(grad):
            if "gradients" not in self._disabled and self._training():
                if self._opt_wrapped is not None:
                    self._current().gseen.add(i)  # the norm is read from p.grad at optimizer.step()
                else:
                    self._safe("gradients", self._grad_norm, i, grad)
            return None
        return hook

    def _loss_layer_hook(self, layer, inputs, output):
        self._safe("loss", self._capture_loss, inputs, output, layer)
        return None

    # -- on-device reductions -----------------------------------------------------
    def _grad_norm(self, i: int, grad: paddle.Tensor) -> None:
        cur = self._current()
        cur.gseen.add(i)
        sq = _sumsq(grad.detach())
        prev = cur.gnorm.get(i)
        # several backward passes in one step (gradient accumulation): combine the parts
        cur.gnorm[i] = sq if prev is None else prev + sq

    def _read_grads(self, cur: _Step) -> None:
        """At optimizer.step(): exact norms of the accumulated gradients about to be applied."""
        for i in cur.gseen:
            g = self.params[i].grad
            if g is not None:
                cur.gnorm[i] = _sumsq(g.detach())

    def _snapshot(self, cur: _Step) -> None:
        idx = self.weight_idx or list(range(len(self.params)))
        self._before = [self.params[i].detach().clone() for i in idx]
        norms = [_sumsq(p.detach()) for p in self.params]
        cur.pnorm = paddle.sqrt(paddle.stack(norms))
        self._before_norm = paddle.sqrt(paddle.stack([norms[i] for i in idx]))

    def _update_ratios(self, cur: _Step) -> None:
        idx = self.weight_idx or list(range(len(self.params)))
        dn = paddle.sqrt(paddle.stack([_sumsq(self.params[i].detach() - b) for i, b in zip(idx, self._before)]))
        cur.upd = dn / paddle.clip(self._before_norm, min=1e-30)

    def _input_stats(self, cur: _Step, inputs) -> None:
        x = _first_tensor(list(inputs) if isinstance(inputs, (tuple, list)) else [inputs])
        if x is None or not paddle.is_floating_point(x) or _numel(x) == 0:
            return
        x = _f32(x.detach())
        cur.x_sum = x.sum()
        if cur.sampled:
            cur.x_stats = paddle.stack([x.abs().max(), x.mean(), _std(x)])

    def _output_stats(self, cur: _Step, output) -> None:
        out = _first_tensor(output)
        if out is None:
            if "outputs-shape" not in self._disabled:
                self._disabled.add("outputs-shape")
                self._warn("outputs", f"model output of type {type(output).__name__} holds "
                           "no tensor; output statistics are off for this run")
            return
        if _numel(out) == 0 or not paddle.is_floating_point(out):
            return
        shape = list(out.shape)
        if cur.sampled or not self.facts.knows("output_units"):
            self.facts.learn(output_units=int(shape[-1]) if shape else 1,
                             output_activation=output_activation(out.grad_fn, lambda n: n.next_functions)
                             or self.facts.facts.output_activation,
                             output_activation_index=self._act_out.get(id(out), -1))
        o = _f32(out.detach())
        cur.out_max = o.abs().max()
        if cur.sampled:
            std = _std(o)
            if len(shape) >= 2 and shape[-1] >= 2:
                o2 = o.reshape([-1, shape[-1]])
                p = paddle.nn.functional.softmax(o2, axis=-1)
                sat = (p.max(axis=-1) >= 1.0).astype("float32").mean()
                rows = (o2.min(axis=-1) >= 0) & (o2.max(axis=-1) <= 1) & ((o2.sum(axis=-1) - 1).abs() < 1e-3)
                prob = rows.astype("float32").mean()
            else:
                sat = prob = _nan(std)
            bad = paddle.logical_not(paddle.isfinite(o)).astype("float32").sum()
            cur.out_stats = paddle.stack([std, sat, prob, bad])

    def _act_stats(self, cur: _Step, j: int, output) -> None:
        y = _first_tensor(output)
        if y is None or not paddle.is_floating_point(y) or _numel(y) == 0:
            return
        self._act_out[id(y)] = j
        y = _f32(y.detach())
        kind = self.layout.kinds[j]
        scale = _std(y)
        dead = sat = _nan(scale)
        shape = list(y.shape)
        if kind == "relu" and len(shape) >= 2:
            if len(shape) == 4:  # NCHW: a unit is a channel
                z = y.transpose([1, 0, 2, 3]).reshape([shape[1], -1])
            else:
                z = y.reshape([-1, shape[-1]]).transpose([1, 0])
            dead = (z.max(axis=1) <= 0).astype("float32").mean()
        elif kind == "sigmoid":
            sat = ((y < 1e-3) | (y > 1 - 1e-3)).astype("float32").mean()
        elif kind == "tanh":
            sat = (y.abs() > 1 - 1e-3).astype("float32").mean()
        cur.acts[j] = paddle.stack([dead, sat, scale])

    def _capture_loss(self, inputs, output, layer: Any = None) -> None:
        if not isinstance(output, paddle.Tensor) or _numel(output) != 1:
            return
        loss = _f32(output.detach().reshape([]))
        if not self._training():
            # validation: accumulated on the device, emitted at the next training step / flush
            self._val_sum = loss if self._val_sum is None else self._val_sum + loss
            self._val_n += 1
            self.validation_losses_seen += 1
            return
        cur = self._loss_target()
        if layer is not None:
            self.facts.learn(**_loss_facts(layer))
        cur.losses.append(loss)
        cur.auto_loss = True
        self._last_loss = output
        if cur.sampled and cur.t_stats is None and len(inputs) >= 2 and isinstance(inputs[1], paddle.Tensor):
            pred = inputs[0]
            if not self.facts.knows("output_units") and isinstance(pred, paddle.Tensor) and len(pred.shape) >= 2:
                self.facts.learn(output_units=int(pred.shape[-1]))  # a loss inside forward runs before the root's output
            self._target_stats(cur, inputs[1])

    def _target_stats(self, cur: _Step, y: paddle.Tensor) -> None:
        y = y.detach()
        if _numel(y) == 0:
            return
        shape = list(y.shape)
        cur.batch = float(shape[0]) if shape else 1.0
        c = self.facts.facts.output_units
        yf = _f32(y)
        lo, hi = yf.min(), yf.max()
        floating = paddle.is_floating_point(y)
        if not floating and c >= 2:
            flat = paddle.clip(y.reshape([-1]).astype("int64"), 0, c - 1)
            hit = paddle.nn.functional.one_hot(flat, c).max(axis=0)
            distinct, is_index = (hit > 0).astype("float32").sum(), paddle.full_like(lo, 1.0)
        else:
            distinct = _nan(lo)
            is_index = paddle.full_like(lo, 0.0 if floating else 1.0)
        cur.t_stats = paddle.stack([lo, hi, distinct, is_index])

    def _loss_target(self) -> _Step:
        """The step a loss belongs to: the open one, else the one just closed by optimizer.step()."""
        if self._cur is not None:
            return self._cur
        if self._pending:
            return self._pending[-1]
        return self._current()

    # -- observe() -------------------------------------------------------------------
    def observe(self, loss, targets, val_loss, gradients, step) -> None:
        if val_loss is not None:
            v = _f32(val_loss.detach().reshape([])) if isinstance(val_loss, paddle.Tensor) else float(val_loss)
            self._val_pending.append((self._val_step(), v))
        if loss is None and targets is None:
            return
        is_tensor = isinstance(loss, paddle.Tensor)
        if loss is not None and not self._training() and not (is_tensor and not loss.stop_gradient):
            # a loss computed in eval()/no_grad() is validation, never training loss
            if val_loss is None:
                v = _f32(loss.detach().reshape([])) if is_tensor else float(loss)
                self._val_sum = v if self._val_sum is None else self._val_sum + v
                self._val_n += 1
            return
        target = self._loss_target()
        if loss is not None and not target.auto_loss and loss is not self._last_loss:
            target.losses.append(_f32(loss.detach().reshape([])) if is_tensor else float(loss))
        if isinstance(targets, paddle.Tensor) and target.t_stats is None and target.sampled:
            self._target_stats(target, targets)

    def _val_step(self) -> int:
        """Training steps done when a validation loss is measured (its x position)."""
        if self._cur is not None and self._cur.gseen:
            return self._step  # forward-boundary mode: the step is finished but not yet closed
        return max(0, self._step - 1)

    def _emit_val(self) -> None:
        self._val_pending.append((self._val_step(), self._val_sum / self._val_n))
        self._val_sum, self._val_n = None, 0

    # -- flush: the one host read -------------------------------------------------------
    def flush(self) -> None:
        if self.mode == "forward" and self._cur is not None and self._cur.gseen:
            self._close_step()  # the last step of a loop has no next forward to end it
        if self._val_n:
            self._emit_val()
        steps, self._pending = self._pending, []
        vals, self._val_pending = self._val_pending, []
        if not steps and not vals:
            return
        tensors: list[paddle.Tensor] = []
        slots: list[tuple[int, str, int, int]] = []  # (step index, field, start, length)
        offset = 0

        def put(i: int, name: str, t) -> None:
            nonlocal offset
            if isinstance(t, paddle.Tensor):
                t = _f32(t).reshape([-1])
                n = _numel(t)
                tensors.append(t)
                slots.append((i, name, offset, n))
                offset += n

        grad_idx: list[list[int]] = []
        for i, s in enumerate(steps):
            dev = [l for l in s.losses if isinstance(l, paddle.Tensor)]
            if dev:
                put(i, "loss", paddle.stack(dev))
            gi = sorted(s.gnorm)
            grad_idx.append(gi)
            if gi:
                put(i, "grad_sq", paddle.stack([s.gnorm[k] for k in gi]))
            put(i, "x_sum", s.x_sum)
            put(i, "x_stats", s.x_stats)
            put(i, "out_max", s.out_max)
            put(i, "out_stats", s.out_stats)
            put(i, "t_stats", s.t_stats)
            put(i, "upd", s.upd)
            put(i, "pnorm", s.pnorm)
            for j, t in s.acts.items():
                put(i, f"act{j}", t)
        for k, (_, v) in enumerate(vals):
            put(-1 - k, "val", v)
        host = np.zeros(0)
        if tensors:
            host = paddle.concat(tensors).numpy()  # the single device->host copy of this flush
            self.n_host_reads += 1
        got = {(i, n): host[a:a + l] for i, n, a, l in slots}
        records = [self._decode(i, s, grad_idx[i], got) for i, s in enumerate(steps)]
        val_points = [(st, float(got[(-1 - k, "val")][0]) if (-1 - k, "val") in got else float(v))
                      for k, (st, v) in enumerate(vals)]
        if self.channel is not None:
            self.channel.ingest(Flush(records=records, val_points=val_points, facts=self.facts.facts))

    def _decode(self, i: int, s: _Step, gi: list[int], got) -> StepRecord:
        rec = StepRecord.empty(s.step, self.layout)
        n_p = len(self.params)
        if s.losses:  # device values (read in this flush) and host floats handed to observe()
            vals = list(got.get((i, "loss"), ())) + [float(l) for l in s.losses if not isinstance(l, paddle.Tensor)]
            rec.loss, rec.loss_seen = float(np.mean(vals)), 1.0
        rec.param_grad_missing = np.ones(n_p, bool)
        rec.param_grad_missing[sorted(s.gseen)] = False
        if (i, "grad_sq") in got:
            g = np.sqrt(got[(i, "grad_sq")].astype(np.float64))
            rec.param_grad_norms[gi] = g
            rec.grad_norm = float(np.sqrt(np.sum(g.astype(np.float64) ** 2)))
        if (i, "x_sum") in got:
            rec.input_nonfinite = 0.0 if np.isfinite(got[(i, "x_sum")][0]) else 1.0
        if (i, "x_stats") in got:
            rec.input_abs_max, rec.input_mean, rec.input_std = map(float, got[(i, "x_stats")])
        if (i, "out_max") in got:
            rec.logit_abs_max = float(got[(i, "out_max")][0])
        if (i, "out_stats") in got:
            rec.logit_std, rec.softmax_saturation, rec.prob_rows, rec.output_nonfinite = map(
                float, got[(i, "out_stats")])
        if (i, "t_stats") in got:
            rec.target_min, rec.target_max, rec.target_distinct, rec.target_is_index = map(
                float, got[(i, "t_stats")])
            rec.batch_size = s.batch
        if (i, "upd") in got:
            rec.update_ratios[self.weight_idx or list(range(n_p))] = got[(i, "upd")]
        if (i, "pnorm") in got:
            rec.param_norms = got[(i, "pnorm")].astype(float)
        rec.lr = float(s.lr)
        for j in s.acts:
            if (i, f"act{j}") in got:
                rec.act_dead[j], rec.act_sat[j], rec.act_scale[j] = got[(i, f"act{j}")]
        rec.bn_eval_in_train = s.bn_eval
        return rec
