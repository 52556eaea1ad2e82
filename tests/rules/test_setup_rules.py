"""Set-up rules on synthetic histories: the output head against the loss, dropout, gradients
carried between steps, target scale. Each fires on the fault and is silent on its fix."""
import pytest

from synth import run_rule, synth

# (output_activation, output_units, loss_kind, loss_name) -> the form that must fire, or None
CASES = [
    # the four forms of issue 17
    ("softmax", 1, "bce", "binary_crossentropy", "one-unit"),
    ("sigmoid", 10, "nll", "categorical_crossentropy", "sigmoid outputs under a categorical"),
    ("softmax", 4, "bce", "binary_crossentropy", "softmax outputs under a binary"),
    ("linear", 1, "bce", "BCELoss", "linear outputs under a loss that expects probabilities"),
    ("relu", 10, "nll", "categorical_crossentropy", "relu outputs under a loss that expects probabilities"),
    # their PyTorch forms
    ("sigmoid", 1, "bce_logits", "BCEWithLogitsLoss", "sigmoid before a loss that applies its own"),
    ("softmax", 10, "nll", "NLLLoss", "log-probabilities"),
    ("linear", 10, "nll", "NLLLoss", "log-probabilities"),
    # sound heads: silent
    ("sigmoid", 1, "bce", "binary_crossentropy", None),
    ("linear", 1, "bce_logits", "BCEWithLogitsLoss", None),
    ("softmax", 10, "nll", "categorical_crossentropy", None),
    ("linear", 10, "cross_entropy", "CrossEntropyLoss", None),
    ("log_softmax", 10, "nll", "NLLLoss", None),
    ("log_softmax", 10, "cross_entropy", "CrossEntropyLoss", None),   # log_softmax is idempotent under CE
    ("linear", 1, "mse", "MSELoss", None),
    ("relu", 1, "mse", "mean_squared_error", None),
    ("", 10, "cross_entropy", "CrossEntropyLoss", None),              # unknown head: nothing to say
]


@pytest.mark.parametrize("act,units,kind,name,form", CASES, ids=[f"{c[0] or 'unknown'}-{c[1]}-{c[3]}" for c in CASES])
def test_output_activation_mismatch(act, units, kind, name, form):
    h = synth(5, loss=0.7, facts=dict(output_activation=act, output_units=units, n_classes=units if units > 1 else 0,
                                      loss_kind=kind, loss_name=name, output_layer="head"))
    det = run_rule("output_activation_mismatch", h)
    if form is None:
        assert det is None, det
    else:
        assert det is not None and form in det.evidence["form"] and det.step == 0
        assert det.evidence["output_layer"] == "head"


def test_softmax_before_cross_entropy_is_double_softmax_not_a_mismatch():
    facts = dict(output_activation="softmax", output_units=10, n_classes=10, loss_kind="cross_entropy",
                 loss_name="CrossEntropyLoss")
    h = synth(5, loss=2.3, facts=facts)
    assert run_rule("output_activation_mismatch", h) is None
    assert run_rule("double_softmax", h) is not None


@pytest.mark.parametrize("rate,level,fires", [(0.9, 2.2, True), (0.9, 0.4, False), (0.5, 2.2, False), (0.8, 1.5, True)])
def test_excessive_dropout(rate, level, fires):
    h = synth(80, loss=lambda t: 2.3 if t < 10 else level, facts=dict(dropout_rates=(("drop1", rate),), n_classes=10,
                                                                       loss_kind="cross_entropy"))
    assert (run_rule("excessive_dropout", h) is not None) == fires


@pytest.mark.parametrize("carried,fires", [(1.0, True), (0.97, True), (0.0, False), (0.3, False)])
def test_stale_gradients(carried, fires):
    h = synth(60, loss=1.0, grad_carried=lambda t: carried if t % 10 == 0 else None)
    assert (run_rule("stale_gradients", h) is not None) == fires


@pytest.mark.parametrize("target_mean,target_std,fires", [(2e5, 5e4, True), (1e8, 1e7, True), (0.0, 1.0, False),
                                                          (50.0, 10.0, False)])
def test_unscaled_targets(target_mean, target_std, fires):
    h = synth(30, loss=1.0, facts=dict(loss_kind="mse", loss_name="MSELoss"), target_mean=target_mean,
              target_std=target_std, output_mean=0.05, logit_std=0.3)
    assert (run_rule("unscaled_targets", h) is not None) == fires


def test_unscaled_targets_only_for_regression_losses():
    h = synth(30, loss=1.0, facts=dict(loss_kind="cross_entropy"), target_mean=500.0, target_std=200.0,
              output_mean=0.0, logit_std=0.3)
    assert run_rule("unscaled_targets", h) is None


def test_label_problem_fractional_class_labels():
    frac = synth(40, loss=0.5, target_min=0.0, target_max=0.9, target_is_index=1.0, target_fractional=0.97,
                 batch_size=32.0, facts=dict(n_classes=10, loss_kind="nll"))
    det = run_rule("label_problem", frac)
    assert det is not None and "not integers" in det.evidence["problem"]
    ints = synth(40, loss=0.5, target_min=0.0, target_max=9.0, target_is_index=1.0, target_fractional=0.0,
                 batch_size=32.0, facts=dict(n_classes=10, loss_kind="nll"))
    assert run_rule("label_problem", ints) is None


@pytest.mark.parametrize("received,fires", [("log_softmax", False), ("softmax", True), ("", True)])
def test_the_loss_input_decides_when_the_program_transforms_the_output(received, fires):
    # skorch's get_loss: the module ends in softmax and the loss receives log(softmax + eps)
    h = synth(5, loss=1.0, facts=dict(output_activation="softmax", loss_input_activation=received, output_units=10,
                                      n_classes=10, loss_kind="nll", loss_name="NLLLoss"))
    assert (run_rule("output_activation_mismatch", h) is not None) == fires


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_a_squashed_or_clipped_head_before_a_logits_loss(act):
    h = synth(5, loss=2.3, facts=dict(output_activation=act, output_units=10, n_classes=10,
                                      loss_kind="cross_entropy", loss_name="CrossEntropyLoss"))
    det = run_rule("output_activation_mismatch", h)
    assert det is not None and "on the logits" in det.evidence["form"]
