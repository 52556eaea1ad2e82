"""The data contract between backends and rules: Layout, Facts, StepRecord, Flush.

A backend (torch, tensorflow, paddle) reduces what it sees on the device into a
handful of numbers per step and, once every ``flush_every`` steps, copies them to
the host as ``StepRecord`` objects. Rules never see a framework tensor; they only
read these records (through :class:`lossprobe.history.History`).

* :class:`Layout` -- what is watched (parameter and activation names). Fixed at attach
  and immutable; for a model that is not built yet at attach (Keras), the complete
  layout arrives with the first :class:`Flush` and the probe builds its history from it.
* :class:`Facts` -- what a backend learns while training runs (the loss, the output
  layer, the optimizer's parameters, dropout). Frozen; each flush carries the latest,
  and the history keeps it as ``history.facts``.
* :class:`StepRecord` -- everything measured on one step. A value that was not measured
  on a step is ``nan`` (activation statistics are sampled every ``activation_every``
  steps), so "not measured" and "measured as zero" never mix.

Example::

    layout = Layout(framework="torch", params=("fc1.weight", "fc1.bias"))
    rec = StepRecord.empty(step=3, layout=layout)
    rec.loss = 0.7
    facts = Facts(n_classes=10, loss_kind="cross_entropy")
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

NAN = float("nan")

# Kinds of activation modules a backend watches; rules interpret stats per kind.
ACTIVATION_KINDS = ("relu", "sigmoid", "tanh", "softmax", "batchnorm", "linear")


def _frozen(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _layout_of(fields: dict[str, Any]) -> "Layout":
    return Layout(**fields)


@dataclass(frozen=True)
class Layout:
    """What a backend watches; fixed at attach time, shared by all records of a run.

    ``params``: trainable parameter names in forward/registration order (first =
    closest to the input), with ``param_sizes`` (element counts) and ``is_weight``
    (a weight matrix/kernel, not a bias or norm scale). ``activations``: watched module
    names, ``kinds`` each one's kind (one of ``ACTIVATION_KINDS``). ``rank`` and
    ``world_size``: this process under data parallelism. ``extra``: read-only
    framework-specific objects (the data-parallel rank table, the noise scale).
    Sequences are stored as tuples and ``extra`` as a read-only mapping: nothing
    changes a layout once it is made.
    """

    framework: str
    params: Sequence[str] = ()
    param_sizes: Sequence[int] = ()
    activations: Sequence[str] = ()
    kinds: Sequence[str] = ()
    is_weight: Sequence[bool] = ()
    # the layer's class name, for readable per-layer names where a path is a bare index
    # (nn.Sequential's "1" -> "1.ReLU"); empty when a backend does not say
    activation_types: Sequence[str] = ()   # per activation
    param_owner_types: Sequence[str] = ()  # per param: the layer that holds it
    rank: int = 0
    world_size: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("params", "param_sizes", "activations", "kinds", "is_weight", "activation_types",
                     "param_owner_types"):
            _frozen(self, name, tuple(getattr(self, name)))
        _frozen(self, "extra", MappingProxyType(dict(self.extra)))

    def __reduce__(self):
        """Pickled from its fields (recordings for ``benchmarks/replay.py``); ``extra`` holds
        live framework objects and is left out."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return (_layout_of, (fields,))

    @property
    def n_params(self) -> int:
        return len(self.params)

    @property
    def n_activations(self) -> int:
        return len(self.activations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "params": list(self.params),
            "param_sizes": list(self.param_sizes),
            "activations": list(self.activations),
            "kinds": list(self.kinds),
            "is_weight": list(self.is_weight),
            "activation_types": list(self.activation_types),
            "param_owner_types": list(self.param_owner_types),
            "rank": self.rank,
            "world_size": self.world_size,
        }


LOSS_KINDS = ("cross_entropy", "nll", "bce", "bce_logits", "mse", "")
OUTPUT_ACTIVATIONS = ("softmax", "log_softmax", "sigmoid", "tanh", "relu", "linear", "")


