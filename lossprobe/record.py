"""StepRecord: the one data contract between backends and rules.

A backend (torch, tensorflow, paddle) reduces what it sees on the device into a
handful of numbers per step and, once every ``flush_every`` steps, copies them to
the host as ``StepRecord`` objects. Rules never see a framework tensor; they only
read these records (through :class:`lossprobe.history.History`).

Every field is plain Python / numpy. A value that was not measured on a step is
``nan`` (activation statistics are sampled every ``activation_every`` steps, update
ratios likewise), so "not measured" and "measured as zero" never mix.

Example::

    layout = Layout(framework="torch", params=["fc1.weight", "fc1.bias"])
    rec = StepRecord.empty(step=3, layout=layout)
    rec.loss = 0.7
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

NAN = float("nan")

# Kinds of activation modules a backend watches; rules interpret stats per kind.
ACTIVATION_KINDS = ("relu", "sigmoid", "tanh", "softmax", "batchnorm", "linear")


@dataclass
class Layout:
    """What a backend watches; fixed at attach time, shared by all records of a run.

    ``params``: trainable parameter names in forward/registration order (first =
    closest to the input). ``activations``: watched module names, with ``kinds``
    giving each one's kind (one of ``ACTIVATION_KINDS``). ``n_classes`` is the
    width of the model output when it looks like a classifier (else 0).
    ``param_sizes``: element count per parameter (for weighting and reports).
    """

    framework: str
    params: list[str] = field(default_factory=list)
    param_sizes: list[int] = field(default_factory=list)
    activations: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    n_classes: int = 0
    in_optimizer: list[bool] | None = None  # per param; None when unknown
    is_weight: list[bool] = field(default_factory=list)  # per param: a weight matrix/kernel (not bias/norm)
    loss_kind: str = ""   # "cross_entropy" | "nll" | "bce" | "bce_logits" | "mse" | "" (unknown)
    # the layer's class name, for readable per-layer names where a path is a bare index
    # (nn.Sequential's "1" -> "1.ReLU"); empty when a backend does not say
    activation_types: list[str] = field(default_factory=list)   # per activation
    param_owner_types: list[str] = field(default_factory=list)  # per param: the layer that holds it
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "params": list(self.params),
            "param_sizes": list(self.param_sizes),
            "activations": list(self.activations),
            "kinds": list(self.kinds),
            "n_classes": int(self.n_classes),
            "in_optimizer": None if self.in_optimizer is None else list(self.in_optimizer),
            "is_weight": list(self.is_weight),
            "loss_kind": self.loss_kind,
            "activation_types": list(self.activation_types),
            "param_owner_types": list(self.param_owner_types),
        }


@dataclass
class StepRecord:
    """Everything measured on one training step (host-side, after a flush).

    Scalars are floats (``nan`` = not measured). Per-parameter arrays are aligned
    with ``Layout.params``; per-activation arrays with ``Layout.activations``.
    """

    step: int
    # loss and learning rate
    loss: float = NAN                     # as measured: may be nan/inf when training broke
    loss_seen: float = 0.0                # 1.0 when a training loss was captured on this step
    lr: float = NAN
    # gradients
    grad_norm: float = NAN                # global L2 norm over all grads
    param_grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    param_grad_missing: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    param_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    update_ratios: np.ndarray = field(default_factory=lambda: np.zeros(0))  # |dW|/|W|, sampled
    # model outputs (logits)
    logit_abs_max: float = NAN
    logit_std: float = NAN
    softmax_saturation: float = NAN       # share of rows whose softmax max is exactly 1.0 in fp32
    prob_rows: float = NAN                # share of rows that already look like probabilities
    output_nonfinite: float = NAN         # count of NaN/Inf in outputs
    # inputs
    input_abs_max: float = NAN
    input_mean: float = NAN
    input_std: float = NAN
    input_nonfinite: float = NAN
    # targets
    target_min: float = NAN
    target_max: float = NAN
    target_distinct: float = NAN          # distinct classes present in the batch
    target_is_index: float = NAN          # 1.0 when targets are integer class indices
    batch_size: float = NAN
    # activations (sampled every activation_every steps)
    act_dead: np.ndarray = field(default_factory=lambda: np.zeros(0))    # share of units 0 for every sample
    act_sat: np.ndarray = field(default_factory=lambda: np.zeros(0))     # share of outputs at the kind's bounds
    act_scale: np.ndarray = field(default_factory=lambda: np.zeros(0))   # std of outputs
    # framework state known on the host
    bn_eval_in_train: float = NAN         # BatchNorm modules found in eval mode during a training step
    rank: int = 0

    @classmethod
    def empty(cls, step: int, layout: Layout) -> "StepRecord":
        n_p, n_a = len(layout.params), len(layout.activations)
        return cls(
            step=step,
            param_grad_norms=np.full(n_p, np.nan),
            param_grad_missing=np.zeros(n_p, bool),
            param_norms=np.full(n_p, np.nan),
            update_ratios=np.full(n_p, np.nan),
            act_dead=np.full(n_a, np.nan),
            act_sat=np.full(n_a, np.nan),
            act_scale=np.full(n_a, np.nan),
        )


SCALAR_FIELDS = (
    "loss", "loss_seen", "lr", "grad_norm", "logit_abs_max", "logit_std", "softmax_saturation",
    "prob_rows", "output_nonfinite", "input_abs_max", "input_mean", "input_std",
    "input_nonfinite", "target_min", "target_max", "target_distinct",
    "target_is_index", "batch_size", "bn_eval_in_train",
)
PARAM_FIELDS = ("param_grad_norms", "param_norms", "update_ratios")
ACTIVATION_FIELDS = ("act_dead", "act_sat", "act_scale")
