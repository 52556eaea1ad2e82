"""Config: every knob and threshold lossprobe uses, with the reasoning for each default.

Example::

    cfg = lossprobe.Config(flush_every=50, on_critical="raise")
    probe = lossprobe.attach(model, config=cfg)

Every value is checked when the Config is made, so a typo fails at once with the field's
name (``Config(window=0)`` -> ``ValueError: Config.window must be an integer >= 1, got 0``)
instead of as a quiet "healthy" run later.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np


@dataclass
class Config:
    # -- capture ----------------------------------------------------------
    flush_every: int = 20
    """Steps between host reads of the on-device statistics (the only sync point)."""
    background: bool = True
    """Decode flushes, run the rules and publish on a worker thread, overlapping the training
    thread's device compute (False: inline, on the training thread). Off when
    on_critical="raise", which must raise at the step boundary right after the flush."""
    rules_every: int = 20
    """Steps between rule evaluations (at a flush). A non-finite loss, gradient or input runs
    the rules at once, so critical numeric faults are not delayed by this."""
    activation_every: int = 10
    """Activation statistics and update/weight ratios are measured every N steps."""
    window: int = 1024
    """Steps of full detail the history keeps (memory is bounded by this)."""
    max_layer_metrics: int = 16
    """Per-layer series published to trackers: at most this many layers (first, last, evenly between)."""
    on_critical: str = "warn"
    """"warn" (default) logs; "raise" raises TrainingHealthError at the next step boundary."""
    grad_sample: int = 0
    """0 (default): exact per-parameter gradient norms on every step, in one fused pass that
    also brings the gradients into cache for the optimizer, which reads them next. N > 0:
    between full-statistics steps, gradient norms of tensors larger than N elements are
    estimated from 16 contiguous runs of about N elements in all (on this project's 2-core CPU
    no cheaper than the exact pass, in three side-by-side runs)."""
    capture_outputs: bool = True
    capture_inputs: bool = True

    # -- warm-up ------------------------------------------------------------
    warmup_steps: int = 20
    """No curve verdict before this many steps: early loss is noisy and always moving."""
    resolve_steps: int = 40
    """A warning whose rule has not fired for this many steps is resolved: it stays in the
    findings and the report, but no longer counts toward the run's health. Two rule
    evaluations (rules_every=20) in a row that no longer see it, each over a whole window."""

    # -- gradients ------------------------------------------------------------
    explode_factor: float = 1e3
    """exploding_gradients: recent gradient norm >= this times the early median (three orders of magnitude)."""
    explode_abs: float = 1e4
    """... or an absolute global grad norm above this once the loss is not falling."""
    vanish_ratio: float = 1e-3
    """vanishing_gradients: first-layer / last-layer gradient norm below this (AUTOTRAINER's 1e-3)."""
    # -- activations ----------------------------------------------------------
    dead_fraction: float = 0.5
    """dead_relu: at least this share of a ReLU layer's units are zero for every sample..."""
    dead_persist: float = 0.8
    """...on at least this share of the sampled steps in the recent window."""
    saturation_fraction: float = 0.5
    """saturated_activations: share of sigmoid/tanh outputs within 1e-3 of a bound."""
    # -- loss values -----------------------------------------------------------
    overflow_loss: float = -math.log(1.17549435e-38)
    """87.3365: -ln(FLT_MIN), where fp32 cross-entropy pins when softmax underflows to 0."""
    overflow_tolerance: float = 0.05
    chance_tolerance: float = 0.03
    """chance_level_loss: |median loss - ln(C)| / ln(C) below this, over the recent window."""
    # -- curves ------------------------------------------------------------------
    curve_window: int = 60
    """Steps of recent loss the trend rules look at."""
    trend_z: float = 3.0
    """A trend counts when the robust slope over the window exceeds this many standard errors."""
    plateau_rel_drop: float = 0.01
    """loss_plateau: the loss fell less than 1% of its level over the window..."""
    plateau_high: float = 0.3
    """...and is still above this share of the initial loss (a run at 1% of its start has converged)."""
    divergence_rise: float = 0.25
    """loss_divergence: the window's loss rose by at least 25% of its level with a significant slope."""
    spike_mad: float = 8.0
    """loss_spike: one step above median + this many MADs (and 2x the median) of the preceding window."""
    oscillation_rel: float = 0.5
    """loss_oscillation: step-to-step swings larger than 50% of the level, alternating in sign."""
    converged_rel: float = 0.1
    """converged: loss at or below this share of the initial loss and flat."""
    # -- learning rate -------------------------------------------------------------
    update_ratio_high: float = 1e-1
    """learning_rate_too_high: median update/weight ratio above this (DeepDiagnosis' bound; the healthy norm is ~1e-3)."""
    update_ratio_low: float = 1e-5
    """learning_rate_too_low: median update/weight ratio below this while the loss is not falling."""
    # -- validation -----------------------------------------------------------------
    val_min_points: int = 4
    """Validation rules need at least this many validation measurements."""
    # -- data ------------------------------------------------------------------------
    unnormalized_abs: float = 20.0
    """unnormalized_inputs: inputs whose typical magnitude (|mean| + std) exceeds this."""
    unshuffled_ratio: float = 0.3
    """unshuffled_data: distinct labels per batch below this share of what random batches would show."""
    # -- regularisation --------------------------------------------------------------
    shrink_fraction: float = 0.3
    """over_regularization: weights shrank by at least 30% from their start while the loss stayed high."""
    # -- initialisation ---------------------------------------------------------------
    init_scale_ratio: float = 1e2
    """bad_initialization: activation scale changes by this factor from first to last watched layer."""

    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            _validate(f.name, f.type, getattr(self, f.name))
        if self.update_ratio_low >= self.update_ratio_high:
            raise ValueError(f"Config.update_ratio_low ({self.update_ratio_low!r}) must be below "
                             f"update_ratio_high ({self.update_ratio_high!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What each field accepts: (lowest, highest, lowest excluded). Integers are counts of steps or
# layers; floats are thresholds whose meaning is in the field's docstring above.
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "flush_every": (1, None), "rules_every": (1, None), "activation_every": (1, None),
    "window": (1, None), "max_layer_metrics": (0, None), "grad_sample": (0, None),
    "warmup_steps": (0, None), "curve_window": (2, None), "val_min_points": (1, None),
}
_FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "explode_factor": (1.0, math.inf, True), "explode_abs": (0.0, math.inf, True),
    "vanish_ratio": (0.0, 1.0, True), "dead_fraction": (0.0, 1.0, True),
    "dead_persist": (0.0, 1.0, True), "saturation_fraction": (0.0, 1.0, True),
    "overflow_loss": (0.0, math.inf, True), "overflow_tolerance": (0.0, 1.0, True),
    "chance_tolerance": (0.0, 1.0, True), "trend_z": (0.0, math.inf, True),
    "plateau_rel_drop": (0.0, 1.0, True), "plateau_high": (0.0, 1.0, False),
    "divergence_rise": (0.0, math.inf, True), "spike_mad": (0.0, math.inf, True),
    "oscillation_rel": (0.0, math.inf, True), "converged_rel": (0.0, 1.0, True),
    "update_ratio_high": (0.0, math.inf, True), "update_ratio_low": (0.0, math.inf, True),
    "unnormalized_abs": (0.0, math.inf, True), "unshuffled_ratio": (0.0, 1.0, True),
    "shrink_fraction": (0.0, 1.0, True), "init_scale_ratio": (1.0, math.inf, True),
}
_CHOICES = {"on_critical": ("warn", "raise")}


