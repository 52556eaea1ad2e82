"""The root-cause figure every benchmark prints beside recall.

Of the faulty runs with two or more warning/critical findings, how many report the planted
fault as their root cause (``lossprobe.rootcause.attribute(findings)[0]``)::

    root_cause=R/M (R'/M' where a finding names the fault)

The second figure leaves out the runs where no finding names the planted fault at all (a miss
of the rules, which no attribution can make up for). A root cause is right when it is the
scenario's headline code, or a code that names the same planted fault: :data:`ZOO_NAMES` for
the zoo (written from each scenario's ``planted`` line, with the real-program corpus's kinds
as the guide: ``benchmarks/realworld/run.py NAMES``), :data:`SUITE_NAMES` for the TensorFlow
and Paddle suites, the case's ``NAMES[kind]`` for the corpus. Runs with fewer than two
findings have nothing to order and are not counted.

Example::

    tally = RootCauseTally()
    name = "dead_relu/mlp_lr_burst_kills_relus"
    tally.add(name, findings, accepted(name, "dead_relu"))
    print(tally.line())          # root_cause=1/1 (1/1 where a finding names the fault)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lossprobe.findings import Finding
from lossprobe.rootcause import attribute

# Weight-initialisation faults are named by the mechanism they set off (as the corpus's
# "weight_initialization" kind is).
_INIT = ("bad_initialization", "vanishing_gradients", "dead_relu", "saturated_activations")

ZOO_NAMES: dict[str, tuple[str, ...]] = {
    # an lr schedule jump, or an lr past the stable range, with log(softmax) written by hand:
    # the lr, or the numeric fault as the corpus's "numerics" kind names it
    "nan_loss/mlp_naive_ce_lr_jump": ("learning_rate_too_high", "softmax_overflow", "nonfinite_gradients"),
    "nan_loss/regression_sgd_overflow": ("learning_rate_too_high",),
    "nan_loss/gru_log_of_softmax": ("learning_rate_too_high", "softmax_overflow", "nonfinite_gradients"),
    "softmax_overflow/mlp_nan_safe_ce_pinned": ("learning_rate_too_high",),   # lr 20
    "chance_level_loss/mlp_dropout_one": ("excessive_dropout",),
    "chance_level_loss/bce_labels_detached_from_inputs": ("label_problem",),
    "chance_level_loss/cnn_double_scaled_inputs": ("unnormalized_inputs",),
    "exploding_gradients/regression_warmup_overshoot": ("learning_rate_too_high",),
    "exploding_gradients/mf_embeddings_lr_high": ("learning_rate_too_high",),
    "vanishing_gradients/mlp_deep_sigmoid": ("saturated_activations",),
    "vanishing_gradients/cnn_deep_sigmoid": ("saturated_activations",),
    "vanishing_gradients/regression_deep_sigmoid": ("saturated_activations",),
    "bad_initialization/mlp_deep_tanh_small_init": _INIT,
    "bad_initialization/mlp_deep_relu_unit_normal": _INIT,
    "bad_initialization/cnn_deep_tiny_init": _INIT,
    # a graph cut or a parameter list that misses layers: the corpus's "disconnected_graph"
    "frozen_parameters/mlp_head_replaced_after_optimizer": ("zero_gradients",),
    "frozen_parameters/cnn_detached_features": ("zero_gradients",),
    "frozen_parameters/gru_optimizer_only_head": ("zero_gradients",),
    "dead_relu/mlp_lr_burst_kills_relus": ("learning_rate_too_high",),
    "dead_relu/mlp_negative_bias_init": ("bad_initialization",),
    "dead_relu/cnn_adam_lr_high_dead_channels": ("learning_rate_too_high",),
    "saturated_activations/mlp_tanh_unit_normal_init": ("bad_initialization",),
    "saturated_activations/mlp_sigmoid_raw_pixels": ("unnormalized_inputs", "bad_initialization"),
    "saturated_activations/cnn_tanh_default_normal_init": ("bad_initialization",),
    "loss_plateau/transformer_adamw_lr_high": ("learning_rate_too_high",),
    "loss_divergence/mlp_adam_lr_jump": ("learning_rate_too_high",),
    "loss_divergence/gru_lr_growing": ("learning_rate_too_high",),
    "loss_spike/mlp_unscaled_batch": ("unnormalized_inputs",),
    "loss_spike/cnn_shifted_label_batch": ("label_problem",),
    "loss_spike/regression_units_batch": ("unscaled_targets",),
    "loss_oscillation/mlp_tiny_batch_high_lr": ("learning_rate_too_high",),
    "loss_oscillation/gru_tiny_batch_high_lr": ("learning_rate_too_high",),
    "loss_oscillation/cnn_batch_of_two": ("learning_rate_too_high",),
    "overfitting/cnn_noisy_small_train": ("label_problem",),
    "validation_anomaly/mlp_dropout_keep_prob_confusion": ("excessive_dropout",),
    "validation_anomaly/regression_target_noise_augmentation": ("label_problem",),
    "validation_anomaly/gru_label_smoothing_typo": ("label_problem",),
    "double_softmax/mlp_softmax_then_ce": ("output_activation_mismatch",),
    "double_softmax/cnn_functional_softmax_ce": ("output_activation_mismatch",),
    "double_softmax/gru_softmax_functional_ce": ("output_activation_mismatch",),
}
"""Zoo scenario -> codes other than its headline that name its planted fault."""

SUITE_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    # tests/tf/test_keras.py: one planted fault per headline code, trained with fit and a tape
    "tensorflow": {
        "exploding_gradients": ("unnormalized_inputs",),     # raw 0..16 pixels x16 (fixed: scaled)
        "vanishing_gradients": ("saturated_activations",),   # a sigmoid stack
        "dead_relu": ("bad_initialization",),                # biases initialised to -5
        "softmax_overflow": ("bad_initialization",),         # last kernel scaled 1e4
        "chance_level_loss": ("label_problem",),             # random labels
        "loss_plateau": ("learning_rate_too_low",),          # the lr drops 10000x at step 40
    },
    # tests/paddle/test_paddle.py: the same, trained in a dygraph loop and with Model.fit
    "paddle": {
        "nan_loss": ("nonfinite_inputs",),                   # NaN in 15 training rows
        "exploding_gradients": ("learning_rate_too_high",),  # SGD lr 1.2 on a linear regression
        "vanishing_gradients": ("saturated_activations",),   # eleven sigmoid layers
        "dead_relu": ("bad_initialization",),                # first-layer bias -20
        "softmax_overflow": ("bad_initialization",),         # last layer's weights x300
        "loss_plateau": ("learning_rate_too_low",),          # SGD lr 1e-7
    },
}
"""The TensorFlow and Paddle suites (scenarios ``<code>/<way>``): headline code -> the other
codes that name its planted fault, from each suite's plant."""


