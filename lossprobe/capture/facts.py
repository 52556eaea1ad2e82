"""FactSheet: what a backend has learned about the run, as the frozen Facts a flush carries.

Example::

    sheet = FactSheet()
    sheet.learn(output_units=10, loss_kind="cross_entropy", loss_name="CrossEntropyLoss")
    sheet.facts.n_classes        # 10: a 10-wide output under a classification loss
"""
from __future__ import annotations

import math

import dataclasses

from ..record import Facts

# losses a classifier is trained with; a regression loss ("mse") means no classes
_REGRESSION_KINDS = ("mse",)
_DEFAULT = Facts()


class FactSheet:
    """Facts learned so far; ``learn`` keeps the latest value of each field."""

    def __init__(self, **initial):
        self._facts = dataclasses.replace(Facts(), **initial)
        self._classes_given = "n_classes" in initial

    def learn(self, **fields) -> None:
        """Record what was found (fields of :class:`Facts`); ``n_classes`` follows from the
        output width and the loss unless it was given (by the tensor a class-index loss
        receives, whose class dimension need not be the output's last)."""
        if all(getattr(self._facts, k) == v for k, v in fields.items()):
            return
        facts = dataclasses.replace(self._facts, **fields)
        self._classes_given = self._classes_given or "n_classes" in fields
        if not self._classes_given:
            units = facts.output_units
            classes = units if units >= 2 and facts.loss_kind not in _REGRESSION_KINDS else 0
            facts = dataclasses.replace(facts, n_classes=classes)
        self._facts = facts

    def knows(self, name: str) -> bool:
        """Has ``name`` been learned (differs from its default)?"""
        return getattr(self._facts, name) != getattr(_DEFAULT, name)

    @property
    def facts(self) -> Facts:
        return self._facts


# The autograd node that made the model's output names its last activation (torch:
# "SoftmaxBackward0", paddle: "SoftmaxGradNode"); shape-only nodes are looked through.
_NODE_ACTIVATION = {
    "softmax": "softmax", "logsoftmax": "log_softmax", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
    "addmm": "linear", "mm": "linear", "bmm": "linear", "matmul": "linear", "linear": "linear",
    "convolution": "linear", "conv2d": "linear", "add": "linear", "unsafeview": "linear",
}
_SHAPE_OPS = {"view", "reshape", "reshapealias", "squeeze", "unsqueeze", "permute", "transpose", "clone",
              "tocopy", "flatten", "cast", "expand"}


def node_op(name: str) -> str:
    """'SoftmaxBackward0' / 'SoftmaxGradNode' -> 'softmax'."""
    for suffix in ("GradNode", "Backward0", "Backward1", "Backward"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("_", "").lower()


# what a program puts around a logarithm to keep it finite: log(p + eps), log(p.clamp(eps))
_EPSILON_OPS = {"add", "clamp", "clampmin", "clip", "maximum"}


def output_activation(node, inputs) -> str:
    """The activation an autograd ``node`` (the output's ``grad_fn``) applied; ``inputs(node)``
    gives the nodes it came from. '' when unknown. A logarithm of a softmax (``log(p + eps)``
    written by hand) is "log_softmax"; of a sigmoid, "log_sigmoid"."""
    for _ in range(8):
        if node is None:
            return ""
        op = node_op(node.name())
        if op == "log":
            below = _first_input(node, inputs)
            for _ in range(4):   # through the epsilon guard
                if below is None or node_op(below.name()) not in _EPSILON_OPS:
                    break
                below = _first_input(below, inputs)
            under = output_activation(below, inputs) if below is not None else ""
            return {"softmax": "log_softmax", "sigmoid": "log_sigmoid"}.get(under, "log")
        if op not in _SHAPE_OPS:
            return _NODE_ACTIVATION.get(op, "")
        node = _first_input(node, inputs)
    return ""


def _first_input(node, inputs):
    nxt = [n for n in inputs(node) if n is not None]
    return nxt[0] if nxt else None


# loss nodes by normalised op name -> (loss kind, functional name); NLL is cross-entropy
# when it reads a log-softmax (F.cross_entropy is log_softmax then nll_loss)
_LOSS_NODES = {
    "nllloss": ("nll", "F.nll_loss"), "nllloss2d": ("nll", "F.nll_loss"),
    "crossentropywithsoftmax": ("cross_entropy", "F.cross_entropy"),
    "binarycrossentropywithlogits": ("bce_logits", "F.binary_cross_entropy_with_logits"),
    "sigmoidcrossentropywithlogits": ("bce_logits", "F.binary_cross_entropy_with_logits"),
    "binarycrossentropy": ("bce", "F.binary_cross_entropy"), "bceloss": ("bce", "F.binary_cross_entropy"),
    "mseloss": ("mse", "F.mse_loss"), "l1loss": ("mse", "F.l1_loss"), "smoothl1loss": ("mse", "F.smooth_l1_loss"),
    "huberloss": ("mse", "F.huber_loss"),
}
# reductions and arithmetic a hand-written loss puts on top: looked through
_REDUCTIONS = {"mean", "meanall", "sum", "div", "mul", "scale", "add", "sub", "neg", "squeeze", "view", "reshape",
               "select", "index", "clone", "tocopy", "cast"}


def loss_from_graph(node, inputs, depth: int = 6) -> dict:
    """Facts about a loss from its autograd graph (a functional loss, or one averaged by
    hand): {"loss_kind", "loss_name", "loss_from_logits"}; {} when not recognised."""
    todo = [(node, 0)]
    while todo:
        node, d = todo.pop(0)
        if node is None or d > depth:
            continue
        op = node_op(node.name())
        if op in _LOSS_NODES:
            kind, name = _LOSS_NODES[op]
            received = _first_input(node, inputs)
            if kind == "nll" and received is not None and node_op(received.name()) == "logsoftmax":
                kind, name = "cross_entropy", "F.cross_entropy"   # log_softmax then nll_loss
                received = _first_input(received, inputs)
            return {"loss_kind": kind, "loss_name": name,
                    "loss_from_logits": {"cross_entropy": True, "bce_logits": True, "nll": False,
                                         "bce": False}.get(kind),
                    "loss_input_activation": output_activation(received, inputs) if received is not None else ""}
        if op in _REDUCTIONS:
            todo.extend((n, d + 1) for n in inputs(node))
    return {}


ELEMENTWISE_KINDS = ("mse", "bce", "bce_logits")


def broadcast_note(kind: str, input_shape, target_shape) -> str:
    """How an element-wise loss broadcast its input against its target, or "" when it did not:
    ``(32,)`` against ``(32, 1)`` gives ``(32, 32)``, every prediction compared with every
    target of the batch (both frameworks broadcast here; torch only warns).

        broadcast_note("mse", (32,), (32, 1))   # "(32,) against (32, 1) -> (32, 32)"
        broadcast_note("mse", (32, 1), (32, 1)) # ""
    """
    a, b = tuple(int(d) for d in input_shape), tuple(int(d) for d in target_shape)
    if kind not in ELEMENTWISE_KINDS or a == b:
        return ""
    n = max(len(a), len(b))
    pa, pb = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    if any(x != y and 1 not in (x, y) for x, y in zip(pa, pb)):
        return ""   # not broadcastable: the framework raises, nothing to tell
    both = tuple(max(x, y) for x, y in zip(pa, pb))
    size = lambda s: math.prod(s) if s else 1
    return f"{a} against {b} -> {both}" if size(both) > max(size(a), size(b)) else ""
