"""The few primitive tensor ops each framework supplies; the statistics are written once
against them (:mod:`lossprobe.capture.stats`).

One small class per framework, registered by its ``framework`` class attribute (as einops'
``_backends.py`` does); the framework is imported in the class's ``__init__``, so nothing
is imported until a backend for a model of that framework asks for it::

    ops = ops_for("torch")
    ops.std(ops.f32(x)), ops.count_nonfinite(x)

Every op stays on the device; ``to_host`` is the one host read (once per flush).
Population statistics (``std`` with ddof 0) in every framework.
"""
from __future__ import annotations

import math
import dataclasses
from typing import Any, Mapping, Sequence

_REGISTRY: dict[str, type["Ops"]] = {}
_INSTANCES: dict[str, "Ops"] = {}


def ops_for(framework: str) -> "Ops":
    """The ops of ``framework`` ("torch", "tensorflow", "paddle"); one instance each."""
    if framework not in _INSTANCES:
        _INSTANCES[framework] = _REGISTRY[framework]()
    return _INSTANCES[framework]


class Ops:
    """Primitive ops on one framework's tensors. Subclasses set ``framework``."""

    framework = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _REGISTRY[cls.framework] = cls

    # -- shape (host metadata, never a device read) --
    def shape(self, t) -> tuple:
        return tuple(int(d) if d is not None else None for d in t.shape)

    def size(self, t) -> int | None:
        n = 1
        for d in self.shape(t):
            if d is None:
                return None
            n *= d
        return n

    # -- framework primitives (subclasses) --
    def is_tensor(self, x) -> bool: raise NotImplementedError
    def requires_grad(self, t) -> bool: raise NotImplementedError
    def scalar(self, t): raise NotImplementedError               # a detached float32 0-d copy of a 1-element tensor
    def is_float(self, t) -> bool: raise NotImplementedError
    def f32(self, t): raise NotImplementedError                  # detached float32 copy-free view
    def flat(self, t): raise NotImplementedError                 # 1-D
    def rows(self, t, width: int): raise NotImplementedError     # [-1, width]
    def amax(self, t, axis=None): raise NotImplementedError
    def amin(self, t, axis=None): raise NotImplementedError
    def mean(self, t, axis=None): raise NotImplementedError
    def sum(self, t, axis=None): raise NotImplementedError
    def total(self, t): raise NotImplementedError                # float32 sum of every element, no full-size temporary
    def copy(self, t): raise NotImplementedError                 # a snapshot that later in-place updates leave alone
    def dim0(self, t): raise NotImplementedError                 # float32 scalar: the first dimension
    def clamp_min(self, t, low: float): raise NotImplementedError
    def abs(self, t): raise NotImplementedError
    def floor(self, t): raise NotImplementedError
    def sqrt(self, t): raise NotImplementedError
    def frac(self, mask): raise NotImplementedError              # share of True in a bool tensor
    def top2(self, t2d): raise NotImplementedError               # (largest, runner-up) per row
    def argmax(self, t, axis: int = -1): raise NotImplementedError
    def to_index(self, t, classes: int): raise NotImplementedError   # int, clipped to 0..classes-1
    def distinct(self, idx, classes: int): raise NotImplementedError  # count of classes present
    def count_nonfinite(self, t): raise NotImplementedError      # float32 scalar
    def is_nonfinite(self, t): raise NotImplementedError         # float32 1.0 where NaN/Inf, else 0.0
    def stack(self, scalars: Sequence): raise NotImplementedError
    def cat(self, vectors: Sequence): raise NotImplementedError  # 1-D pieces -> one 1-D tensor

    def cat_flat(self, scalars: Sequence, vectors: Sequence):
        """One float32 1-D tensor: the one-element ``scalars`` stacked, then the ``vectors``."""
        parts = ([self.stack(scalars)] if scalars else []) + list(vectors)
        return self.cat(parts) if len(parts) > 1 else self.flat(self.f32(parts[0]))
    def full(self, value: float, like): raise NotImplementedError  # float32 scalar on like's device
    def norms(self, tensors: Sequence) -> list: raise NotImplementedError  # L2 norm of each
    def gather(self, flat, index): raise NotImplementedError     # index: numpy int64 array
    def to_host(self, t): raise NotImplementedError              # the one device->host copy

    # -- derived, the same in every framework --
    def nan(self, like):
        return self.full(math.nan, like)

    def std(self, t):
        """Population standard deviation (0 for one element)."""
        return self.mean_std(t)[1]

    def mean_std(self, t):
        """(mean, population std) of every element: the two-pass formula in plain kernels, the
        mean computed once (torch.std is 3x slower on a 100k-element CPU tensor here, 92 us
        against 33, and torch.std_mean 15x)."""
        mean = self.mean(t)
        return mean, self.sqrt(self.mean(self.squared(t - mean)))

    def squared(self, d):
        """``d`` squared, element by element; ``d`` is a temporary of the caller's (a framework
        may square it in place)."""
        return d ** 2

    def min_max(self, t):
        """(min, max) of every element."""
        return self.amin(t), self.amax(t)

    def norm_vector(self, tensors: Sequence):
        """The L2 norms of ``tensors`` as one float32 vector (a framework with a cheaper way
        than stacking :meth:`norms` says so)."""
        return self.stack(self.norms(tensors))

    def norm_row(self, tensors: Sequence):
        """The L2 norms of ``tensors`` in the form a step's row packs cheapest: a list of
        one-element values, stacked once per flush with every step's others (a framework
        that makes the vector in fewer calls than it takes to split it says so)."""
        return self.norms(tensors)

    def diffs(self, after: Sequence, before: Sequence) -> list:
        return [a - b for a, b in zip(after, before)]

    def every_nth(self, flat, at_most: int):
        """An evenly strided sample of at most ``at_most`` values of a 1-D tensor."""
        n = self.size(flat)
        if n is None or n <= at_most:
            return flat
        return flat[:: n // at_most]


class TorchOps(Ops):
    framework = "torch"

    def __init__(self):
        import torch
        self.torch = torch

    def is_tensor(self, x) -> bool:
        return isinstance(x, self.torch.Tensor)

    def requires_grad(self, t) -> bool:
        return bool(t.requires_grad)

    def scalar(self, t):
        return t.detach()          # one element; made a float32 scalar when packed

    def is_float(self, t) -> bool:
        return t.is_floating_point()

    def f32(self, t):
        return t.detach().float()

    def flat(self, t):
        return t.reshape(-1)

    def rows(self, t, width):
        return t.reshape(-1, width)

    def amax(self, t, axis=None):
        return t.amax() if axis is None else t.amax(dim=axis)

    def amin(self, t, axis=None):
        return t.amin() if axis is None else t.amin(dim=axis)

    def mean(self, t, axis=None):
        return t.mean() if axis is None else t.mean(dim=axis)

    def sum(self, t, axis=None):
        return t.sum() if axis is None else t.sum(dim=axis)

    def total(self, t):
        return t.detach().sum(dtype=self.torch.float32)

    def copy(self, t):
        return t.clone()

    def dim0(self, t):
        return self.torch.full((), float(t.shape[0]) if t.dim() else 1.0, device=t.device)

    def clamp_min(self, t, low):
        return t.clamp_min(low)

    def abs(self, t):
        return t.abs()

    def floor(self, t):
        return t.floor()

    def sqrt(self, t):
        return t.sqrt()

    def squared(self, d):
        return d.square_()   # in place: no second temporary

    def min_max(self, t):
        low, high = self.torch.aminmax(t)
        return low, high

    def diffs(self, after, before):
        return list(self.torch._foreach_sub(list(after), list(before)))

    def frac(self, mask):
        return mask.mean(dtype=self.torch.float32)

    def top2(self, t2d):
        v = t2d.topk(2, dim=-1).values
        return v[:, 0], v[:, 1]

    def argmax(self, t, axis=-1):
        return t.argmax(dim=axis)

    def to_index(self, t, classes):
        return t.reshape(-1).long().clamp(0, classes - 1)

    def distinct(self, idx, classes):
        # index_fill_, not bincount: bincount reads the largest index on the host (a GPU sync)
        return self.torch.zeros(classes, device=idx.device).index_fill_(0, idx, 1.0).sum()

    def count_nonfinite(self, t):
        return (t - t).isnan().sum()   # x - x is nan exactly where x is nan or inf; faster than isfinite on CPU

    def is_nonfinite(self, t):
        return (t - t).isnan().float()

    def size(self, t) -> int:
        return t.numel()

    def stack(self, scalars):
        f32 = self.torch.float32
        try:   # the usual case, 0-d float32 values (gradient norms, losses): one call
            out = self.torch.stack(list(scalars))
            if out.dim() == 1:
                return out if out.dtype == f32 else out.to(f32)
        except (RuntimeError, TypeError):   # mixed shapes or devices: each made a float32 scalar
            pass
        return self.torch.stack([s if s.dtype == f32 and s.dim() == 0 else s.reshape(()).to(f32) for s in scalars])

    def cat(self, vectors):
        f32, dev = self.torch.float32, vectors[0].device
        return self.torch.cat([v.reshape(-1).to(dev, f32) for v in vectors])

    def full(self, value, like):
        return self.torch.full((), value, device=like.device)

    def norms(self, tensors):
        return list(self.torch._foreach_norm(list(tensors)))

    def gather(self, flat, index):
        idx = self._index(index, flat.device)
        return flat.index_select(0, idx)

    def _index(self, index, device):
        key = (id(index), str(device))
        cache = self.__dict__.setdefault("_idx", {})
        if key not in cache:
            cache[key] = (index, self.torch.as_tensor(index, device=device))
        return cache[key][1]

    def to_host(self, t):
        return t.cpu().numpy()


class PaddleOps(Ops):
    framework = "paddle"

    def __init__(self):
        import paddle
        self.paddle = paddle
        # one kernel for the sum of squares, no temporary the size of the tensor (what
        # ClipGradByGlobalNorm uses): 8 gradients of the benchmark MLP in 76 us here against
        # 930 us for square().sum() -- private API, so looked up once, with a fallback
        self._squared_l2 = getattr(getattr(paddle, "_C_ops", None), "squared_l2_norm", None)
        self._no_fast_norm: set = set()   # dtypes/places that kernel turned down

    def is_tensor(self, x) -> bool:
        return isinstance(x, self.paddle.Tensor)

    def requires_grad(self, t) -> bool:
        return not t.stop_gradient

    def scalar(self, t):
        t = self.f32(t)
        return t if not t.shape else t.reshape([])   # a 0-d loss (the usual): no second op

    def is_float(self, t) -> bool:
        return self.paddle.is_floating_point(t)

    def f32(self, t):
        t = t.detach()
        return t if t.dtype == self.paddle.float32 else t.astype("float32")

    def flat(self, t):
        return t.reshape([-1])

    def rows(self, t, width):
        return t.reshape([-1, width])

    def amax(self, t, axis=None):
        return t.max() if axis is None else t.max(axis=list(axis) if isinstance(axis, tuple) else axis)

    def amin(self, t, axis=None):
        return t.min() if axis is None else t.min(axis=list(axis) if isinstance(axis, tuple) else axis)

    def mean(self, t, axis=None):
        return t.mean() if axis is None else t.mean(axis=axis)

    def sum(self, t, axis=None):
        return t.sum() if axis is None else t.sum(axis=axis)

    def total(self, t):
        return self.paddle.sum(t.detach(), dtype="float32")

    def copy(self, t):
        return t.clone()

    def dim0(self, t):
        return self.paddle.full([], float(t.shape[0]) if len(t.shape) else 1.0, dtype="float32")

    def clamp_min(self, t, low):
        return self.paddle.clip(t, min=low)

    def abs(self, t):
        return t.abs()

    def floor(self, t):
        return self.paddle.floor(t)

    def sqrt(self, t):
        return self.paddle.sqrt(t)

    def frac(self, mask):
        return mask.astype("float32").mean()

    def squared(self, d):
        # square, not ** 2: Paddle's pow kernel takes ~10x longer on CPU (65k values: 990 us
        # for the generic formula with ** 2, 89 us with square; paddle.std is as slow as pow)
        return self.paddle.square(d)

    def top2(self, t2d):
        v, _ = self.paddle.topk(t2d, 2, axis=-1)
        return v[:, 0], v[:, 1]

    def argmax(self, t, axis=-1):
        return self.paddle.argmax(t, axis=axis)

    def to_index(self, t, classes):
        return self.paddle.clip(t.reshape([-1]).astype("int64"), 0, classes - 1)

    def distinct(self, idx, classes):
        hit = self.paddle.nn.functional.one_hot(idx, classes).max(axis=0)
        return (hit > 0).astype("float32").sum()

    def count_nonfinite(self, t):
        return self.is_nonfinite(t).sum()

    def is_nonfinite(self, t):
        return self.paddle.logical_not(self.paddle.isfinite(t)).astype("float32")

    def stack(self, scalars):
        scalars = list(scalars)
        if all(s.dtype == self.paddle.float32 and not s.shape for s in scalars):
            return self.paddle.stack(scalars)   # the usual case: 0-d float32 values, one call
        return self.paddle.stack([self.f32(s).reshape([]) for s in scalars])

    def cat(self, vectors):
        return self.paddle.concat([self.f32(v).reshape([-1]) for v in vectors])

    def full(self, value, like=None):
        return self.paddle.full([], value, dtype="float32")  # on the current (training) device

    def norms(self, tensors):
        ts = [t if t.stop_gradient else t.detach() for t in tensors]
        v = self._fast_norms(ts)
        return list(self.paddle.unbind(v)) if v is not None else [self._norm(t) for t in ts]

    def norm_vector(self, tensors):
        # a detach is an op here (~10 us): only for a tensor that is part of a graph
        ts = [t if t.stop_gradient else t.detach() for t in tensors]
        v = self._fast_norms(ts)
        return v if v is not None else self.stack([self._norm(t) for t in ts])

    def norm_row(self, tensors):
        return self.norm_vector(tensors)   # one vector: unbinding it would be a call per tensor

    def _fast_norms(self, ts):
        """Float32 tensors' norms as one vector: a kernel per tensor, then one concat and
        sqrt (n + 2 calls where square/sum/sqrt take 4n); None where the kernel is not there."""
        if self._squared_l2 is None or not ts or any(t.dtype != self.paddle.float32 for t in ts):
            return None
        try:
            return self.paddle.sqrt(self.paddle.concat([self._squared_l2(t) for t in ts]))
        except Exception:
            return None

    def _norm(self, t):
        key = (str(t.dtype), str(t.place))
        if self._squared_l2 is not None and key not in self._no_fast_norm:
            try:
                return self.paddle.sqrt(self._squared_l2(t).astype("float32")).reshape([])
            except Exception:   # no kernel for this dtype here (float16 on CPU): the plain way
                self._no_fast_norm.add(key)
        return self.paddle.sqrt(self.paddle.square(self.f32(t)).sum())

    def gather(self, flat, index):
        cache = self.__dict__.setdefault("_idx", {})
        if id(index) not in cache:   # the sample indices are fixed for a run: copied to the device once
            cache[id(index)] = (index, self.paddle.to_tensor(index))
        return self.paddle.gather(flat, cache[id(index)][1])

    def to_host(self, t):
        return t.numpy()


class TensorflowOps(Ops):
    framework = "tensorflow"

    def __init__(self):
        import tensorflow as tf
        self.tf = tf

    def is_tensor(self, x) -> bool:
        tf = self.tf
        return isinstance(x, (tf.Tensor, tf.Variable)) or (
            hasattr(x, "dtype") and hasattr(x, "shape") and not isinstance(x, (dict, list, tuple)))

    def requires_grad(self, t) -> bool:
        return True

    def scalar(self, t):
        return self.tf.reshape(self.f32(t), [])

    def is_float(self, t) -> bool:
        try:
            return self.tf.as_dtype(t.dtype).is_floating
        except Exception:
            return False

    def f32(self, t):
        # no stop_gradient: the statistics never feed a loss, so no gradient reaches them, and
        # in a compiled step it was one more op per statistic on every step
        return self.tf.cast(t, self.tf.float32)

    def flat(self, t):
        return self.tf.reshape(t, [-1])

    def rows(self, t, width):
        return self.tf.reshape(t, [-1, width])

    def amax(self, t, axis=None):
        return self.tf.reduce_max(t, axis=axis)

    def amin(self, t, axis=None):
        return self.tf.reduce_min(t, axis=axis)

    def mean(self, t, axis=None):
        return self.tf.reduce_mean(t, axis=axis)

    def sum(self, t, axis=None):
        return self.tf.reduce_sum(t, axis=axis)

    def total(self, t):
        return self.tf.reduce_sum(self.tf.cast(t, self.tf.float32))

    def copy(self, t):
        return self.tf.identity(t)

    def dim0(self, t):
        return self.tf.cast(self.tf.shape(t)[0], self.tf.float32) if t.shape.rank else self.tf.constant(1.0)

    def clamp_min(self, t, low):
        return self.tf.maximum(t, low)

    def squared(self, d):
        return self.tf.square(d)

    def abs(self, t):
        return self.tf.abs(t)

    def floor(self, t):
        return self.tf.floor(t)

    def sqrt(self, t):
        return self.tf.sqrt(t)

    def frac(self, mask):
        return self.tf.reduce_mean(self.tf.cast(mask, self.tf.float32))

    def top2(self, t2d):
        v = self.tf.math.top_k(t2d, 2).values
        return v[:, 0], v[:, 1]

    def argmax(self, t, axis=-1):
        return self.tf.argmax(t, axis, output_type=self.tf.int32)

    def to_index(self, t, classes):
        return self.tf.clip_by_value(self.tf.cast(self.tf.reshape(t, [-1]), self.tf.int32), 0, classes - 1)

    def distinct(self, idx, classes):
        counts = self.tf.reduce_sum(self.tf.one_hot(idx, classes), 0)
        return self.tf.reduce_sum(self.tf.cast(counts > 0, self.tf.float32))

    def count_nonfinite(self, t):
        return self.tf.reduce_sum(self.is_nonfinite(t))

    def is_nonfinite(self, t):
        return self.tf.cast(self.tf.logical_not(self.tf.math.is_finite(t)), self.tf.float32)

    def stack(self, scalars):
        return self.tf.stack([self.tf.reshape(self.tf.cast(s, self.tf.float32), []) for s in scalars])

    def cat(self, vectors):
        return self.tf.concat([self.tf.reshape(self.tf.cast(v, self.tf.float32), [-1]) for v in vectors], 0)

    def full(self, value, like=None):
        return self.tf.constant(value, self.tf.float32)

    def norms(self, tensors):
        return self.tf.unstack(self.norm_vector(tensors)) if tensors else []

    def norm_vector(self, tensors):
        # one L2Loss kernel per tensor (sum of squares / 2, no temporary the size of the tensor),
        # then one stack, multiply and sqrt: n + 3 graph ops where tf.norm takes 4 per tensor
        tf = self.tf
        return tf.sqrt(2.0 * tf.stack([tf.nn.l2_loss(self.f32(t)) for t in tensors]))

    def gather(self, flat, index):
        return self.tf.gather(flat, self.tf.constant(index))

    def to_host(self, t):
        return t.numpy()


def first_tensor(ops: Ops, obj: Any):
    """The tensor a model's output (or input) most likely means: a tensor as-is; a mapping
    (dict, Hugging Face ``ModelOutput``) by its 'logits'/'output' keys, else its first tensor
    value; a sequence (or a dataclass output): its first tensor. None when there is none."""
    if ops.is_tensor(obj):
        return obj
    if type(obj) in (tuple, list):   # the common case first: positional args, a plain tuple output
        for v in obj:
            t = first_tensor(ops, v)
            if t is not None:
                return t
        return None
    if isinstance(obj, Mapping) or (hasattr(obj, "keys") and hasattr(obj, "values")):
        for key in ("logits", "output", "out", "y_pred"):
            try:
                v = obj[key]
            except Exception:
                continue
            if v is not None:
                t = first_tensor(ops, v)
                if t is not None:
                    return t
        obj = list(obj.values())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        named = {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)}
        return first_tensor(ops, named)
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = first_tensor(ops, v)
            if t is not None:
                return t
    return None