def _validate(name: str, kind: Any, value: Any) -> None:
    """Raise a one-line error naming ``Config.<name>`` when ``value`` is not what it takes."""
    def fail(want: str) -> None:
        raise (ValueError if _type_ok(kind, value) else TypeError)(
            f"Config.{name} must be {want}, got {value!r}")

    if name in _CHOICES:
        if value not in _CHOICES[name]:
            fail(" or ".join(repr(c) for c in _CHOICES[name]))
    elif kind == "bool":
        if not isinstance(value, bool):
            fail("True or False")
    elif kind == "int":
        lo, hi = _INT_RANGES.get(name, (None, None))
        if not _type_ok(kind, value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            fail(f"an integer >= {lo}" if lo is not None else "an integer")
    elif kind == "float":
        lo, hi, open_lo = _FLOAT_RANGES.get(name, (-math.inf, math.inf, False))
        ok = _type_ok(kind, value) and math.isfinite(value) and (value > lo if open_lo else value >= lo) \
            and value <= hi
        if not ok:
            span = f"{'>' if open_lo else '>='} {lo:g}" + ("" if hi == math.inf else f" and <= {hi:g}")
            fail(f"a finite number {span}")
    elif kind.startswith("dict") and not isinstance(value, dict):
        fail("a dict")


def _type_ok(kind: Any, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("dict"):
        return isinstance(value, dict)
    return True
