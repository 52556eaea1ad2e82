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
no host involvement. Activation statistics, parameter norms and update/weight ratios run
under a ``tf.cond`` that is true every ``activation_every`` steps only.

Update/weight ratios are measured on a fixed, evenly strided sample of at most
``_UPDATE_SAMPLE`` elements per weight tensor (exact for tensors smaller than that): a copy of
the sample is taken at the end of the step before a sampled one and compared at the end of
the sampled step, so no full copy of the weights is ever kept.

The host reads the ring once every ``flush_every`` steps: from a Keras callback that the
wrapped ``model.fit`` adds (it uses only ``on_train_batch_begin``, which keeps Keras' async
batch-end dispatch intact) or, in a custom loop, from ``observe``. ``n_host_reads`` counts the
reads. Validation loss comes from fit's epoch logs (already on the host) or ``observe(val_loss=)``.

Activation statistics come from the wrapped layer ``call``s, i.e. from the tensors the
training step computes anyway: no sub-model and no second forward pass.

Limits: Keras 3 only (not legacy ``tf_keras``); no distribution strategy with several
replicas (the probe stays off and says so); in a custom loop, attach before the first call
of your compiled step (a ``tf.function`` traced earlier holds no probe ops), and after
``detach`` a step function traced while attached still carries the (now orphaned) probe
ops until you re-create it. Keras-managed functions (``fit``) are re-traced clean.
"""
from __future__ import annotations

import functools
import inspect
import math
import weakref
from typing import Any

import numpy as np
import tensorflow as tf
import keras

from .base import CaptureGuard
from ..capture.facts import FactSheet
from ..record import Flush, Layout, StepRecord

_UPDATE_SAMPLE = 4096  # elements per weight tensor used for update/weight ratios
_ATTACHED: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()

# fixed columns of the ring buffer; per-parameter and per-activation blocks follow
_LOSS, _LOSS_SEEN, _LR = 0, 1, 2
_X = 3        # input: nonfinite count, |x| max, mean, std
_OUT = 7      # output: |y| max, std, softmax saturation, probability rows, nonfinite count
_TGT = 12     # targets: min, max, distinct classes, is index, batch size
_FIXED = 17
_STALE = object()
_MISSING = -1.0  # grad-norm sentinel: the variable got no gradient (norms are >= 0 or nan)

_ACT_NAMES = {"relu": "relu", "relu6": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "softmax": "softmax"}
_CE = ("sparse_categorical_crossentropy", "categorical_crossentropy")
_REGRESSION = ("mean_squared_error", "mse", "mean_absolute_error", "mae", "huber", "log_cosh",
               "mean_squared_logarithmic_error", "msle", "mean_absolute_percentage_error", "mape")


_OUTPUT_ACTIVATIONS = {**_ACT_NAMES, "log_softmax": "log_softmax", "linear": "linear", "leaky_relu": "relu"}


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


def _activation_name(fn: Any) -> str | None:
    return _ACT_NAMES.get(_keras_activation(fn))


def _output_activation(fn: Any) -> str:
    """Facts.output_activation of a layer whose activation is ``fn`` (a layer without one is linear)."""
    return _OUTPUT_ACTIVATIONS.get(_keras_activation(fn), "") if fn is not None else "linear"


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
    return _activation_name(getattr(layer, "activation", None))


def _loss_facts(loss: Any) -> dict[str, Any]:
    """Facts about a compiled loss: kind, Keras name, from_logits. Keras cross-entropy on
    probabilities (``from_logits=False``, the default) expects normalised outputs, as
    torch's NLLLoss does: it is reported as "nll" so no rule mistakes it for a logits loss."""
    kind, name, from_logits = _loss_kind(loss)
    return {"loss_kind": kind, "loss_name": name, "loss_from_logits": from_logits if name else None}


