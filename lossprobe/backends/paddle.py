"""Paddle backend: layer hooks and step boundaries; the statistics live in :mod:`lossprobe.capture`.

Two ways to train are covered, with the same Probe API and the same codes::

    # 1. a plain dygraph loop: nothing to add (pass optimizer= when gradients are accumulated)
    probe = lossprobe.attach(net)
    for x, y in loader:
        loss = loss_fn(net(x), y)
        loss.backward(); opt.step(); opt.clear_grad()
    probe.detach()

    # 2. the high-level API
    model = paddle.Model(net)
    model.prepare(opt, paddle.nn.CrossEntropyLoss())
    with lossprobe.attach(model) as probe:         # or attach(net)
        model.fit(train_data, eval_data=val_data, epochs=5)

Paddle has no global layer hook and no optimizer step hook, so the pieces are:

* forward pre/post hooks on the root layer: a training-mode forward opens a step; inputs,
  outputs; post hooks on ReLU / Sigmoid / Tanh / Softmax / BatchNorm sublayers (every
  ``activation_every`` steps) and on loss sublayers (``paddle.nn.CrossEntropyLoss`` ...);
* ``Tensor.register_hook`` on every trainable parameter: which gradients arrived;
* ``paddle.Tensor.backward`` (while a probe is attached): a loss that reaches ``backward()``
  through the model's output is its loss (``probe.observe(loss, targets=y)`` adds the
  targets); the gradient norms are read from ``p.grad`` after it, or at the wrapped
  optimizer's ``step()``/``minimize()`` (accumulated gradients measured exactly);
* the step boundary, in the first of these that applies: ``paddle.Model.train_batch``
  (wrapped on the instance; ``Model.fit`` calls it), the optimizer given to ``attach`` (its
  ``step``/``minimize`` wrapped on the instance), else the next training-mode forward once
  gradients have arrived.

When ``attach`` gets the bare network and training runs through ``paddle.Model.fit``, the
first forward finds the ``paddle.Model`` that called it (a few stack frames up) and links to
it. Under ``paddle.DataParallel`` on several ranks, :mod:`lossprobe.backends.paddle_dist` does
the rank detection and the flush-time exchange (only rank 0 publishes).
Static-graph tracing (``paddle.jit.to_static``, ``paddle.jit.save``) runs no statistics and is
never a step. Every pending device value is read to the host once per ``flush_every``
steps (``n_host_reads``); every wrapped method is restored by ``detach()``.
"""
from __future__ import annotations

import sys
import weakref
from typing import Any, Callable

import paddle
from paddle import nn

from . import paddle_dist
from .base import claim
from ..capture.eager import EagerCapture, Step
from ..capture.facts import FactSheet, broadcast_note, output_activation
from ..capture.ops import first_tensor, ops_for
from ..record import Flush, Layout

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
_FROM_LOGITS = {"cross_entropy": True, "bce_logits": True, "nll": False, "bce": False}
_ATTACHED: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _activation_kind(layer: nn.Layer) -> str | None:
    for classes, kind in _ACTIVATION_KINDS:
        if classes and isinstance(layer, classes):
            return kind
    return None


def _loss_facts(fn: Any) -> dict[str, Any]:
    """Facts about a loss layer or function: kind by paddle.nn class name ('' when unknown)."""
    kind = ""
    for cls in type(fn).__mro__:
        for name, k in _LOSS_KINDS:
            if cls.__name__ == name and cls.__module__.startswith("paddle.") and not kind:
                # CrossEntropyLoss(use_softmax=False) expects probabilities, as NLL expects log-probabilities
                kind = "nll" if k == "cross_entropy" and getattr(fn, "use_softmax", True) is False else k
    name = type(fn).__name__ if isinstance(fn, nn.Layer) else getattr(fn, "__name__", type(fn).__name__)
    return {"loss_kind": kind, "loss_name": name, "loss_from_logits": _FROM_LOGITS.get(kind)}


