"""TensorFlow / Keras 3 backend: in-graph statistics, one host read per flush.

Two ways to train are covered, both with the same :class:`~lossprobe.Probe`::

    # 1. model.fit, nothing else added
    probe = lossprobe.attach(model)           # after compile() or even after a first fit()
    model.fit(x, y, validation_data=(xv, yv), epochs=5)
    probe.detach()

    # 2. a custom tf.GradientTape loop: one line hands over the loss and gradients
    probe = lossprobe.attach(model, optimizer=opt)
    for x, y in ds:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        probe.observe(loss, gradients=grads, targets=y)   # the one line
    probe.detach()

How it works. Keras traces ``train_step`` into a ``tf.function`` (optionally XLA); Python code
runs only while tracing. lossprobe wraps, on the *instance* only (``detach`` deletes the
wrappers again), ``model.train_step`` (to know a trace is a training step), ``model.call``
(inputs and outputs), ``model.compute_loss`` (loss and targets; ``training=False`` calls are
validation and ignored), ``optimizer.apply`` (gradients; ``apply_gradients`` goes through it)
and the ``call`` of every watched activation layer (Dense/Conv layers with a ReLU, sigmoid,
tanh or softmax activation, ``Activation``/``ReLU``/``Softmax`` layers, ``BatchNormalization``).
While tracing, each wrapper adds a few reductions whose results are scattered into one
``tf.Variable`` ring buffer of shape ``[rows, columns]``, indexed by a step-counter variable
that the step itself advances. So the compiled step updates the statistics on every batch with
no host involvement. Activation statistics, parameter norms and update/weight ratios are
taken every ``activation_every`` steps only. In ``fit`` (one step per call) Keras' step
function is traced twice, with and without them, and the host calls the one the step needs
(:meth:`KerasBackend._install_step_functions`): a ``tf.cond`` in the step cost ~300 us on
every step of the benchmark MLP, taken or not. A step traced once for every step (a custom
loop's ``tf.function``, ``steps_per_execution`` > 1) keeps them under one ``tf.cond``.

The statistics, their columns in the ring and their decoding are :mod:`lossprobe.capture`'s
(the same for every framework). Update/weight ratios are measured on the fixed sample of at
most ``UPDATE_SAMPLE`` elements per weight tensor that every backend uses: a copy of the
sample is taken at the end of the step before a sampled one and compared at the end of the
sampled step, so no full copy of the weights is ever kept.

The host reads the ring once every ``flush_every`` steps: from a Keras callback that the
wrapped ``model.fit`` adds (it uses only ``on_train_batch_begin``, which keeps Keras' async
batch-end dispatch intact) or, in a custom loop, from ``observe``. ``n_host_reads`` counts the
reads. Validation loss comes from fit's epoch logs (already on the host) or ``observe(val_loss=)``.

Activation statistics come from the wrapped layer ``call``s, i.e. from the tensors the
training step computes anyway: no sub-model and no second forward pass.

Under ``tf.distribute.MirroredStrategy`` each replica keeps its own ring and the flush
combines them into one record per step (:mod:`lossprobe.backends.tf_dist`).

Limits: Keras 3 only (not legacy ``tf_keras``); under a strategy with several replicas,
``model.fit`` only (``observe`` is ignored, with a warning), and with several workers each
worker's records hold its own replicas' loss and batch (gradient norms are global); in a
custom loop, attach before the first call of your compiled step (a ``tf.function`` traced
earlier holds no probe ops), and after
``detach`` a step function traced while attached still carries the (now orphaned) probe
ops until you re-create it. Keras-managed functions (``fit``) are re-traced clean.
"""
from __future__ import annotations

import functools
import inspect
import math
import threading
import weakref
from typing import Any

import numpy as np
import tensorflow as tf
import keras

from .base import CaptureGuard, claim
from .tf_dist import Replicas
from ..capture import stats
from ..capture.buffer import Columns
from ..capture.facts import FactSheet
from ..capture.ops import first_tensor, ops_for
from ..capture.spec import MISSING, UNMEASURED, is_sampled, update_sample_index
from ..record import Flush, Layout

_ATTACHED: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_STALE = object()

_ACT_NAMES = {"relu": "relu", "relu6": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "softmax": "softmax"}
_OUTPUT_ACTIVATIONS = {**_ACT_NAMES, "log_softmax": "log_softmax", "linear": "linear", "leaky_relu": "relu"}
_CE = ("sparse_categorical_crossentropy", "categorical_crossentropy")
_REGRESSION = ("mean_squared_error", "mse", "mean_absolute_error", "mae", "huber", "log_cosh",
               "mean_squared_logarithmic_error", "msle", "mean_absolute_percentage_error", "mape")


def _keras_activation(fn: Any) -> str:
    """The Keras name of an activation function ('' when there is none)."""
    if fn is None:
        return ""
    try:
        name = keras.activations.serialize(fn)
    except Exception:
        name = getattr(fn, "__name__", None)
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name"))
    return str(name).lower() if name else ""


def _output_activation(layer: Any) -> str:
    """Facts.output_activation of the layer that makes the output: its ``activation``'s name;
    '' (unknown) for a layer that has none, whose values no name tells (a custom layer, a Lambda)."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    fn = getattr(layer, "activation", None)
    return _OUTPUT_ACTIVATIONS.get(_keras_activation(fn), "") if fn is not None else ""


# Layers that move values without changing them: the output's activation is the one before them.
_VALUE_KEEPING = (keras.layers.Reshape, keras.layers.Flatten, keras.layers.Permute, keras.layers.Dropout,
                  keras.layers.Identity)


def _value_source(layer: Any) -> Any:
    """The layer whose values ``layer`` passes on unchanged (itself unless it only reshapes)."""
    for _ in range(8):
        if not isinstance(layer, _VALUE_KEEPING):
            break
        try:
            layer = layer.input._keras_history[0]
        except Exception:
            break
    return layer


def _layer_kind(layer: Any) -> str | None:
    """The activation kind a layer's output has, or None when it is not watched."""
    L = keras.layers
    if isinstance(layer, L.BatchNormalization):
        return "batchnorm"
    if isinstance(layer, L.ReLU):
        slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
        return "relu" if slope == 0.0 else None
    if isinstance(layer, L.Softmax):
        return "softmax"
    if isinstance(layer, keras.Model):
        return None
    act = getattr(layer, "activation", None)
    return _ACT_NAMES.get(_keras_activation(act)) if act is not None else None