@dataclass(frozen=True)
class Facts:
    """What a backend learned about the run after attach; each flush carries the latest.

    * ``n_classes``: output width when the model looks like a classifier, else 0.
    * ``loss_kind``: "cross_entropy" (expects logits, applies softmax itself) | "nll"
      (expects log-probabilities, or probabilities as Keras' ``from_logits=False``) |
      "bce" (expects probabilities) | "bce_logits" | "mse" (any regression loss) | ""
      (unknown). ``loss_name``: the framework's own name ("CrossEntropyLoss",
      "binary_crossentropy", "F.cross_entropy"); ``loss_from_logits``: None when unknown.
    * ``output_activation``: the activation applied last to the model's output
      ("softmax" | "log_softmax" | "sigmoid" | "tanh" | "relu" | "linear" | "");
      ``output_units`` (its last dimension), ``output_layer`` (the layer that made it),
      ``loss_input_activation``: the activation applied last to what the loss receives (it
      differs from the output's when the program transforms the output on its way to the
      loss: ``log(softmax(x))`` is "log_softmax", a sigmoid applied in the loss call),
      ``output_activation_index``: the index into ``Layout.activations`` of the watched
      activation that *is* the model output (-1: none).
    * ``in_optimizer``: per parameter, held by the optimizer (None until known).
    * ``dropout_rates``: (layer, drop probability) of every dropout layer active in training.
    * ``steps_per_epoch``: training steps in one epoch when the framework knows it (Keras and
      Paddle ``fit``, trainers); 0 when unknown.
    * ``loss_broadcast``: "" or how an element-wise loss broadcast its input against its target
      ("(32,) against (32, 1) -> (32, 32)": every prediction compared with every target).
    * ``unregistered``: shapes of tensors that need a gradient and that the model's forward
      uses, but that are not its parameters and that its optimizer does not hold (a layer kept
      in a plain Python list): nothing ever trains them. Known once the optimizer is.

    Example::

        facts = Facts(n_classes=10, loss_kind="cross_entropy", output_activation="linear")
        dataclasses.replace(facts, in_optimizer=(True, True))
    """

    n_classes: int = 0
    loss_kind: str = ""
    loss_name: str = ""
    loss_from_logits: bool | None = None
    output_activation: str = ""
    output_units: int = 0
    output_layer: str = ""
    output_activation_index: int = -1
    loss_input_activation: str = ""
    in_optimizer: tuple[bool, ...] | None = None
    dropout_rates: tuple[tuple[str, float], ...] = ()
    steps_per_epoch: int = 0
    unregistered: tuple[str, ...] = ()
    loss_broadcast: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_classes": self.n_classes, "loss_kind": self.loss_kind, "loss_name": self.loss_name,
            "loss_from_logits": self.loss_from_logits, "output_activation": self.output_activation,
            "output_units": self.output_units, "output_layer": self.output_layer,
            "output_activation_index": self.output_activation_index,
            "loss_input_activation": self.loss_input_activation,
            "in_optimizer": None if self.in_optimizer is None else list(self.in_optimizer),
            "dropout_rates": [list(d) for d in self.dropout_rates], "steps_per_epoch": self.steps_per_epoch,
            "unregistered": list(self.unregistered), "loss_broadcast": self.loss_broadcast,
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
    grad_norm: float = NAN                # global L2 norm over the measured grads
    param_grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    param_grad_missing: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))     # no gradient at all
    param_grad_unmeasured: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # a gradient it cannot read
    grad_carried: float = NAN             # |grad already in .grad at the step's first backward| / |grad applied|
    param_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    update_ratios: np.ndarray = field(default_factory=lambda: np.zeros(0))  # |dW|/|W|, sampled
    # model outputs (logits)
    logit_abs_max: float = NAN
    logit_std: float = NAN
    output_mean: float = NAN
    softmax_saturation: float = NAN       # share of rows whose top-1 minus runner-up logit is >= -ln(fp32 tiny)
    softmax_underflow: float = NAN        # share of rows whose top-1 minus lowest logit is >= -ln(fp32 tiny)
    prob_rows: float = NAN                # share of rows that already look like probabilities
    output_nonfinite: float = NAN         # count of NaN/Inf in outputs
    # inputs
    input_abs_max: float = NAN
    input_mean: float = NAN
    input_std: float = NAN
    input_nonfinite: float = NAN          # 1.0 when the batch's inputs hold a NaN/Inf, else 0.0
    # targets
    target_min: float = NAN
    target_max: float = NAN
    target_mean: float = NAN
    target_std: float = NAN
    target_distinct: float = NAN          # distinct classes present in the batch
    target_is_index: float = NAN          # 1.0 when targets are integer class indices
    target_fractional: float = NAN        # share of targets with a non-zero fractional part
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
            param_grad_unmeasured=np.zeros(n_p, bool),
            param_norms=np.full(n_p, np.nan),
            update_ratios=np.full(n_p, np.nan),
            act_dead=np.full(n_a, np.nan),
            act_sat=np.full(n_a, np.nan),
            act_scale=np.full(n_a, np.nan),
        )


SCALAR_FIELDS = (
    "loss", "loss_seen", "lr", "grad_norm", "grad_carried", "logit_abs_max", "logit_std", "output_mean",
    "softmax_saturation", "softmax_underflow", "prob_rows", "output_nonfinite", "input_abs_max", "input_mean", "input_std",
    "input_nonfinite", "target_min", "target_max", "target_mean", "target_std", "target_distinct",
    "target_is_index", "target_fractional", "batch_size", "bn_eval_in_train",
)
PARAM_FIELDS = ("param_grad_norms", "param_norms", "update_ratios")
MASK_FIELDS = ("param_grad_missing", "param_grad_unmeasured")
ACTIVATION_FIELDS = ("act_dead", "act_sat", "act_scale")


@dataclass(frozen=True)
class Flush:
    """One flush from a backend to the probe (through :class:`lossprobe.channel.Channel`).

    ``records``: the decoded steps; or ``decode``, a callable that returns (records,
    extra rows) -- run off the training thread, so the numpy work overlaps the next steps.
    ``val_points``: (step, validation loss). ``extra_rows``: (step, {"lossprobe/<name>":
    value}) tracker metrics measured beyond the StepRecord. ``facts``: the latest
    :class:`Facts` (None: unchanged). ``layout``: the complete layout, sent once by a
    backend that could not know it at attach (an unbuilt Keras model).
    """

    records: Sequence[StepRecord] = ()
    val_points: Sequence[tuple[int, float]] = ()
    extra_rows: Sequence[tuple[int, dict[str, float]]] = ()
    facts: Facts | None = None
    layout: Layout | None = None
    decode: Callable[..., tuple[Sequence[StepRecord], Sequence[tuple[int, dict[str, float]]]]] | None = None

    def decoded(self, pause: Callable[[], None] | None = None) -> tuple[list[StepRecord], list[tuple[int, dict[str, float]]]]:
        """(records, extra rows), decoding them now when the backend left that to the probe;
        ``pause`` is called now and then while decoding (the worker yields the interpreter)."""
        if self.decode is not None:
            records, extra = self.decode(pause)
            return list(records), list(self.extra_rows) + list(extra)
        return list(self.records), list(self.extra_rows)