def _loss_kind(loss: Any) -> tuple[str, str, bool]:
    if loss is None or isinstance(loss, (list, tuple, dict)):
        return "", "", False
    from_logits = False
    if isinstance(loss, str):
        name = loss
    else:
        fn = getattr(loss, "fn", None)
        name = getattr(fn, "__name__", None) or getattr(loss, "name", None) or getattr(loss, "__name__", "")
        from_logits = bool(getattr(loss, "_fn_kwargs", {}).get("from_logits", getattr(loss, "from_logits", False)))
    name = str(name).lower()
    if name in _CE:
        return ("cross_entropy" if from_logits else "nll"), name, from_logits
    if name == "binary_crossentropy":
        return ("bce_logits" if from_logits else "bce"), name, from_logits
    if name in _REGRESSION:
        return "mse", name, from_logits
    return "", name, from_logits


def _first_tensor(obj: Any):
    """The tensor an input/output most likely means (tensors as-is; dict by common keys;
    sequences: the first tensor)."""
    if isinstance(obj, (tf.Tensor, tf.Variable)) or (hasattr(obj, "dtype") and hasattr(obj, "shape")
                                                     and not isinstance(obj, (dict, list, tuple))):
        return obj
    if isinstance(obj, dict):
        for key in ("logits", "output", "out", "y_pred"):
            if key in obj:
                return _first_tensor(obj[key])
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _is_float(t) -> bool:
    try:
        return tf.as_dtype(t.dtype).is_floating
    except Exception:
        return False


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
        if model in _ATTACHED:
            raise RuntimeError(
                "lossprobe.attach: this model already has a probe attached; call probe.detach() "
                "on the first one (or use it as a context manager) before attaching again.")
        self.model = model
        self.cfg = config
        self.optimizer = optimizer
        self.channel = None
        self.n_host_reads = 0
        self.validation_losses_seen = 0
        self._patches: list[tuple[Any, str, bool, Any]] = []
        self._patched_opts: set[int] = set()
        self._disabled: set[str] = set()
        self._armed = False
        self._in_train_step = 0
        self._fwd_training: bool = False
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
        self._now: dict[int, Any] = {}     # this step's queued columns (while tracing)
        self._later: list[tuple[int, int, Any]] = []
        # activation layers are known before the model is built
        acts = []
        for layer in self._layers():
            kind = _layer_kind(layer)
            if kind:
                acts.append((layer, kind))
        self._act_layers = [l for l, _ in acts]
        self._kinds = [k for _, k in acts]
        self.layout = Layout(framework="tensorflow", activations=[self._layer_name(l) for l, _ in acts],
                             kinds=self._kinds, activation_types=[type(l).__name__ for l, _ in acts])
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
        shapes = [tuple(int(d or 0) for d in v.shape) for v in variables]
        self.layout = Layout(framework="tensorflow", activations=self.layout.activations, kinds=self._kinds,
                             activation_types=self.layout.activation_types, params=[str(getattr(v, "path", None) or v.name) for v in variables],
                             param_sizes=[int(np.prod(s)) if s else 1 for s in shapes],
                             is_weight=[len(s) >= 2 for s in shapes])
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
        layer = outs[0]
        act = "softmax" if isinstance(layer, keras.layers.Softmax) else _output_activation(getattr(layer, "activation", None))
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
        _ATTACHED[self.model] = channel
        m = self.model
        self._patch(m, "call", self._wrap_model_call(m.call))
        self._patch(m, "train_step", self._wrap_train_step(m.train_step))
        self._patch(m, "compute_loss", self._wrap_compute_loss(m.compute_loss))
        self._patch(m, "fit", self._wrap_fit(m.fit))
        for j, layer in enumerate(self._act_layers):
            self._patch(layer, "call", self._wrap_layer_call(layer.call, j))
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
        for obj, name, had, old in reversed(self._patches):
            try:
                if had:
                    setattr(obj, name, old)
                else:
                    delattr(obj, name)
            except Exception:
                pass
        self._patches.clear()
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

    def _patch(self, obj, name: str, fn) -> None:
        had = name in vars(obj)
        self._patches.append((obj, name, had, vars(obj).get(name)))
        setattr(obj, name, fn)

    def _patch_optimizer(self, opt) -> None:
        if id(opt) in self._patched_opts or not hasattr(opt, "apply"):
            return
        self._patched_opts.add(id(opt))
        self._patch(opt, "apply", self._wrap_apply(opt, opt.apply))

    def _arm(self) -> bool:
        """Create the device buffers (needs the trainable variables). Idempotent."""
        if self._armed:
            return True
        if self._detached:
            return False
        if not self.layout.params and not self._build_layout():
            return False
        replicas = int(getattr(getattr(self.model, "distribute_strategy", None), "num_replicas_in_sync", 1) or 1)
        if replicas > 1:
            raise NotImplementedError(f"lossprobe: training under a distribution strategy with {replicas} "
                                      "replicas is not supported yet; the probe stays off")
        n_p, n_a = len(self.layout.params), len(self.layout.activations)
        self.n_p, self.n_a = n_p, n_a
        self._GRAD, self._PNORM = _FIXED, _FIXED + n_p
        self._UPD, self._ACT = _FIXED + 2 * n_p, _FIXED + 3 * n_p
        self.K = _FIXED + 3 * n_p + 3 * n_a
        self._sample_plan()
        with tf.init_scope():
            self.R = int(self.cfg.flush_every) + 9   # room for one execution of 1 step past the flush point
            self.buf = tf.Variable(tf.fill([self.R, self.K], math.nan), trainable=False, name="lossprobe_ring")
            self.step_var = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="lossprobe_step")
            self.shadow = tf.Variable(tf.zeros([max(1, self._shadow_len)]), trainable=False, name="lossprobe_shadow")
            self.shadow_step = tf.Variable(tf.constant(-1, tf.int64), trainable=False, name="lossprobe_shadow_step")
        self._observe_fn = tf.function(self._observe_graph, reduce_retracing=True)
        self._observe_opt = None
        self._armed = True
        return True

    def _resize_ring(self, spe: int) -> None:
        """fit may run several steps per host call (steps_per_execution): the ring must hold them."""
        need = int(self.cfg.flush_every) + max(1, spe) + 8
        if need > self.R:
            self.flush()
            with tf.init_scope():
                self.R = need
                self.buf = tf.Variable(tf.fill([self.R, self.K], math.nan), trainable=False, name="lossprobe_ring")
            self._observe_opt = _STALE  # functions traced against the old ring must be rebuilt
            self._own_train_fn = None

    def _sample_plan(self) -> None:
        plan, off = [], 0
        for i in self.weight_idx:
            size = self.layout.param_sizes[i]
            stride = max(1, size // _UPDATE_SAMPLE)
            n = len(range(0, size, stride)[:_UPDATE_SAMPLE])
            plan.append((i, off, n, stride))
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
        return self._armed and self._fwd_training and "capture" not in self._disabled

    # -- wrappers (their bodies run while Keras traces the step) --------------------------
    def _wrap_model_call(self, orig):
        @functools.wraps(orig)
        def call(*args, **kwargs):
            training = kwargs.get("training")
            rec = False
            if not _symbolic((args, kwargs)):
                if training is None:
                    rec = bool(self._in_train_step) or _tape_active()
                else:
                    rec = bool(training) and not isinstance(training, tf.Tensor)
            if rec and not self._armed:
                self._safe("arm", self._arm)
            outer = self._fwd_training
            self._fwd_training = rec
            try:
                if rec and self._armed and not outer and not self._in_train_step:
                    self._now, self._later = {}, []   # custom loop: a fresh forward pass
                if rec and self._armed and self.cfg.capture_inputs:
                    self._safe("inputs", self._input_stats, args, kwargs)
                out = orig(*args, **kwargs)
                if rec and self._armed and self.cfg.capture_outputs:
                    self._safe("outputs", self._output_stats, out)
                if rec and self._armed and not outer and not self._in_train_step:
                    self._safe("emit", self._emit, False)
                return out
            finally:
                self._fwd_training = outer
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
            if not self._in_train_step:
                self._now, self._later = {}, []
            self._in_train_step += 1
            try:
                return orig(*args, **kwargs)
            finally:
                self._in_train_step -= 1
        return train_step

    def _wrap_compute_loss(self, orig):
        try:
            sig = inspect.signature(orig)
        except (TypeError, ValueError):
            sig = None

        @functools.wraps(orig)
        def compute_loss(*args, **kwargs):
            loss = orig(*args, **kwargs)
            if self._in_train_step and self._armed:
                a = {}
                if sig is not None:
                    try:
                        a = sig.bind_partial(*args, **kwargs).arguments
                    except TypeError:
                        a = {}
                if a.get("training", True) is not False:
                    self._safe("loss", self._loss_stats, loss, a.get("y"), a.get("y_pred"))
            return loss
        return compute_loss

    def _wrap_apply(self, opt, orig):
        @functools.wraps(orig)
        def apply(grads, trainable_variables=None):
            active = bool(self._in_train_step) and self._armed
            grads = list(grads)
            if active:
                variables = list(trainable_variables) if trainable_variables is not None else \
                    list(getattr(opt, "_trainable_variables", []))
                self._safe("gradients", self._grad_stats, grads, variables, opt, True)
            out = orig(grads, trainable_variables)
            if active:
                self._safe("step", self._close_step)
            return out
        return apply

    def _wrap_fit(self, orig):
        try:
            sig = inspect.signature(orig)
        except (TypeError, ValueError):
            sig = None

        @functools.wraps(orig)
        def fit(*args, **kwargs):
            if sig is None:
                return orig(*args, **kwargs)
            ba = sig.bind(*args, **kwargs)
            cbs = ba.arguments.get("callbacks")
            mine = _FitCallback(self)
            if cbs is None:
                cbs = [mine]
            elif isinstance(cbs, keras.callbacks.CallbackList):
                cbs.callbacks.append(mine)
                mine.set_model(self.model)
            else:
                cbs = list(cbs) + [mine]
            ba.arguments["callbacks"] = cbs
            try:
                return orig(*ba.args, **ba.kwargs)
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
            m.make_train_function(force=True)   # trace a step that holds the probe's ops
            self._own_train_fn = m.train_function
        self._epoch_base = self._host_steps

    def _epoch_begin(self) -> None:
        self._epoch_base = self._host_steps

    def _fit_batch(self, batch: int) -> None:
        self._host_steps = self._epoch_base + int(batch)
        if self._armed and self._host_steps - self._flushed >= self.cfg.flush_every:
            self.flush()
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
        return tf.equal(tf.math.floormod(self.step_var + ahead, int(self.cfg.activation_every)), 0)

    def _put(self, col: int, vals) -> None:
        """Queue values for columns ``col...`` of this step's row (written by ``_emit``)."""
        self._now[col] = tf.reshape(tf.cast(vals, tf.float32), [-1])

    def _put_sampled(self, col: int, n: int, fn) -> None:
        """Queue ``fn()`` (``n`` values), computed only on sampled steps (else nan)."""
        self._later.append((col, n, fn))

    def _emit(self, full_row: bool) -> None:
        """Write everything queued in one scatter, the sampled part under one ``tf.cond``.

        ``full_row``: the queue holds the whole step (fit: forward, loss and gradients are
        traced into one graph), so the row is written whole and needs no clearing. Otherwise
        (a custom loop's forward pass, traced apart from ``observe``) only the queued
        columns are written into a row cleared at the previous step's end."""
        now, later = self._now, self._later
        self._now, self._later = {}, []
        pieces = dict(now)
        if later:
            total = sum(n for _, n, _ in later)

            def compute():
                return tf.concat([tf.reshape(tf.cast(fn(), tf.float32), [-1]) for _, _, fn in later], 0)
            v = tf.cond(self._sampled(), compute, lambda: tf.fill([total], math.nan))
            off = 0
            for col, n, _ in later:
                pieces[col] = v[off:off + n]
                off += n
        if not pieces:
            return
        row = self._row()
        if full_row:
            parts, at = [], 0
            for col in sorted(pieces):
                if col > at:
                    parts.append(tf.fill([col - at], math.nan))
                parts.append(pieces[col])
                at = col + int(pieces[col].shape[0])
            if at < self.K:
                parts.append(tf.fill([self.K - at], math.nan))
            self.buf.scatter_update(tf.IndexedSlices(tf.concat(parts, 0)[None], row[None]))
        else:
            cols = np.concatenate([np.arange(c, c + int(v.shape[0])) for c, v in pieces.items()]).astype(np.int32)
            idx = tf.stack([tf.fill([cols.size], row), tf.constant(cols)], axis=1)
            self.buf.scatter_nd_update(idx, tf.concat(list(pieces.values()), 0))

    @staticmethod
    def _std(y):
        return tf.math.reduce_std(y) if y.shape.num_elements() != 1 else tf.zeros([])

    def _input_stats(self, args, kwargs) -> None:
        x = _first_tensor(list(args) + list(kwargs.values()))
        if x is None or not _is_float(x):
            return
        x = tf.cast(tf.stop_gradient(x), tf.float32)
        bad = tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(x)), tf.float32))
        self._put(_X, bad[None])
        self._put_sampled(_X + 1, 3, lambda: tf.stack([tf.reduce_max(tf.abs(x)), tf.reduce_mean(x), self._std(x)]))

    def _output_stats(self, out) -> None:
        y = _first_tensor(out)
        if y is None or not _is_float(y):
            return
        self._infer_classes(y.shape)
        y = tf.cast(tf.stop_gradient(y), tf.float32)
        self._put(_OUT, tf.reduce_max(tf.abs(y))[None])

        def stats():
            nan = tf.constant(math.nan)
            if y.shape.rank is not None and y.shape.rank >= 2 and (y.shape[-1] or 0) >= 2:
                y2 = tf.reshape(y, [-1, tf.shape(y)[-1]])
                sat = tf.reduce_mean(tf.cast(tf.reduce_max(tf.nn.softmax(y2, -1), -1) >= 1.0, tf.float32))
                prob = tf.reduce_mean(tf.cast(
                    (tf.reduce_min(y2, -1) >= 0) & (tf.reduce_max(y2, -1) <= 1)
                    & (tf.abs(tf.reduce_sum(y2, -1) - 1) < 1e-3), tf.float32))
            else:
                sat = prob = nan
            bad = tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(y)), tf.float32))
            return tf.stack([self._std(y), sat, prob, bad])
        self._put_sampled(_OUT + 1, 4, stats)

    def _act_stats(self, j: int, out) -> None:
        y = _first_tensor(out)
        if y is None or not _is_float(y):
            return
        y = tf.cast(tf.stop_gradient(y), tf.float32)
        kind = self.layout.kinds[j]
        layer = self._act_layers[j]

        def stats():
            nan = tf.constant(math.nan)
            dead = sat = nan
            rank = y.shape.rank or 0
            if kind == "relu" and rank >= 2:
                z = y
                if getattr(layer, "data_format", "channels_last") == "channels_first" and rank >= 3:
                    z = tf.experimental.numpy.moveaxis(z, 1, -1)
                z = tf.reshape(z, [-1, tf.shape(z)[-1]])
                dead = tf.reduce_mean(tf.cast(tf.reduce_max(z, 0) <= 0, tf.float32))
            elif kind == "sigmoid":
                sat = tf.reduce_mean(tf.cast((y < 1e-3) | (y > 1 - 1e-3), tf.float32))
            elif kind == "tanh":
                sat = tf.reduce_mean(tf.cast(tf.abs(y) > 1 - 1e-3, tf.float32))
            return tf.stack([dead, sat, self._std(y)])
        self._put_sampled(self._ACT + 3 * j, 3, stats)

    def _loss_stats(self, loss, y, y_pred) -> None:
        loss = tf.cast(tf.stop_gradient(tf.convert_to_tensor(loss)), tf.float32)
        self._put(_LOSS, tf.stack([tf.reduce_mean(loss), tf.constant(1.0)]))
        if y is not None:
            self._target_stats(y, y_pred)

    def _target_stats(self, y, y_pred=None) -> None:
        y = _first_tensor(y)
        if y is None:
            return
        y = tf.stop_gradient(tf.convert_to_tensor(y))
        if y.shape.rank == 0:
            return
        if y_pred is not None:
            yp = _first_tensor(y_pred)
            if yp is not None:
                self._infer_classes(yp.shape)
        facts = self.facts.facts
        c, kind = facts.n_classes, facts.loss_kind
        one_hot = (_is_float(y) and c >= 2 and y.shape.rank is not None and y.shape.rank >= 2
                   and y.shape[-1] == c and kind in ("cross_entropy", "nll"))
        sparse_float = _is_float(y) and c >= 2 and facts.loss_name == _CE[0]

        def stats():
            nan = tf.constant(math.nan)
            if one_hot:
                idx = tf.reshape(tf.argmax(y, -1, output_type=tf.int32), [-1])
                yf = tf.cast(idx, tf.float32)
            else:
                yf = tf.reshape(tf.cast(y, tf.float32), [-1])
                idx = tf.cast(yf, tf.int32)
            is_index = one_hot or sparse_float or (not _is_float(y))
            if is_index and c >= 2:
                counts = tf.reduce_sum(tf.one_hot(tf.clip_by_value(idx, 0, c - 1), c), 0)
                distinct = tf.reduce_sum(tf.cast(counts > 0, tf.float32))
            else:
                distinct = nan
            batch = tf.cast(tf.shape(y)[0], tf.float32)
            return tf.stack([tf.reduce_min(yf), tf.reduce_max(yf), distinct,
                             tf.constant(1.0 if is_index else 0.0), batch])
        self._put_sampled(_TGT, 5, stats)

    def _grad_stats(self, grads, variables, opt, unscale: bool = False) -> None:
        norms = [tf.constant(_MISSING)] * self.n_p
        scale = None
        if unscale and opt is not None and hasattr(opt, "scale_loss"):
            # fit differentiates optimizer.scale_loss(loss): mixed-precision loss scaling
            try:
                scale = tf.cast(opt.scale_loss(tf.constant(1.0)), tf.float32)
            except Exception:
                scale = None
        for g, v in zip(grads, variables):
            i = self._var_idx.get(id(v))
            if i is None:
                i = self._var_idx_by_path(v)
            if i is None or g is None:
                continue
            if isinstance(g, tf.IndexedSlices):
                g = g.values
            norms[i] = tf.norm(tf.cast(tf.stop_gradient(g), tf.float32))
            if scale is not None:
                norms[i] = norms[i] / scale
        self._put(self._GRAD, tf.stack(norms))
        self._put_lr(opt)

    def _var_idx_by_path(self, v):
        path = str(getattr(v, "path", None) or getattr(v, "name", ""))
        try:
            return self.layout.params.index(path)
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
        self._put(_LR, tf.reshape(lr, [1]))

    def _sample(self, i: int, n: int, stride: int):
        flat = tf.reshape(_value(self._vars[i]), [-1])
        return flat[: n * stride: stride] if stride > 1 else flat[:n]

    def _close_step(self) -> None:
        """End of a training step (in-graph): parameter norms and update ratios on sampled
        steps, the pre-step snapshot for the next sampled step, step += 1, clear the next row."""
        n_p = self.n_p

        def sampled_stats():
            pn = tf.stack([tf.norm(_value(v)) for v in self._vars])
            upd = [tf.constant(math.nan)] * n_p
            valid = tf.equal(self.shadow_step, self.step_var)
            for i, off, n, stride in self._plan:
                before = self.shadow[off:off + n]
                diff = tf.norm(self._sample(i, n, stride) - before)
                ratio = diff / tf.maximum(tf.norm(before), 1e-30)
                upd[i] = tf.where(valid, ratio, math.nan)
            return tf.concat([pn, tf.stack(upd)], 0)

        if "updates" not in self._disabled:
            self._put_sampled(self._PNORM, 2 * n_p, sampled_stats)
        self._safe("emit", self._emit, bool(self._in_train_step))

        def snap():  # copy the weight samples before a sampled step's update
            cur = tf.concat([self._sample(i, n, s) for i, _, n, s in self._plan], 0) \
                if self._plan else tf.zeros([1])
            self.shadow.assign(cur)
            self.shadow_step.assign(self.step_var + 1)
            return tf.constant(0)
        self._safe("updates", lambda: tf.cond(self._sampled(1), snap, lambda: tf.constant(0)))
        self.step_var.assign_add(1)
        if not self._in_train_step:  # custom loop: the next forward writes part of a row
            self.buf.scatter_update(tf.IndexedSlices(tf.fill([1, self.K], math.nan), self._row()[None]))

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
        if not self._armed and not self._arm():
            return
        grads = None
        if gradients is not None:
            grads = [g[0] if isinstance(g, tuple) else g for g in gradients]
            if len(grads) != self.n_p:
                raise ValueError(f"observe(gradients=...): got {len(grads)} gradients for "
                                 f"{self.n_p} trainable variables (pass tape.gradient(loss, model.trainable_variables))")
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
        self._now, self._later = {}, []
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
        return tf.concat([tf.reshape(tf.cast(self.buf, tf.float64), [-1]),
                          tf.cast(self.step_var, tf.float64)[None], tf.cast(extra, tf.float64)], 0)

    def flush(self) -> None:
        vals, self._val_pending = self._val_pending, []
        if not vals and self._host_steps == self._flushed and not self._graph_observe_warned:
            return  # nothing can be pending: no read
        if not self._armed:
            if vals:
                self._send([], [(s, float(v)) for s, v in vals])
            return
        extra = [tf.reshape(tf.cast(v, tf.float64), []) if isinstance(v, (tf.Tensor, tf.Variable))
                 else tf.constant(float(v), tf.float64) for _, v in vals]
        extra_t = tf.stack(extra) if extra else tf.zeros([0], tf.float64)
        host = self._pack(extra_t).numpy()   # the single device->host copy of this flush
        self.n_host_reads += 1
        rk = self.R * self.K
        ring = host[:rk].reshape(self.R, self.K)
        now = int(host[rk])
        val_host = host[rk + 1:]
        start = max(self._flushed, now - self.R + 1)
        if start > self._flushed:
            self._warn("ring", f"{start - self._flushed} steps were overwritten before "
                                  "they were read (raise flush_every's ring or flush more often)")
        records = [self._decode(s, ring[s % self.R]) for s in range(start, now)]
        self._flushed = now
        self._epoch_base += now - self._host_steps   # the host's step estimate, corrected
        self._host_steps = now
        val_points = [(min(s, max(0, now - 1)), float(val_host[k])) for k, (s, _) in enumerate(vals)]
        if records or val_points:
            self._send(records, val_points)

    def _send(self, records: list[StepRecord], val_points: list[tuple[int, float]]) -> None:
        if self.channel is None:
            return
        layout, self._layout_unsent = (self.layout if self._layout_unsent else None), False
        self.channel.ingest(Flush(records=records, val_points=val_points, facts=self.facts.facts, layout=layout))

    def _decode(self, step: int, row: np.ndarray) -> StepRecord:
        rec = StepRecord.empty(step, self.layout)
        n_p, n_a = self.n_p, self.n_a
        rec.loss = float(row[_LOSS])
        rec.loss_seen = 1.0 if row[_LOSS_SEEN] == 1.0 else 0.0
        if not rec.loss_seen:
            rec.loss = math.nan
        rec.lr = float(row[_LR])
        g = row[self._GRAD:self._GRAD + n_p].astype(float)
        missing = g == _MISSING
        g[missing] = np.nan
        if not np.isnan(row[self._GRAD:self._GRAD + n_p]).all():
            rec.param_grad_norms = g
            rec.param_grad_missing = missing
            present = g[~missing]
            rec.grad_norm = float(np.sqrt(np.sum(present ** 2))) if present.size else math.nan
        rec.param_norms = row[self._PNORM:self._PNORM + n_p].astype(float)
        rec.update_ratios = row[self._UPD:self._UPD + n_p].astype(float)
        x = row[_X:_X + 4]
        rec.input_nonfinite = float(x[0])
        rec.input_abs_max, rec.input_mean, rec.input_std = map(float, x[1:])
        o = row[_OUT:_OUT + 5]
        rec.logit_abs_max, rec.logit_std, rec.softmax_saturation, rec.prob_rows, rec.output_nonfinite = map(float, o)
        t = row[_TGT:_TGT + 5]
        rec.target_min, rec.target_max, rec.target_distinct, rec.target_is_index, rec.batch_size = map(float, t)
        a = row[self._ACT:self._ACT + 3 * n_a].reshape(n_a, 3) if n_a else np.zeros((0, 3))
        rec.act_dead, rec.act_sat, rec.act_scale = (a[:, 0].astype(float), a[:, 1].astype(float),
                                                    a[:, 2].astype(float))
        if self._bn_idx and np.isfinite(rec.act_scale[self._bn_idx]).any():
            rec.bn_eval_in_train = float(len(self._bn_eval))
        return rec


def _value(v):
    """A Keras variable's current value as a float32 tensor."""
    return tf.cast(tf.convert_to_tensor(getattr(v, "value", v)), tf.float32)