def _loss_facts(loss: Any) -> dict[str, Any]:
    """Facts about a compiled loss: kind, Keras name, from_logits. Keras cross-entropy on
    probabilities (``from_logits=False``, the default) expects normalised outputs, as
    torch's NLLLoss does: it is reported as "nll" so no rule mistakes it for a logits loss."""
    if loss is None or isinstance(loss, (list, tuple, dict)):
        return {"loss_kind": "", "loss_name": "", "loss_from_logits": None}
    from_logits = False
    if isinstance(loss, str):
        name = loss
    else:
        fn = getattr(loss, "fn", None)
        name = getattr(fn, "__name__", None) or getattr(loss, "name", None) or getattr(loss, "__name__", "")
        from_logits = bool(getattr(loss, "_fn_kwargs", {}).get("from_logits", getattr(loss, "from_logits", False)))
    name = str(name).lower()
    kind = ""
    if name in _CE:
        kind = "cross_entropy" if from_logits else "nll"
    elif name == "binary_crossentropy":
        kind = "bce_logits" if from_logits else "bce"
    elif name in _REGRESSION:
        kind = "mse"
    return {"loss_kind": kind, "loss_name": name, "loss_from_logits": from_logits if kind != "mse" else None}


def _symbolic(args) -> bool:
    """Keras' symbolic passes (building, shape inference) must not record anything."""
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
        from keras.src.backend.common.stateless_scope import in_stateless_scope
        if in_symbolic_scope() or in_stateless_scope():
            return True
    except Exception:
        pass
    return any(isinstance(a, keras.KerasTensor) for a in tf.nest.flatten(args))


def _tape_active() -> bool:
    try:
        from tensorflow.python.eager import record
        return bool(record.could_possibly_record())
    except Exception:
        return False


def _position(fn, name: str, default: int) -> int:
    """The positional index (after self) of argument ``name`` of a Keras method, looked up on
    the unwrapped function: a user's ``*args, **kwargs`` decorator around ``fit`` hides it."""
    try:
        params = list(inspect.signature(inspect.unwrap(fn)).parameters)
        params = params[1:] if params and params[0] == "self" else params
        return params.index(name)
    except (TypeError, ValueError):
        return default


