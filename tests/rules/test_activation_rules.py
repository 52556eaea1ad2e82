"""Activation rules on synthetic histories: dead ReLUs and saturation are faults when the
network stops learning, advice (info) while the loss still falls well."""
import math

import numpy as np
import pytest

from synth import noisy, run_rule, synth

ACTS = dict(activations=("fc1.act", "fc2.act", "head"), kinds=("relu", "relu", "sigmoid"))
CLASSIFIER = dict(n_classes=10, loss_kind="cross_entropy")


@pytest.mark.parametrize("dead,fires", [(0.8, True), (0.45, False)])
def test_dead_relu_edge(dead, fires):
    h = synth(60, loss=2.3, layout=ACTS, facts=CLASSIFIER, act_dead=lambda t: np.array([dead, 0.1, np.nan]))
    det = run_rule("dead_relu", h)
    assert (det is not None) == fires
    if fires:
        assert det.severity is None and det.evidence["worst_layer"] == "fc1.act"


def test_dead_relu_is_advice_while_the_loss_falls_well():
    loss = noisy(lambda t: 2.3 * math.exp(-t / 20) + 0.1, 0.02)
    h = synth(120, loss=loss, layout=ACTS, facts=CLASSIFIER, act_dead=lambda t: np.array([0.6, 0.1, np.nan]))
    det = run_rule("dead_relu", h)
    assert det is not None and det.severity == "info"


def test_saturation_of_the_output_layer_is_not_a_fault():
    # the sigmoid head is the model output (facts.output_activation_index): confidence, not saturation
    h = synth(60, loss=0.69, layout=ACTS, facts=dict(output_activation_index=2, loss_kind="bce"),
              act_sat=lambda t: np.array([np.nan, np.nan, 0.95]))
    assert run_rule("saturated_activations", h) is None
    hidden = synth(60, loss=0.69, layout=dict(activations=("a", "b"), kinds=("sigmoid", "sigmoid")),
                   facts=dict(loss_kind="bce"), act_sat=lambda t: np.array([0.9, 0.2]))
    assert run_rule("saturated_activations", hidden) is not None