def _is_loss_layer(layer: nn.Layer) -> bool:
    return type(layer).__module__.startswith("paddle.nn.layer.loss")


def _numel(t) -> int:
    n = 1
    for d in t.shape:
        n *= int(d)
    return n


def _eager(*tensors) -> bool:
    """Dygraph tensors: a static-graph trace (jit.to_static, jit.save) is not a training step."""
    if not paddle.in_dynamic_mode():
        return False
    return all(isinstance(t, paddle.Tensor) for t in tensors if t is not None)


def _lr_of(opt: Any) -> float | None:
    """The optimizer's learning rate as a host float, without reading a device tensor."""
    lr = getattr(opt, "_learning_rate", None)
    sched = getattr(getattr(paddle.optimizer, "lr", None), "LRScheduler", ())
    if isinstance(lr, (int, float)) or (sched and isinstance(lr, sched)):
        try:
            return float(opt.get_lr())
        except Exception:
            return None
    return None


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


class _Hook:
    """A layer hook that a copy of the layer does not carry along: ``copy.deepcopy`` and
    pickling (``paddle.save`` of a whole layer) turn it into a no-op."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def __deepcopy__(self, memo):
        return _Hook(_noop)

    def __reduce__(self):
        return (_Hook, (_noop,))


class _NoLayer:
    """Stands for "a loss no layer gave" in the table of known loss layers."""


_NO_LAYER = _NoLayer()


def _noop(*args):
    return None


class _Backward:
    """``paddle.Tensor.backward`` while probes are attached: tells each probe a backward ran."""

    backends: list["PaddleBackend"] = []
    original: Any = None

    @classmethod
    def add(cls, b: "PaddleBackend") -> None:
        if not cls.backends:
            cls.original = paddle.Tensor.backward
            paddle.Tensor.backward = cls.backward
        cls.backends.append(b)

    @classmethod
    def remove(cls, b: "PaddleBackend") -> None:
        if b in cls.backends:
            cls.backends.remove(b)
        if not cls.backends and cls.original is not None:
            paddle.Tensor.backward = cls.original
            cls.original = None

    @staticmethod
    def backward(tensor, *args, **kwargs):
        live = list(_Backward.backends)
        for b in live:
            b._reached = False
        out = _Backward.original(tensor, *args, **kwargs)
        for b in live:
            b._safe("backward", b._after_backward, tensor)
        return out


class PaddleBackend(EagerCapture):
    """Probe backend for ``paddle.nn.Layer`` and ``paddle.Model``; create it via ``lossprobe.attach``."""

    framework = "paddle"

    @staticmethod
    def _node_inputs(node) -> list:
        return list(node.next_functions)

    @staticmethod
    def _grad_readable(g) -> bool:
        return not g.is_selected_rows()

    def __init__(self, model: Any, optimizer: Any = None, config: Any = None):
        self.ops = ops_for("paddle")
        hapi_cls = getattr(paddle, "Model", None)
        self.hapi = model if hapi_cls is not None and isinstance(model, hapi_cls) else None
        net = model.network if self.hapi is not None else model
        inner = getattr(net, "_layers", None)  # paddle.DataParallel
        self.net: nn.Layer = inner if isinstance(net, paddle.DataParallel) and isinstance(inner, nn.Layer) else net
        claim(_ATTACHED, self.net)
        self.model = model
        self._disabled: set[str] = set()
        named = [(n, p) for n, p in self.net.named_parameters() if not p.stop_gradient]
        sub = dict(self.net.named_sublayers())
        params = [p for _, p in named]
        acts = [(n or "root", m, _activation_kind(m)) for n, m in self.net.named_sublayers(include_self=True)]
        acts = [(n, m, k) for n, m, k in acts if k]
        self._act_layers = [m for _, m, _ in acts]
        self._bn_layers = [m for _, m, k in acts if k == "batchnorm"]
        self._loss_layers = [m for _, m in self.net.named_sublayers() if _is_loss_layer(m)]
        # paddle_dist.py: rank, world size and the rank table are known before the layout
        self.dist = self._safe("distributed", paddle_dist.PaddleRanks.create, config, self._warn)
        layout = Layout(
            framework="paddle", params=[n for n, _ in named], param_sizes=[_numel(p) for p in params],
            activations=[n for n, _, _ in acts], kinds=[k for _, _, k in acts],
            is_weight=[len(p.shape) >= 2 for p in params],
            activation_types=[type(m).__name__ for _, m, _ in acts],
            param_owner_types=[type(sub.get(n.rpartition(".")[0], self.net)).__name__ for n, _ in named],
            rank=paddle_dist.publisher_rank(), world_size=self.dist.world if self.dist is not None else 1,
            extra=self.dist.layout_extra() if self.dist is not None else {})
        facts = FactSheet(dropout_rates=tuple(
            (n, float(m.p)) for n, m in self.net.named_sublayers()
            if isinstance(m, nn.Dropout) and isinstance(getattr(m, "p", None), (int, float)) and m.p > 0))
        super()._init_capture(layout, config, params, [i for i, p in enumerate(params) if len(p.shape) >= 2], facts)
        self.optimizer = optimizer
        self.mode = "forward"          # what closes a step: "hapi" | "optimizer" | "forward"
        self._handles: list[Any] = []
        self._producer_hooks: list[Any] = []
        self._linked: Any = None       # the paddle.Model whose train_batch is wrapped
        # loss layers looked at (their shapes), and those whose facts are known: _known/_remember
        self._shapes_checked: dict[int, tuple] = {}
        self._loss_layers: dict[int, tuple] = {}
        self._hooked_loss: Any = None  # the loss callable whose calls are captured
        self._opt_depth = 0
        self._opt_wrapped: Any = None  # optimizer whose step/minimize is wrapped: exact grads read there
        self._accumulating = False
        self._seen: set[int] = set()   # parameters whose gradient arrived in this step
        if optimizer is not None:
            self._set_in_optimizer(optimizer)

    # -- lifecycle ----------------------------------------------------------
    def start(self, channel) -> None:
        self.channel = channel
        _ATTACHED[self.net] = self
        h = self._handles
        h.append(self.net.register_forward_pre_hook(_Hook(self._root_pre)))
        h.append(self.net.register_forward_post_hook(_Hook(self._root_post)))
        for j, m in enumerate(self._act_layers):
            h.append(m.register_forward_post_hook(_Hook(self._make_act_hook(j))))
        for m in self._loss_layers:
            h.append(m.register_forward_post_hook(_Hook(self._loss_layer_hook)))
        for i, p in enumerate(self.params):
            h.append(p.register_hook(self._make_grad_hook(i)))
        # until the layer that makes the model output is known (the first sampled step)
        self._producer_hooks = [m.register_forward_post_hook(_Hook(self._make_producer_hook(name)))
                                for name, m in self.net.named_sublayers()]
        _Backward.add(self)
        if self.hapi is not None:
            self._link(self.hapi)
        elif self.optimizer is not None:
            self._wrap_optimizer(self.optimizer, closes_steps=True)

    def detach(self) -> None:
        _Backward.remove(self)
        for handle in self._handles + self._producer_hooks:
            try:
                handle.remove()
            except Exception:
                pass
        self._handles.clear()
        self._unpatch()
        _ATTACHED.pop(self.net, None)

    def _training(self) -> bool:
        return self.net.training and paddle.is_grad_enabled()

    def _current(self) -> Step:
        opening = self._cur is None
        cur = super()._current()
        if opening:
            self._seen = set()
            if cur.sampled:  # the update happens somewhere before the step closes: snapshot now
                self._safe("updates", self._snapshot, cur)
        return cur

    def _open(self) -> Step:
        """Open a step at a safe Python call site; raises a pending TrainingHealthError."""
        if self._cur is None:
            if len(self._pending) >= self.cfg.flush_every:
                self.flush()
            self.channel.boundary()
        return self._current()

    def _close_step(self) -> None:
        cur = self._cur
        if cur is None:
            return
        if cur.sampled:
            self._safe("updates", self._record_updates, cur)
        opt = self.optimizer if self.optimizer is not None else getattr(self._linked, "_optimizer", None)
        self._record_lr(cur, _lr_of(opt) if opt is not None else None)
        super()._close_step()

    def _val_step(self) -> int:
        """Training steps done when a validation loss is measured (its x position)."""
        if self._cur is not None and self._seen:
            return self._step  # forward-boundary mode: the step is finished but not yet closed
        return max(0, self._step - 1)

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
                self._safe("epochs", self._learn_epoch_length, args, kwargs)
                try:
                    return orig(*args, **kwargs)
                finally:
                    self.flush()  # findings are current when fit returns
            return fit

        self._patch(hm, "train_batch", make_train)
        self._patch(hm, "fit", make_fit)

    def _learn_epoch_length(self, args, kwargs) -> None:
        """Steps per epoch of ``Model.fit(train_data, eval_data, batch_size, ...)``: a
        DataLoader's length, or a dataset's length over the batch size (drop_last honoured)."""
        data = kwargs.get("train_data", args[0] if args else None)
        batch = int(kwargs.get("batch_size", args[2] if len(args) > 2 else 1) or 1)
        if data is None or not hasattr(data, "__len__"):
            return
        if isinstance(data, paddle.io.DataLoader):
            steps = len(data)
        else:
            steps = len(data) // batch if kwargs.get("drop_last", False) else -(-len(data) // batch)
        if steps >= 2:
            self.facts.learn(steps_per_epoch=int(steps))

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
                self._handles.append(loss.register_forward_post_hook(_Hook(self._loss_layer_hook)))
            return

        def make(orig):
            def loss_fn(*args, **kwargs):
                out = orig(*args, **kwargs)
                self._safe("loss", self._capture_loss, args, out)
                return out
            return loss_fn
        self._patch(hm, "_loss", make)
        self._hooked_loss = hm._loss

    def _hapi_pre(self) -> None:
        if self._cur is not None and self._seen and not self._accumulating:
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
                self._patch(opt, name, self._make_opt_wrapper)

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
        if not _eager(*(inputs if isinstance(inputs, (tuple, list)) else [inputs])):
            return None  # a static-graph trace (jit.save): not a step, no statistics
        if self._linked is None and "link" not in self._disabled:
            self._safe("link", self._find_caller_model)
        if self._training():
            self._safe("steps", self._forward_begin, inputs)
        return None

    def _forward_begin(self, inputs) -> None:
        if self.mode == "forward" and self._cur is not None and self._seen:
            self._close_step()  # forward-boundary mode: a new training forward ends the step
        if self._val_n:
            self._emit_val()
        cur = self._open()
        cur.forwards += 1
        if cur.forwards == 1 and self.cfg.capture_inputs:
            self._safe("inputs", self._record_inputs, cur, inputs)
        self._record_bn_eval(cur, self._bn_layers)
        self._act_out.clear()

    def _root_post(self, layer, inputs, output):
        cur = self._cur
        out = first_tensor(self.ops, output)
        if cur is None or not self._training() or not _eager(out):
            return None
        self._safe("outputs", self._model_output, cur, output, out)
        if self._producer_hooks and self.facts.knows("output_layer"):
            for handle in self._producer_hooks:
                handle.remove()
            self._producer_hooks = []
        return None

    def _make_producer_hook(self, name: str):
        def hook(layer, inputs, output):
            if self._cur is not None and self._cur.sampled and isinstance(output, paddle.Tensor):
                self._note_producer(output, name)
            return None
        return hook

    def _make_act_hook(self, j: int):
        def hook(layer, inputs, output):
            cur = self._cur
            if cur is None or not cur.sampled or not self._training() or not _eager(output):
                return None
            self._safe("activations", self._record_activation, cur, j, output)
            return None
        return hook

    def _make_grad_hook(self, i: int):
        def hook(grad):
            if self._training():
                cur = self._current()
                self._seen.add(i)  # the norm is read from p.grad after backward or at optimizer.step()
                if self.dist is not None:   # this rank's own gradient, before DataParallel reduces it
                    self._safe("rank-gradients", self.dist.on_grad, cur.step, grad)
            return None
        return hook

    def _loss_layer_hook(self, layer, inputs, output):
        if len(inputs) >= 2 and not self._known(self._shapes_checked, layer) and self._training():
            self._safe("facts", self._check_broadcast, layer, inputs)
        self._safe("loss", self._capture_loss, inputs, output, layer)
        return None

    def _check_broadcast(self, layer, inputs) -> None:
        """An element-wise loss whose input and target broadcast (:func:`broadcast_note`): looked
        at once per loss layer."""
        x, y = inputs[0], inputs[1]
        if isinstance(x, paddle.Tensor) and isinstance(y, paddle.Tensor):
            self._remember(self._shapes_checked, layer)
            note = broadcast_note(_loss_facts(layer)["loss_kind"], x.shape, y.shape)
            if note:
                self.facts.learn(loss_broadcast=note)

    # -- losses ----------------------------------------------------------------------
    def _capture_loss(self, inputs, output, layer: Any = None) -> None:
        if not isinstance(output, paddle.Tensor) or _numel(output) != 1 or not _eager(output):
            return
        if not self._training():
            self._add_val(output)  # validation: accumulated on the device, emitted at the next step / flush
            self.validation_losses_seen += 1
            return
        pred = inputs[0] if len(inputs) >= 1 else None
        if not self.facts.knows("output_units") and isinstance(pred, paddle.Tensor) and len(pred.shape) >= 2:
            self.facts.learn(output_units=int(pred.shape[-1]))  # a loss inside forward runs before the root's output
        cur = self._loss_step()
        facts = None
        source = layer if layer is not None else _NO_LAYER
        if cur.sampled or not self._known(self._loss_layers, source):
            # what the loss is and what feeds it: looked at again on sampled steps only
            facts = _loss_facts(layer) if layer is not None else {}
            if isinstance(pred, paddle.Tensor) and getattr(pred, "grad_fn", None) is not None:
                facts["loss_input_activation"] = output_activation(pred.grad_fn, self._node_inputs)
            self._remember(self._loss_layers, source)
        self._loss_output(cur, output, facts, inputs[1] if len(inputs) >= 2 else None)

    def _backward_done(self, cur: Step) -> None:
        if self._opt_wrapped is None:
            self._read_grads(cur)   # no optimizer to wait for: the accumulated gradients now

    # -- gradients -------------------------------------------------------------------
    def _read_grads(self, cur: Step) -> None:
        """Norms of the gradients that arrived in this step (sparse SelectedRows: unmeasured)."""
        found = [p.grad if i in self._seen else None for i, p in enumerate(self.params)]
        self._record_grads(cur, *self._sort_grads(found, lambda g: not g.is_selected_rows()))

    # -- flush ----------------------------------------------------------------------
    def flush(self) -> None:
        if self.mode == "forward" and self._cur is not None and self._seen:
            self._close_step()  # the last step of a loop has no next forward to end it
        super().flush()

    def _extra_tensors(self) -> list:
        if self.dist is None:
            return []
        t = self._safe("rank-gradients", self.dist.take_tensors, self._step)  # rides in this flush's one copy
        return [t] if t is not None else []

    def _hand_over(self, steps, host, plan, val_points, extra_host) -> None:
        if self.dist is None:
            return super()._hand_over(steps, host, plan, val_points, extra_host)
        # paddle_dist.py: one gather per flush, on the training thread (it is a collective)
        records = self._decode(steps, host, plan)
        merged = self._safe("distributed", self.dist.on_flush, records, extra_host[-1] if extra_host else None)
        self.channel.ingest(Flush(records=merged if merged is not None else records, val_points=val_points,
                                  facts=self.facts.facts))