def _argument(args, kwargs, name: str, at: int, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[at] if len(args) > at else default


class _Tracing(threading.local):
    """What the wrappers know while a step is being traced, per thread: a distribution
    strategy traces each replica's step in a thread of its own, interleaved with the others
    at its synchronisation points, so each replica queues its own statistics."""

    def __init__(self):
        self.in_train_step = 0        # depth of train_step calls
        self.fwd_training = False     # inside a training forward pass
        self.now: dict[int, Any] = {}                # this step's queued columns
        self.later: list[tuple[int, int, Any]] = []  # ... computed on sampled steps only
        self.before: Any = None       # a sampled step function's weights before its update


class _FitCallback(keras.callbacks.Callback):
    """Added to ``fit`` by the wrapped ``model.fit``: arms the graph, reads the ring.

    Only ``on_train_batch_begin`` is a per-batch hook: Keras then keeps dispatching
    batch-end callbacks asynchronously (no per-step read of the logs on our account).
    """

    def __init__(self, backend: "KerasBackend"):
        super().__init__()
        self._backend = backend

    def on_train_begin(self, logs=None):
        self._backend._host("fit begin", self._backend._fit_begin, self.params or {})

    def on_epoch_begin(self, epoch, logs=None):
        self._backend._host("epoch begin", self._backend._epoch_begin)

    def on_train_batch_begin(self, batch, logs=None):
        self._backend._host("batch", self._backend._fit_batch, batch)

    def on_epoch_end(self, epoch, logs=None):
        self._backend._host("epoch end", self._backend._epoch_end, logs or {})

    def on_train_end(self, logs=None):
        self._backend._host("fit end", self._backend._fit_end)


class KerasBackend(CaptureGuard):
    """Backend for Keras 3 models on TensorFlow (see the module docstring)."""

    framework = "tensorflow"

    def __init__(self, model: Any, optimizer: Any = None, config: Any = None):
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"lossprobe: {type(model).__module__}.{type(model).__qualname__} is not a Keras 3 model; "
                "lossprobe supports Keras 3 (keras>=3, the tf.keras of TensorFlow >= 2.16), not legacy tf_keras.")
        claim(_ATTACHED, model)
        self.ops = ops_for("tensorflow")
        self.model = model
        self.cfg = config
        self.optimizer = optimizer
        self.channel = None
        self.n_host_reads = 0
        self.validation_losses_seen = 0
        self._patched_opts: set[int] = set()
        self._disabled: set[str] = set()
        self._armed = False
        self._tracing = _Tracing()
        self._in_fit = False
        self._own_train_fn = None
        self._flushed = 0                  # first step not yet read
        self._host_steps = 0               # host-side step count (exact in loops, estimate in fit)
        self._epoch_base = 0
        self._spe = 1
        self._val_pending: list[tuple[int, Any]] = []
        self._bn_eval: set[int] = set()
        self._graph_observe_warned = False
        self._detached = False
        # which step function is being traced: True/False, fit's sampled or unsampled one;
        # None, one for every step (the sampled part under a tf.cond)
        self._variant: bool | None = None
        self._next_step = 0                # the step fit's next train_function call runs
        self.replicas = Replicas.of(model)
        self._reduced_grads = False        # gradient norms come from the optimizer's all-reduce
        # activation layers are known before the model is built
        acts = [(layer, _layer_kind(layer)) for layer in self._layers()]
        acts = [(layer, kind) for layer, kind in acts if kind]
        self._act_layers = [l for l, _ in acts]
        self._kinds = [k for _, k in acts]
        self.layout = Layout(framework="tensorflow", activations=[self._layer_name(l) for l, _ in acts],
                             kinds=self._kinds, activation_types=[type(l).__name__ for l, _ in acts],
                             rank=self.replicas.rank, world_size=self.replicas.world)
        self._layout_unsent = False   # a layout completed after attach travels with the next flush
        self._bn_idx = [j for j, (_, k) in enumerate(acts) if k == "batchnorm"]
        self.facts = FactSheet(dropout_rates=tuple(
            (self._layer_name(l), float(l.rate)) for l in self._layers()
            if isinstance(l, keras.layers.Dropout) and float(getattr(l, "rate", 0.0) or 0.0) > 0))
        self._set_loss_kind()
        self._build_layout()

    # -- model structure ------------------------------------------------------------
    def _layers(self) -> list[Any]:
        try:
            return list(self.model._flatten_layers(include_self=False, recursive=True))
        except Exception:
            out, todo = [], list(getattr(self.model, "layers", []))
            while todo:
                layer = todo.pop(0)
                out.append(layer)
                todo[:0] = list(getattr(layer, "layers", []) or [])
            return out

    @staticmethod
    def _layer_name(layer) -> str:
        return str(getattr(layer, "path", None) or layer.name)

    def _set_loss_kind(self) -> None:
        self.facts.learn(**_loss_facts(getattr(self.model, "loss", None)))

    def _build_layout(self) -> bool:
        """The parameter part of the layout (needs a built model). True when done."""
        variables = list(self.model.trainable_variables)
        if not variables:
            return False
        self._vars = variables
        self._var_idx = {id(v): i for i, v in enumerate(variables)}
        # the optimizer's all-reduce sees the tf.Variables behind Keras' variables
        self._var_idx.update({id(getattr(v, "value", v)): i for i, v in enumerate(variables)})
        shapes = [tuple(int(d or 0) for d in v.shape) for v in variables]
        self.layout = Layout(framework="tensorflow", activations=self.layout.activations, kinds=self._kinds,
                             activation_types=self.layout.activation_types, params=[str(getattr(v, "path", None) or v.name) for v in variables],
                             param_sizes=[int(np.prod(s)) if s else 1 for s in shapes],
                             is_weight=[len(s) >= 2 for s in shapes], rank=self.layout.rank,
                             world_size=self.layout.world_size)
        self._layout_unsent = self.channel is not None   # attach has handed out the one without params
        self.weight_idx = [i for i, s in enumerate(shapes) if len(s) >= 2] or list(range(len(shapes)))
        self._learn_output_layer()
        self._infer_classes()
        return True

    def _learn_output_layer(self) -> None:
        """The layer that makes the model output: its activation, and whether it is watched
        (a bounded activation that *is* the output saturating is the prediction, not a fault)."""
        outs = []
        try:
            for t in tf.nest.flatten(self.model.outputs):
                outs.append(t._keras_history[0])
        except Exception:
            if isinstance(self.model, keras.Sequential) and self.model.layers:
                outs.append(self.model.layers[-1])
        if not outs:
            return
        layer = _value_source(outs[0])
        act = _output_activation(layer)
        index = next((j for j, l in enumerate(self._act_layers) if l is layer), -1)
        self.facts.learn(output_layer=self._layer_name(layer), output_activation=act, output_activation_index=index)

    def _infer_classes(self, out_shape=None) -> None:
        if self.facts.knows("output_units"):
            return
        shape = out_shape
        if shape is None:
            try:
                shape = tf.nest.flatten(self.model.outputs)[0].shape
            except Exception:
                return
        try:
            c = int(shape[-1]) if len(shape) >= 2 and shape[-1] is not None else 0
        except Exception:
            c = 0
        if c >= 1:
            self.facts.learn(output_units=c)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, channel) -> None:
        self.channel = channel
        _ATTACHED[self.model] = self
        m = self.model
        self._patch(m, "call", self._wrap_model_call)
        self._patch(m, "train_step", self._wrap_train_step)
        self._patch(m, "compute_loss", self._wrap_compute_loss)
        self._patch(m, "fit", self._wrap_fit)
        for j, layer in enumerate(self._act_layers):
            self._patch(layer, "call", functools.partial(self._wrap_layer_call, j=j))
        if self.optimizer is None and getattr(m, "optimizer", None) is not None:
            self.optimizer = m.optimizer
        if self.optimizer is not None:
            self._patch_optimizer(self.optimizer)
        if self.layout.params:
            self._safe("arm", self._arm)
        # functions traced before attaching hold no probe ops: rebuild (re-trace on next use)
        self._fns_before = (m.train_function, m.test_function, m.predict_function)
        if m.train_function is not None:
            m.make_train_function(force=True)

    def detach(self) -> None:
        self._detached = True
        self._armed = False
        self._unpatch()
        m = self.model
        # drop compiled functions that hold the wrappers; Keras re-traces clean ones on next use
        if self._in_fit:
            m.make_train_function(force=True)
        else:
            m.train_function = None
        before = getattr(self, "_fns_before", (None, None, None))
        if m.test_function is not before[1]:
            m.test_function = None
        if m.predict_function is not before[2]:
            m.predict_function = None
        _ATTACHED.pop(m, None)

    def _patch_optimizer(self, opt) -> None:
        if id(opt) in self._patched_opts or not hasattr(opt, "apply"):
            return
        self._patched_opts.add(id(opt))
        self._patch(opt, "apply", functools.partial(self._wrap_apply, opt))
        if self.replicas.distributed:
            self._reduced_grads = False
            # a loss-scale optimizer hands its unscaled gradients to the optimizer it wraps
            inner = getattr(opt, "inner_optimizer", opt)
            if callable(getattr(inner, "_all_reduce_sum_gradients", None)):
                self._patch(inner, "_all_reduce_sum_gradients", self._wrap_all_reduce)
                self._reduced_grads = True
            else:
                self._warn("all-reduce", f"{type(inner).__name__} has no _all_reduce_sum_gradients: gradient "
                           "norms under the distribution strategy are unmeasured")

    def _arm(self) -> bool:
        """Create the device buffers (needs the trainable variables). Idempotent."""
        if self._armed:
            return True
        if self._detached:
            return False
        if not self.layout.params and not self._build_layout():
            return False
        if not self.replicas.can_create_state():
            return False   # a replica's step is being traced: the next fit arms (once the model is built)
        if self.replicas.world > 1:
            self._warn("workers", f"{self.replicas.world} workers: each worker's records combine its own "
                       "replicas only (loss, batch, activations); gradient norms are the global gradient's")
        self.columns = Columns(self.layout)
        self.K = self.columns.width
        self._sample_plan()
        state = self.replicas.state_var   # one copy per replica under a distribution strategy
        self.R = int(self.cfg.flush_every) + 9   # room for one execution of 1 step past the flush point
        self.buf = state(lambda: tf.fill([self.R, self.K], math.nan), "lossprobe_ring")
        self.step_var = state(lambda: tf.constant(0, tf.int64), "lossprobe_step")
        self.shadow = state(lambda: tf.zeros([max(1, self._shadow_len)]), "lossprobe_shadow")
        self.shadow_norms = state(lambda: tf.zeros([max(1, self.layout.n_params)]), "lossprobe_shadow_norms")
        self.shadow_step = state(lambda: tf.constant(-1, tf.int64), "lossprobe_shadow_step")
        if tf.executing_eagerly():   # step 0 is sampled: the weights before its update are these (armed
            self._safe("updates", self._snap, 0)   # while tracing an unbuilt model's step: not readable yet)
        self._observe_fn = tf.function(self._observe_graph, reduce_retracing=True)
        self._observe_opt = None
        self._pack_fn = None
        self._armed = True
        return True

    def _resize_ring(self, spe: int) -> None:
        """fit may run several steps per host call (steps_per_execution): the ring must hold them."""
        need = int(self.cfg.flush_every) + max(1, spe) + 8
        if need > self.R:
            self.flush()
            self.R = need
            self.buf = self.replicas.state_var(lambda: tf.fill([self.R, self.K], math.nan), "lossprobe_ring")
            self._observe_opt = _STALE  # functions traced against the old ring must be rebuilt
            self._own_train_fn = None
            self._pack_fn = None

    def _sample_plan(self) -> None:
        """Each weight tensor's update sample: (parameter, offset in the shadow, indices, count)."""
        plan, off = [], 0
        for i in self.weight_idx:
            size = self.layout.param_sizes[i]
            index = update_sample_index(size)
            n = size if index is None else len(index)
            plan.append((i, off, index, n))
            off += n
        self._plan, self._shadow_len = plan, off

    def _host(self, what: str, fn, *args):
        """Host-side callback bodies: errors are reported once, never raised into fit
        (a TrainingHealthError under ``on_critical="raise"`` is the one exception)."""
        if self._detached:
            return None   # detached in the middle of a fit: the rest of it is not ours
        try:
            return fn(*args)
        except Exception as exc:
            from ..probe import TrainingHealthError
            if isinstance(exc, TrainingHealthError) or self.channel is None:
                raise
            self._warn(what, f"keras {what} failed ({type(exc).__name__}: {exc})")
            return None

    def _recording(self) -> bool:
        return self._armed and self._tracing.fwd_training and "capture" not in self._disabled

    # -- wrappers (their bodies run while Keras traces the step) --------------------------
    def _wrap_model_call(self, orig):
        @functools.wraps(orig)
        def call(*args, **kwargs):
            training = kwargs.get("training")
            rec = False
            if not _symbolic((args, kwargs)):
                if training is None:
                    rec = bool(self._tracing.in_train_step) or _tape_active()
                else:
                    rec = bool(training) and not isinstance(training, tf.Tensor)
            if rec and not self._armed:
                self._safe("arm", self._arm)
            outer = self._tracing.fwd_training
            self._tracing.fwd_training = rec
            try:
                if rec and self._armed and not outer and not self._tracing.in_train_step:
                    self._tracing.now, self._tracing.later = {}, []   # custom loop: a fresh forward pass
                if rec and self._armed and self.cfg.capture_inputs:
                    self._safe("inputs", self._input_stats, args, kwargs)
                out = orig(*args, **kwargs)
                if rec and self._armed and self.cfg.capture_outputs:
                    self._safe("outputs", self._output_stats, out)
                if rec and self._armed and not outer and not self._tracing.in_train_step:
                    self._safe("emit", self._emit, False)
                return out
            finally:
                self._tracing.fwd_training = outer
        return call

    def _wrap_layer_call(self, orig, j: int):
        @functools.wraps(orig)
        def call(*args, **kwargs):
            out = orig(*args, **kwargs)
            if self._recording():
                if j in self._bn_idx and kwargs.get("training") is False and self._act_layers[j].trainable:
                    self._bn_eval.add(j)
                self._safe("activations", self._act_stats, j, out)
            return out
        return call

    def _wrap_train_step(self, orig):
        @functools.wraps(orig)
        def train_step(*args, **kwargs):
            if not self._tracing.in_train_step:
                self._tracing.now, self._tracing.later = {}, []
            self._tracing.in_train_step += 1
            try:
                return orig(*args, **kwargs)
            finally:
                self._tracing.in_train_step -= 1
        return train_step

    def _wrap_compute_loss(self, orig):
        method = type(self.model).compute_loss
        at_y, at_pred, at_training = (_position(method, n, d) for n, d in (("y", 1), ("y_pred", 2), ("training", 4)))

        @functools.wraps(orig)
        def compute_loss(*args, **kwargs):
            loss = orig(*args, **kwargs)
            if self._tracing.in_train_step and self._armed and _argument(args, kwargs, "training", at_training, True) is not False:
                self._safe("loss", self._loss_stats, self.replicas.unscale_loss(loss), _argument(args, kwargs, "y", at_y),
                           _argument(args, kwargs, "y_pred", at_pred))
            return loss
        return compute_loss

    def _wrap_apply(self, opt, orig):
        @functools.wraps(orig)
        def apply(grads, trainable_variables=None):
            active = bool(self._tracing.in_train_step) and self._armed
            grads = list(grads)
            if active:
                variables = list(trainable_variables) if trainable_variables is not None else \
                    list(getattr(opt, "_trainable_variables", []))
                held = {id(v) for v in variables}
                self.facts.learn(in_optimizer=tuple(id(v) in held for v in self._vars))
                if not self.replicas.distributed:
                    self._safe("gradients", self._grad_stats, grads, variables, opt, True)
                elif not self._reduced_grads:   # else measured after the optimizer's all-reduce
                    self._safe("gradients", self._unmeasured_grads, opt)
                if self._variant and "updates" not in self._disabled:   # read before the update
                    self._tracing.before = self._safe("updates", self._weights_now)
            out = orig(grads, trainable_variables)
            if active:
                self._safe("step", self._close_step)
            return out
        return apply

    def _wrap_all_reduce(self, orig):
        """Keras' optimizer sums the replicas' gradients here: the norms are those of the sums."""
        @functools.wraps(orig)
        def all_reduce(grads_and_vars):
            reduced = orig(grads_and_vars)
            if self._tracing.in_train_step and self._armed:
                reduced = list(reduced)
                self._safe("gradients", self._grad_stats, [g for g, _ in reduced], [v for _, v in reduced],
                           self.optimizer)
            return reduced
        return all_reduce

    def _wrap_fit(self, orig):
        at = _position(type(self.model).fit, "callbacks", 5)

        @functools.wraps(orig)
        def fit(*args, **kwargs):
            mine = _FitCallback(self)
            cbs = _argument(args, kwargs, "callbacks", at)
            if cbs is None:
                cbs = [mine]
            elif isinstance(cbs, keras.callbacks.CallbackList):
                cbs.callbacks.append(mine)
                mine.set_model(self.model)
            else:
                cbs = list(cbs) + [mine]
            if "callbacks" not in kwargs and len(args) > at:
                args = (*args[:at], cbs, *args[at + 1:])
            else:
                kwargs["callbacks"] = cbs
            try:
                return orig(*args, **kwargs)
            finally:
                self._in_fit = False   # also when fit stopped on an exception (no on_train_end)
        return fit

    def fit_callback(self) -> keras.callbacks.Callback:
        """The callback that drives this probe through one ``fit``: the wrapped ``model.fit``
        adds it; a probe attached once ``fit`` had begun (``LossProbeCallback``) forwards to it."""
        return _FitCallback(self)

    # -- host side of fit ------------------------------------------------------------------
    def _fit_begin(self, params: dict) -> None:
        m = self.model
        self._in_fit = True
        steps = params.get("steps")
        if isinstance(steps, int) and steps >= 2:
            self.facts.learn(steps_per_epoch=steps)   # epochs make the loss curve's natural scale
        if getattr(m, "optimizer", None) is not None:
            if self.optimizer is not m.optimizer:
                self.optimizer = m.optimizer
            self._patch_optimizer(m.optimizer)
        self._set_loss_kind()
        if not self._armed and not self._safe("arm", self._arm):
            return
        self._spe = int(getattr(m, "steps_per_execution", 1) or 1)
        self._resize_ring(self._spe)
        if m.train_function is None or m.train_function is not self._own_train_fn:
            if self._spe == 1:
                self._install_step_functions()
            else:   # several steps per call: one function, the sampled part under a tf.cond
                m.make_train_function(force=True)   # trace a step that holds the probe's ops
            self._own_train_fn = m.train_function
        self._epoch_base = self._host_steps

    def _install_step_functions(self) -> None:
        """``model.train_function``: Keras' own step function made twice, one traced with the
        sampled statistics and one without, and the one step ``_next_step`` needs called (which
        one is traced is told by ``_variant`` while the call runs). No tf.cond in either: a
        cond's dead branch still costs the executor a few hundred microseconds a step."""
        m = self.model
        made = []
        for _ in range(2):
            m.make_train_function(force=True)
            made.append(m.train_function)
        unsampled, sampled = made
        every = int(self.cfg.activation_every)

        def train_function(iterator):
            self._variant = bool(is_sampled(self._next_step, every))
            self._next_step += 1
            try:
                return (sampled if self._variant else unsampled)(iterator)
            finally:
                self._variant = None
        m.train_function = train_function

    def _epoch_begin(self) -> None:
        self._epoch_base = self._host_steps

    def _fit_batch(self, batch: int) -> None:
        self._host_steps = self._epoch_base + int(batch)
        if self._armed and self._host_steps - self._flushed >= self.cfg.flush_every:
            self.flush()
        self._next_step = self._host_steps
        if self.channel is not None:
            self.channel.boundary()  # raises TrainingHealthError when on_critical="raise"

    def _epoch_end(self, logs: dict) -> None:
        self._host_steps += self._spe  # the epoch's last execution (an upper bound; exact at flush)
        self._epoch_base = self._host_steps
        v = logs.get("val_loss")
        if v is not None:
            self._val_pending.append((max(0, self._host_steps - 1), float(v)))

    def _fit_end(self) -> None:
        self._in_fit = False
        self.flush()
        if self._armed:  # fit writes whole rows; a custom loop afterwards expects cleared ones
            self.buf.assign(tf.fill([self.R, self.K], math.nan))

    # -- in-graph statistics ------------------------------------------------------------------
    def _row(self):
        return tf.cast(tf.math.floormod(self.step_var, self.R), tf.int32)

    def _sampled(self, ahead: int = 0):
        return is_sampled(self.step_var + ahead, tf.constant(int(self.cfg.activation_every), tf.int64))

    def _put(self, name: str, vals, j: int | None = None) -> None:
        """Queue values for statistic ``name``'s columns of this step's row (written by ``_emit``)."""
        vals = tf.cast(vals, tf.float32)
        self._tracing.now[int(self.columns.span(name, j)[0])] = vals if vals.shape.rank == 1 else tf.reshape(vals, [-1])

    def _put_sampled(self, name: str, fn, j: int | None = None) -> None:
        """``fn()`` for statistic ``name``, measured on sampled steps only (else nan): at once in
        fit's sampled step function, not at all in its unsampled one, and in a step traced for
        every step queued for the tf.cond that ``_emit`` makes."""
        if self._variant is None:
            cols = self.columns.span(name, j)
            self._tracing.later.append((int(cols[0]), len(cols), fn))
        elif self._variant:
            self._put(name, fn(), j)

    def _emit(self, full_row: bool):
        """Write everything queued in one scatter, the sampled part under one ``tf.cond``.

        ``full_row``: the queue holds the whole step (fit: forward, loss and gradients are
        traced into one graph), so the row is written whole and needs no clearing. Otherwise
        (a custom loop's forward pass, traced apart from ``observe``) only the queued
        columns are written into a row cleared at the previous step's end. Returns the write
        (None when nothing was queued)."""
        now, later = self._tracing.now, self._tracing.later
        self._tracing.now, self._tracing.later = {}, []
        # the values as one vector (every-step pieces, then the sampled ones as the cond made
        # them) and, for each, its columns: no slicing of the cond's vector in the graph
        values = list(now.values())
        cols = [np.arange(c, c + int(v.shape[0])) for c, v in now.items()]
        if later:
            total = sum(n for _, n, _ in later)

            def compute():
                return tf.concat([tf.reshape(tf.cast(fn(), tf.float32), [-1]) for _, _, fn in later], 0)
            values.append(tf.cond(self._sampled(), compute, lambda: tf.fill([total], math.nan)))
            cols += [np.arange(c, c + n) for c, n, _ in later]
        if not values:
            return None
        cols = np.concatenate(cols).astype(np.int32)
        row = self._row()
        if full_row:
            # the whole row in one gather: each column's value, or the nan appended last
            src = tf.concat(values + [tf.fill([1], math.nan)], 0)
            where = np.full(self.K, cols.size, np.int32)
            where[cols] = np.arange(cols.size, dtype=np.int32)
            return self.replicas.local(self.buf).scatter_update(
                tf.IndexedSlices(tf.gather(src, tf.constant(where))[None], row[None]))
        idx = tf.stack([tf.fill([cols.size], row), tf.constant(cols)], axis=1)
        return self.replicas.local(self.buf).scatter_nd_update(idx, tf.concat(values, 0))

    def _input_stats(self, args, kwargs) -> None:
        x = first_tensor(self.ops, (args, kwargs))
        if x is None or not self.ops.is_float(x):
            return
        self._put("batch", self.ops.dim0(x))
        self._put("input_nonfinite", stats.input_sum(self.ops, x))   # made a 0/1 flag at the flush
        self._put_sampled("input", lambda: stats.input_stats(self.ops, x))

    def _output_stats(self, out) -> None:
        y = first_tensor(self.ops, out)
        if y is None or not self.ops.is_float(y):
            return
        self._infer_classes(y.shape)
        self._put_sampled("output", lambda: stats.output_stats(self.ops, y))

    def _act_stats(self, j: int, out) -> None:
        y = first_tensor(self.ops, out)
        if y is None or not self.ops.is_float(y):
            return
        channels_first = getattr(self._act_layers[j], "data_format", "channels_last") == "channels_first"
        axis = 1 if channels_first and (y.shape.rank or 0) >= 3 else -1
        self._put_sampled("act", lambda: stats.activation_stats(self.ops, y, self.layout.kinds[j], axis), j)

    def _loss_stats(self, loss, y, y_pred) -> None:
        loss = self.ops.f32(tf.convert_to_tensor(loss))
        self._put("loss", tf.stack([tf.reduce_mean(loss), tf.constant(1.0)]))
        if y is not None:
            self._target_stats(y, y_pred)

    def _target_stats(self, y, y_pred=None) -> None:
        y = first_tensor(self.ops, y)
        if y is None:
            return
        y = tf.stop_gradient(tf.convert_to_tensor(y))
        if y.shape.rank == 0:
            return
        if y_pred is not None:
            yp = first_tensor(self.ops, y_pred)
            if yp is not None:
                self._infer_classes(yp.shape)
        f = self.facts.facts
        c = f.n_classes
        one_hot = (self.ops.is_float(y) and c >= 2 and y.shape.rank is not None and y.shape.rank >= 2
                   and y.shape[-1] == c and f.loss_kind in ("cross_entropy", "nll"))
        sparse = self.ops.is_float(y) and c >= 2 and f.loss_name == _CE[0]  # float labels read as classes
        self._put_sampled("target", lambda: stats.target_stats(self.ops, y, c, one_hot, sparse))

    def _grad_stats(self, grads, variables, opt, unscale: bool = False) -> None:
        scale = None
        if unscale and opt is not None and hasattr(opt, "scale_loss"):
            # fit differentiates optimizer.scale_loss(loss): mixed-precision loss scaling
            try:
                scale = tf.cast(opt.scale_loss(tf.constant(1.0)), tf.float32)
            except Exception:
                scale = None
        where, found = [], []
        for g, v in zip(grads, variables):
            i = self._var_idx.get(id(v))
            if i is None:
                i = self._var_idx_by_path(v)
            if i is None or g is None:
                continue
            where.append(i)
            found.append(g.values if isinstance(g, tf.IndexedSlices) else g)
        measured = self.ops.norm_vector(found) if found else None
        if measured is not None and scale is not None:
            measured = measured / scale
        n = self.layout.n_params
        if measured is not None and where == list(range(n)):
            self._put("grad", measured)   # every parameter, in order: the vector as it is
        elif measured is not None:        # the others keep the MISSING sentinel
            self._put("grad", tf.tensor_scatter_nd_update(tf.fill([n], MISSING), [[i] for i in where], measured))
        else:
            self._put("grad", tf.fill([n], MISSING))
        self._put_lr(opt)

    def _unmeasured_grads(self, opt) -> None:
        self._put("grad", tf.fill([self.layout.n_params], UNMEASURED))
        self._put_lr(opt)

    def _var_idx_by_path(self, v):
        path = str(getattr(v, "path", None) or getattr(v, "name", ""))
        try:
            return list(self.layout.params).index(path)
        except ValueError:
            return None

    def _put_lr(self, opt) -> None:
        if opt is None:
            return
        try:
            lr = opt.learning_rate
            lr = tf.cast(tf.convert_to_tensor(getattr(lr, "value", lr)), tf.float32)
        except Exception:
            return
        self._put("lr", tf.reshape(lr, [1]))

    def _samples(self):
        """The current values of every weight tensor's update sample."""
        out = []
        for i, _, index, _ in self._plan:
            out.append(stats.weight_sample(self.ops, _value(self._vars[i]), index))
        return out

    def _close_step(self) -> None:
        """End of a training step (in-graph): parameter norms and update ratios on sampled
        steps, the pre-step snapshot for the next sampled step, step += 1, clear the next row."""
        before, self._tracing.before = self._tracing.before, None
        if "updates" not in self._disabled:
            if self._variant is None:
                self._put_sampled("param_norm", self._sampled_norms)
                self._put_sampled("update", self._sampled_updates)
            elif before is not None:   # fit's sampled step function read them in apply
                norms, samples = before
                self._put("param_norm", norms)
                self._safe("updates", lambda: self._put("update", self._update_ratios(samples)))
        written = self._safe("emit", self._emit, bool(self._tracing.in_train_step))
        if self._variant is None:
            # before a sampled step's update: its parameter norms and weight samples
            self._safe("updates", lambda: tf.cond(self._sampled(1), lambda: self._snap(self.step_var + 1),
                                                  lambda: tf.constant(0)))
        # after the row is written: nothing orders two variables' updates in a traced step,
        # and a step whose batch never came (an exhausted generator) must not count
        with tf.control_dependencies([] if written is None or tf.executing_eagerly() else [written]):
            self.step_var.assign_add(1)
        if not self._tracing.in_train_step:  # custom loop: the next forward writes part of a row
            self.replicas.local(self.buf).scatter_update(
                tf.IndexedSlices(tf.fill([1, self.K], math.nan), self._row()[None]))

    def _weights_now(self) -> tuple[Any, list]:
        """The parameter norms and the weight samples as they are now."""
        return stats.param_norms(self.ops, [_value(v) for v in self._vars]), self._samples()

    def _snap(self, step):
        """Copy the parameter norms and the weight samples; they belong to sampled step ``step``."""
        norms, samples = self._weights_now()
        self.shadow.assign(tf.concat(samples, 0) if self._plan else tf.zeros([1]))
        self.shadow_norms.assign(norms)
        self.shadow_step.assign(tf.cast(step, tf.int64))
        return tf.constant(0)

    def _sampled_norms(self):
        """The parameter norms before this step's update (nan where the snapshot is not this step's)."""
        valid = tf.equal(self.shadow_step, self.step_var)
        return tf.where(valid, self.shadow_norms[:self.layout.n_params], math.nan)

    def _sampled_updates(self):
        """|dW| / |W| per weight tensor on its sample (nan where the snapshot is not this step's)."""
        before = [self.shadow[off:off + n] for _, off, _, n in self._plan]
        return self._update_ratios(before, tf.equal(self.shadow_step, self.step_var))

    def _update_ratios(self, before: list, valid=None):
        """|dW| / |W| per weight tensor, from the samples ``before`` the update to the samples
        now (nan for the other parameters, and everywhere ``valid`` is false)."""
        ratios = [tf.constant(math.nan)] * self.layout.n_params
        if self._plan:
            r = stats.update_ratios(self.ops, before, self._samples())
            for k, (i, _, _, _) in enumerate(self._plan):
                ratios[i] = r[k] if valid is None else tf.where(valid, r[k], math.nan)
        return tf.stack(ratios)

    # -- observe(): custom GradientTape loops --------------------------------------------------
    def observe(self, loss, targets, val_loss, gradients, step) -> None:
        if val_loss is not None:
            self._val_pending.append((max(0, self._host_steps - 1), val_loss))
        if loss is None and targets is None and gradients is None:
            return
        if self._in_fit:
            self._warn("observe-fit", "observe(loss/gradients) during model.fit is "
                       "ignored: fit's loss and gradients are captured already")
            return
        if self.replicas.distributed:
            self._warn("observe-replicas", f"observe(loss/gradients) under a distribution strategy with "
                       f"{self.replicas.in_sync} replicas is not supported (model.fit is): ignored")
            return
        if not self._armed and not self._arm():
            return
        grads = None
        if gradients is not None:
            grads = [g[0] if isinstance(g, tuple) else g for g in gradients]
            if len(grads) != self.layout.n_params:
                raise ValueError(f"observe(gradients=...): got {len(grads)} gradients for "
                                 f"{self.layout.n_params} trainable variables (pass tape.gradient(loss, model.trainable_variables))")
        if loss is not None and not isinstance(loss, (tf.Tensor, tf.Variable)):
            loss = tf.constant(float(loss), tf.float32)
        opt = self.optimizer if self.optimizer is not None else getattr(self.model, "optimizer", None)
        if opt is not self._observe_opt:  # the optimizer is read inside the traced function
            self._observe_opt = opt
            self._observe_fn = tf.function(self._observe_graph, reduce_retracing=True)
        if tf.executing_eagerly():
            self._observe_fn(loss, targets, grads)
            self._host_steps += 1
            if self._host_steps - self._flushed >= self.cfg.flush_every:
                self.flush()
            if self.channel is not None:
                self.channel.boundary()
        else:  # called inside the user's tf.function: record in-graph, read at flush()/detach()
            self._observe_graph(loss, targets, grads)
            if not self._graph_observe_warned:
                self._graph_observe_warned = True
                self._warn("observe-graph", "observe() was called inside a tf.function: "
                           "statistics are recorded but read only at probe.flush()/detach(); "
                           "return loss and gradients from the compiled step and call observe() outside it")

    def _observe_graph(self, loss, targets, grads) -> None:
        opt = self._observe_opt
        self._tracing.now, self._tracing.later = {}, []
        if loss is not None:
            self._safe("loss", self._loss_stats, loss, None, None)
        if targets is not None:
            self._safe("targets", self._target_stats, targets)
        if grads is not None:
            self._safe("gradients", self._grad_stats, grads, self._vars, opt)
        elif opt is not None:
            self._safe("lr", self._put_lr, opt)
        self._safe("step", self._close_step)

    # -- flush: the one host read -----------------------------------------------------------------
    def _pack(self, extra):
        """Every local replica's ring, the step counter and ``extra``, as one flat tensor."""
        rings = [tf.reshape(tf.cast(ring, tf.float64), [-1]) for ring in self.replicas.copies(self.buf)]
        return tf.concat(rings + [tf.cast(self.step_var, tf.float64)[None], tf.cast(extra, tf.float64)], 0)

    def flush(self) -> None:
        vals, self._val_pending = self._val_pending, []
        if not vals and self._host_steps == self._flushed and not self._graph_observe_warned:
            return  # nothing can be pending: no read
        if not self._armed:
            if vals:
                self._send([(s, float(v)) for s, v in vals])
            return
        extra = [tf.reshape(tf.cast(v, tf.float64), []) if isinstance(v, (tf.Tensor, tf.Variable))
                 else tf.constant(float(v), tf.float64) for _, v in vals]
        extra_t = tf.stack(extra) if extra else tf.zeros([0], tf.float64)
        if self._pack_fn is None:   # one graph call, where eager casts, reshapes and a concat took ~1 ms;
            # one trace for any number of validation values (a shape per count retraced, and warned)
            self._pack_fn = tf.function(self._pack, input_signature=[tf.TensorSpec([None], tf.float64)])
        host = self._pack_fn(extra_t).numpy()   # the single device->host copy of this flush
        self.n_host_reads += 1
        rk = self.R * self.K * len(self.replicas.copies(self.buf))
        rings = host[:rk].reshape(-1, self.R, self.K)   # [replica, row, column]
        now = int(host[rk])
        val_host = host[rk + 1:]
        start = max(self._flushed, now - self.R + 1)
        if start > self._flushed:
            self._warn("ring", f"{start - self._flushed} steps were overwritten before "
                       "they were read (raise flush_every's ring or flush more often)")
        self._flushed = now
        self._epoch_base += now - self._host_steps   # the host's step estimate, corrected
        self._host_steps = now
        val_points = [(min(s, max(0, now - 1)), float(val_host[k])) for k, (s, _) in enumerate(vals)]
        if now > start or val_points:
            self._send(val_points, decode=self._decoder(rings, list(range(start, now))))

    def _send(self, val_points: list[tuple[int, float]], decode=None) -> None:
        if self.channel is None:
            return
        layout, self._layout_unsent = (self.layout if self._layout_unsent else None), False
        self.channel.ingest(Flush(val_points=val_points, facts=self.facts.facts, layout=layout, decode=decode))

    def _decoder(self, rings: np.ndarray, steps: list[int]):
        """The records of ``steps`` from the host copy of the rings ([replica, row, column]),
        decoded when called -- on the probe's worker thread, numpy only, while the training
        thread runs the next steps (decoding them here cost ~60 us per step)."""
        R, columns = self.R, self.columns
        bn_eval = float(len(self._bn_eval))
        acts = columns.span("act").reshape(-1, 3) if self.layout.n_activations else np.zeros((0, 3), int)
        bn_cols = acts[self._bn_idx, 2] if self._bn_idx else None

        def decode(pause=None):
            at = columns.start("input_nonfinite")   # each replica's input sum -> its flag
            seen = np.isfinite(rings[:, :, columns.start("batch")])   # the step saw a float batch
            rings[:, :, at] = np.where(np.isnan(rings[:, :, at]) & ~seen, np.nan, stats.nonfinite_flag(rings[:, :, at]))
            rows = np.stack([columns.combine(rings[:, s % R]) for s in steps]) if steps else np.zeros((0, self.K))
            if bn_cols is not None:   # a sampled step ran the BN layers
                ran = np.isfinite(rows[:, bn_cols]).any(axis=1)
                rows[ran, columns.field("bn_eval_in_train")] = bn_eval
            if pause is not None:
                pause()
            return columns.decode_rows(steps, rows), ()
        return decode


def _value(v):
    """A Keras variable's current value as a float32 tensor."""
    return tf.cast(tf.convert_to_tensor(getattr(v, "value", v)), tf.float32)