def accepted(name: str, headline: str, framework: str = "torch") -> tuple[str, ...]:
    """The root causes that count as right for scenario ``name``: a zoo scenario
    (``"<code>/<script>"``) or, for another framework, a suite scenario (``"<code>/<way>"``)."""
    names = ZOO_NAMES.get(name, ()) if framework == "torch" else SUITE_NAMES.get(framework, {}).get(headline, ())
    return (headline, *names)


def serious(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in ("warning", "critical")]


def reported_root(findings: list[Finding]) -> str | None:
    """The run's root cause: the first of :func:`lossprobe.rootcause.attribute`."""
    roots = attribute(findings)
    return roots[0].code if roots else None


@dataclass
class RootCauseTally:
    """Counts runs with >= 2 warning/critical findings and those whose root cause is right."""
    counted: int = 0
    right: int = 0
    named: int = 0                                    # counted runs with a finding that names the fault
    wrong: list[str] = field(default_factory=list)   # "name: root X (want A|B); found ..."

    def add(self, name: str, findings: list[Finding], want: tuple[str, ...]) -> bool | None:
        """Score one faulty run; None when it has fewer than two findings (not counted)."""
        found = serious(findings)
        if len(found) < 2:
            return None
        root = reported_root(findings)
        named = any(f.code in want for f in found)
        self.counted += 1
        self.named += named
        ok = root in want
        self.right += ok
        if not ok:
            codes = ", ".join(f"{f.code}{'(r)' if f.resolved else ''}@{f.step}" +
                              (f"<{f.caused_by}" if f.caused_by else "") for f in found)
            why = "" if named else ", not found"
            why += ", all resolved: no root cause reported" if root is None else ""
            self.wrong.append(f"{name}: root {root} (want {'|'.join(want)}{why}); found {codes}")
        return ok

    def line(self) -> str:
        return f"root_cause={self.right}/{self.counted} ({self.right}/{self.named} where a finding names the fault)"

    def report(self) -> str:
        """The figure, then one line per run whose root cause is not the planted fault."""
        return "\n".join([self.line(), *(f"  wrong root: {w}" for w in self.wrong)])
