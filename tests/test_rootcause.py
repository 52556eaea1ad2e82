"""Root cause first: the causal model, attribution on constructed findings, and real runs.

The constructed findings pin down each rule of :func:`lossprobe.rootcause.attribute` (time
order, set-up faults, undecided cases, info and advice, resolved causes); the two PyTorch
runs check it end to end: a learning rate far too high is reported as the cause of the dead
ReLUs and the plateau it produced, and two independent planted faults stay two root causes.
"""
import pytest
import torch
from torch import nn

import lossprobe
from lossprobe.catalog import CATALOG
from lossprobe.causes import CAN_CAUSE, CONFIRM, LINKS, SETUP
from lossprobe.findings import Detection, Finding
from lossprobe.rootcause import SAME_TIME, attribute
from torch_helpers import X, Y, mlp, train


def finding(code: str, step: int, severity: str | None = None, resolved_at: int | None = None) -> Finding:
    f = Finding.from_detection(Detection(code, step, {}, severity=severity))
    if resolved_at is not None:
        f.last_step, f.active, f.resolved = resolved_at, False, True
    return f


def roots_of(findings):
    return {rc.code: rc for rc in attribute(findings)}


def caused_by(findings):
    return {f.code: f.caused_by for f in findings}


# ---------------------------------------------------------------- the causal model
def test_the_model_covers_the_catalog():
    in_links = {c for link in LINKS for c in (link.cause, link.effect)}
    # converged is healthy; rank_divergence is a sharding fault nothing here produces
    assert set(CATALOG) - in_links == {"converged", "rank_divergence"}
    assert all(link.how and link.how[0].islower() and not link.how.endswith(".") for link in LINKS)
    assert SETUP <= set(CAN_CAUSE)
    assert set(CAN_CAUSE) <= set(CONFIRM)


def test_the_issue_examples_are_links():
    for cause, effects in {
        "learning_rate_too_high": ("exploding_gradients", "softmax_overflow", "dead_relu", "loss_divergence"),
        "loss_divergence": ("nan_loss",),
        "unnormalized_inputs": ("saturated_activations", "exploding_gradients"),
        "bad_initialization": ("vanishing_gradients", "dead_relu"),
        "output_activation_mismatch": ("zero_gradients", "chance_level_loss", "loss_plateau"),
        "label_problem": ("chance_level_loss", "nan_loss", "validation_anomaly"),
        "stale_gradients": ("loss_divergence", "exploding_gradients"),
        "excessive_dropout": ("chance_level_loss", "loss_plateau"),
        "unscaled_targets": ("exploding_gradients", "loss_divergence", "nan_loss"),
    }.items():
        assert set(effects) <= set(CAN_CAUSE[cause]), cause


# ---------------------------------------------------------------- attribution
def test_the_earlier_cause_explains_the_later_symptoms_through_a_chain():
    # the model has no direct link from the learning rate to vanishing gradients: dead units
    fs = [finding("vanishing_gradients", 60), finding("dead_relu", 30), finding("learning_rate_too_high", 0)]
    (rc,) = attribute(fs)
    assert rc.code == "learning_rate_too_high" and rc.confidence == "clear"
    assert rc.consequences == ("dead_relu", "vanishing_gradients")   # nearest first
    assert caused_by(fs) == {"vanishing_gradients": "learning_rate_too_high", "dead_relu": "learning_rate_too_high",
                             "learning_rate_too_high": None}
    assert rc.fix_first == CATALOG["learning_rate_too_high"].fixes[0]
    # the why walks the chain: the link into each consequence, named
    assert "(dead_relu)" in rc.why and "(vanishing_gradients)" in rc.why
    assert CAN_CAUSE["dead_relu"]["vanishing_gradients"] in rc.why


def test_a_cause_that_began_later_explains_nothing_before_it():
    fs = [finding("dead_relu", 0), finding("learning_rate_too_high", 5 * SAME_TIME)]
    roots = roots_of(fs)
    assert set(roots) == {"dead_relu", "learning_rate_too_high"}
    assert caused_by(fs) == {"dead_relu": None, "learning_rate_too_high": None}


def test_a_setup_fault_explains_its_symptoms_whenever_it_was_measured():
    fs = [finding("saturated_activations", 0), finding("unnormalized_inputs", 200)]
    (rc,) = attribute(fs)
    assert rc.code == "unnormalized_inputs" and rc.consequences == ("saturated_activations",)


def test_independent_faults_stay_separate_roots():
    fs = [finding("label_problem", 0), finding("nan_loss", 30), finding("unshuffled_data", 0),
          finding("loss_oscillation", 40)]
    roots = roots_of(fs)
    assert set(roots) == {"label_problem", "unshuffled_data"}
    assert roots["label_problem"].consequences == ("nan_loss",)
    assert roots["unshuffled_data"].consequences == ("loss_oscillation",)
    # the critical group leads
    assert attribute(fs)[0].code == "label_problem"


def test_causes_that_explain_each_other_at_the_same_time_are_undecided():
    fs = [finding("learning_rate_too_high", 0), finding("exploding_gradients", SAME_TIME // 2),
          finding("nan_loss", 90)]
    roots = roots_of(fs)
    assert set(roots) == {"learning_rate_too_high", "exploding_gradients"}
    assert all(rc.confidence == "undecided" for rc in roots.values())
    assert roots["learning_rate_too_high"].alternatives == ("exploding_gradients",)
    assert roots["exploding_gradients"].alternatives == ("learning_rate_too_high",)
    # the why says what would decide it
    assert CONFIRM["learning_rate_too_high"] in roots["learning_rate_too_high"].why
    assert "does not decide" in roots["exploding_gradients"].why
    # the shared consequence goes under one of them, not both
    assert caused_by(fs)["nan_loss"] in roots


def test_time_decides_what_the_model_leaves_open():
    fs = [finding("learning_rate_too_high", 0), finding("exploding_gradients", 10 * SAME_TIME)]
    (rc,) = attribute(fs)
    assert rc.code == "learning_rate_too_high" and rc.confidence == "clear"
    fs = [finding("exploding_gradients", 0), finding("learning_rate_too_high", 10 * SAME_TIME)]
    (rc,) = attribute(fs)
    assert rc.code == "exploding_gradients" and rc.consequences == ("learning_rate_too_high",)


def test_numeric_faults_on_one_step_are_ordered_by_the_phase_of_the_step():
    fs = [finding("nonfinite_gradients", 120), finding("nan_loss", 120), finding("nonfinite_inputs", 120)]
    (rc,) = attribute(fs)
    assert rc.code == "nonfinite_inputs" and set(rc.consequences) == {"nan_loss", "nonfinite_gradients"}
    # a NaN gradient one step before the NaN loss is its cause (the where-sqrt trap)
    fs = [finding("nan_loss", 1), finding("nonfinite_gradients", 0)]
    (rc,) = attribute(fs)
    assert rc.code == "nonfinite_gradients" and rc.consequences == ("nan_loss",)


def test_the_learning_rate_explains_no_state_that_was_there_before_the_first_update():
    # a head scaled 1000x overflows softmax on the very first forward pass; the learning rate
    # looks too high from the first update (the gradients are huge) but did not do it
    fs = [finding("softmax_overflow", 0), finding("learning_rate_too_high", 0)]
    roots = roots_of(fs)
    assert set(roots) == {"softmax_overflow", "learning_rate_too_high"}
    assert attribute(fs)[0].code == "softmax_overflow"
    fs = [finding("softmax_overflow", 30), finding("learning_rate_too_high", 0)]
    (rc,) = attribute(fs)
    assert rc.code == "learning_rate_too_high"


def test_readings_of_one_curve_stretch_go_together_whatever_their_steps():
    # the chance-level rule waits for the warm-up, the validation anomaly for validation points:
    # their steps say nothing about which came first
    fs = [finding("loss_plateau", 0), finding("validation_anomaly", 19), finding("chance_level_loss", 20)]
    (rc,) = attribute(fs)
    assert rc.code == "validation_anomaly" and set(rc.consequences) == {"chance_level_loss", "loss_plateau"}


def test_among_undecided_causes_the_one_higher_up_the_chain_leads_and_holds_the_consequences():
    # a learning rate, exploding gradients and a climbing loss all within a few steps
    fs = [finding("learning_rate_too_high", 0), finding("loss_divergence", 4), finding("exploding_gradients", 6),
          finding("nan_loss", 55)]
    roots = attribute(fs)
    assert roots[0].code == "learning_rate_too_high" and roots[0].consequences == ("nan_loss",)
    assert {rc.code for rc in roots} == {"learning_rate_too_high", "loss_divergence", "exploding_gradients"}
    assert all(rc.confidence == "undecided" for rc in roots)
    assert all(rc.consequences == () for rc in roots[1:])


def test_a_consequence_goes_to_the_root_whose_own_findings_also_explain_it():
    # the plateau: the learning rate explains it, and so do the dead ReLUs it produced
    fs = [finding("learning_rate_too_high", 0), finding("dead_relu", 20), finding("unshuffled_data", 0),
          finding("loss_plateau", 60)]
    assert set(roots_of(fs)) == {"learning_rate_too_high", "unshuffled_data"}
    assert caused_by(fs)["loss_plateau"] == "learning_rate_too_high"


def test_a_link_that_holds_for_some_forms_of_a_cause_reads_its_evidence():
    # a ReLU head under a probability loss gives 0/0 once its outputs die; a softmax head
    # under NLLLoss (the log taken by hand, skorch's bug) cannot make the NaN itself
    relu_head = {"output_activation": "relu", "loss_expects": "probabilities"}
    softmax_nll = {"output_activation": "softmax", "loss_expects": "log_probabilities"}
    for evidence, explains in ((relu_head, True), (softmax_nll, False)):
        mismatch = Finding.from_detection(Detection("output_activation_mismatch", 0, evidence))
        fs = [mismatch, finding("nan_loss", 400), finding("nonfinite_gradients", 400)]
        roots = attribute(fs)
        assert (roots[0].code == "output_activation_mismatch") is explains
        assert (caused_by(fs)["nan_loss"] == "output_activation_mismatch") is explains
        assert caused_by(fs)["nonfinite_gradients"] == (roots[0].code if explains else "nan_loss")


def made(code: str, step: int, **evidence) -> Finding:
    return Finding.from_detection(Detection(code, step, evidence))


RAW_INPUTS = {"input_mean": 25.0, "input_std": 32.0}   # s**2 = 1649: raw values of 0..99


def test_inputs_explain_an_update_ratio_only_as_far_as_their_scale_can():
    # the dose: inputs of scale s raise the update ratio by at most s**2. A ratio of 1640 is
    # ~1 on normalised inputs, still too high: the learning rate's own (GD lr 0.5 on x = 0..99)
    fs = [made("unnormalized_inputs", 0, **RAW_INPUTS),
          made("learning_rate_too_high", 0, update_to_weight_ratio=1640.0, threshold=0.1, lr=0.5),
          finding("exploding_gradients", 2), finding("nan_loss", 6)]
    roots = attribute(fs)
    assert roots[0].code == "learning_rate_too_high"
    # the inputs explain none of it: their effects through the step size are screened off by
    # a step size they cannot account for
    assert roots_of(fs)["unnormalized_inputs"].consequences == ()
    assert "unnormalized_inputs" not in caused_by(fs).values()
    # nearest case: a ratio of 50 is ~0.03 on normalised inputs, which the scale accounts for
    fs[1] = made("learning_rate_too_high", 0, update_to_weight_ratio=50.0, threshold=0.1, lr=0.5)
    (rc,) = attribute(fs)
    assert rc.code == "unnormalized_inputs"
    assert set(rc.consequences) == {"learning_rate_too_high", "exploding_gradients", "nan_loss"}


def test_a_step_size_the_inputs_cannot_account_for_leaves_them_their_direct_effects():
    # saturated tanh units come from the inputs' size in the forward pass, not from the steps
    fs = [made("unnormalized_inputs", 0, **RAW_INPUTS),
          made("learning_rate_too_high", 0, update_to_weight_ratio=1640.0, threshold=0.1, lr=0.5),
          finding("saturated_activations", 0), finding("loss_divergence", 30)]
    roots = roots_of(fs)
    assert roots["unnormalized_inputs"].consequences == ("saturated_activations",)
    assert roots["learning_rate_too_high"].consequences == ("loss_divergence",)


def test_steps_too_small_to_move_the_weights_explain_the_stall_not_the_input_scale():
    # RMSprop at lr 1e-10 on inputs around 85: large inputs make large gradients, never tiny
    # updates, so the tiny steps are the learning rate's and the flat loss theirs
    fs = [made("learning_rate_too_low", 0, update_to_weight_ratio=0.0, threshold=1e-5, lr=1e-10),
          made("unnormalized_inputs", 0, input_mean=85.0, input_std=10.7), finding("loss_plateau", 0)]
    roots = attribute(fs)
    assert roots[0].code == "learning_rate_too_low" and roots[0].consequences == ("loss_plateau",)
    assert roots_of(fs)["unnormalized_inputs"].consequences == ()
    # nearest cases: inputs far too small do make tiny updates, and explain both; without a
    # measured step size the inputs keep the plateau
    fs[1] = made("unnormalized_inputs", 0, input_mean=0.001, input_std=0.002)
    (rc,) = attribute(fs)
    assert rc.code == "unnormalized_inputs"
    assert set(rc.consequences) == {"learning_rate_too_low", "loss_plateau"}
    fs = [made("unnormalized_inputs", 0, input_mean=85.0, input_std=10.7), finding("loss_plateau", 0)]
    assert attribute(fs)[0].consequences == ("loss_plateau",)


def test_a_learning_rate_under_the_threshold_does_not_blow_the_gradient_up():
    # SGD lr 5e-4 on raw pixels: the update ratio is 2.8 because the gradient is thousands of
    # times the weights from the first step; the rate did not grow it
    lr = made("learning_rate_too_high", 0, update_to_weight_ratio=2.8, threshold=0.1, lr=5e-4)
    fs = [lr, finding("exploding_gradients", 3), finding("nonfinite_gradients", 4), finding("nan_loss", 5)]
    (rc,) = attribute(fs)
    assert rc.code == "exploding_gradients" and rc.confidence == "clear"
    assert set(rc.consequences) == {"learning_rate_too_high", "nonfinite_gradients", "nan_loss"}
    # nearest case: at lr 0.5 either can have produced the other within a few steps: undecided
    fs[0] = made("learning_rate_too_high", 0, update_to_weight_ratio=2.8, threshold=0.1, lr=0.5)
    roots = roots_of(fs)
    assert set(roots) == {"learning_rate_too_high", "exploding_gradients"}
    assert all(rc.confidence == "undecided" for rc in roots.values())


def test_a_learning_rate_too_low_is_not_ordered_after_the_stall_its_rule_waits_for():
    # plain GD lr 0.01 on XOR: the loss stalls at ln 2, and the update ratio sinks under the
    # threshold only later, as the stall shrinks the gradients
    fs = [finding("loss_plateau", 260, resolved_at=379), finding("chance_level_loss", 340),
          made("learning_rate_too_low", 722, update_to_weight_ratio=3.7e-5, threshold=1e-4, lr=0.01)]
    (rc,) = attribute(fs)
    assert rc.code == "learning_rate_too_low"
    assert set(rc.consequences) == {"loss_plateau", "chance_level_loss"}
    # nearest case: a learning rate too high is dated by its own measurement, and a rate that
    # became too high after the stall began did not cause it
    fs[2] = made("learning_rate_too_high", 722, update_to_weight_ratio=0.5, threshold=0.1, lr=0.01)
    roots = roots_of(fs)
    assert caused_by(fs)["chance_level_loss"] is None and "chance_level_loss" in roots


def test_a_fault_in_part_of_the_model_yields_a_shared_symptom_to_a_fault_in_all_of_it():
    # one embedding never trained beside a sigmoid fed to BCEWithLogitsLoss: both set-up faults,
    # both from the first step, both can stall the loss
    mismatch = made("output_activation_mismatch", 0, output_activation="sigmoid", loss_expects="logits")
    part = made("frozen_parameters", 0, n_frozen=1, n_parameters=6)
    fs = [part, finding("loss_plateau", 0), mismatch]
    roots = attribute(fs)
    assert roots[0].code == "output_activation_mismatch" and roots[0].consequences == ("loss_plateau",)
    # nearest cases: alone, the part-frozen model still explains its plateau; frozen
    # parameters whose share is not known are taken as the whole model is
    fs = [part, finding("loss_plateau", 0)]
    assert attribute(fs)[0].consequences == ("loss_plateau",)
    whole, unknown = made("frozen_parameters", 0, n_frozen=6, n_parameters=6), made("frozen_parameters", 0, n_frozen=1)
    assert [rc.to_dict() for rc in attribute([whole, finding("loss_plateau", 0), mismatch])] == \
        [rc.to_dict() for rc in attribute([unknown, finding("loss_plateau", 0), mismatch])]


def test_info_and_advice_are_never_roots_nor_causes():
    fs = [finding("learning_rate_too_high", 0, severity="info"), finding("dead_relu", 20),
          finding("converged", 100)]
    (rc,) = attribute(fs)
    assert rc.code == "dead_relu"
    assert caused_by(fs) == {"learning_rate_too_high": None, "dead_relu": None, "converged": None}
    assert attribute([finding("converged", 10)]) == []
    assert attribute([]) == []


def test_a_resolved_cause_explains_what_began_while_it_was_active():
    fs = [finding("learning_rate_too_high", 100, resolved_at=120), finding("dead_relu", 110),
          finding("loss_spike", 400)]
    roots = roots_of(fs)
    assert roots["learning_rate_too_high"].consequences == ("dead_relu",)
    assert "loss_spike" in roots and caused_by(fs)["loss_spike"] is None
    # a group whose findings have all resolved is no place to start: not reported
    fs[1].resolved = True
    roots = roots_of(fs)
    assert set(roots) == {"loss_spike"} and caused_by(fs)["dead_relu"] == "learning_rate_too_high"


def test_attribution_is_recomputed_from_scratch():
    fs = [finding("learning_rate_too_high", 0), finding("dead_relu", 30)]
    attribute(fs)
    assert fs[1].caused_by == "learning_rate_too_high"
    fs[0].severity = "info"   # e.g. a reader working on a copy that demoted it
    attribute(fs)
    assert fs[1].caused_by is None


# ---------------------------------------------------------------- real runs
def test_learning_rate_far_too_high_is_the_root_of_dead_relus_and_the_plateau():
    # plain SGD at lr 50 on a ReLU MLP (the demo's faulty run): the updates kill the ReLUs and
    # the loss stops falling; neither is a fault of its own
    probe = train(mlp(), opt="sgd", lr=50.0, steps=300)
    found = {f.code: f for f in probe.findings}
    assert {"learning_rate_too_high", "dead_relu", "loss_plateau"} <= set(found)
    roots = attribute(probe.findings)
    assert roots[0].code == "learning_rate_too_high"
    assert {"dead_relu", "loss_plateau"} <= set(roots[0].consequences)
    assert found["dead_relu"].caused_by == found["loss_plateau"].caused_by == "learning_rate_too_high"
    report = probe.report()
    assert report["root_causes"][0]["code"] == "learning_rate_too_high"
    assert report["fix_first"] == CATALOG["learning_rate_too_high"].fixes[0]
    assert probe.tags()["lossprobe.root_cause"] == "learning_rate_too_high"
    # every code still has its own tag
    assert {"lossprobe.diagnosis.dead_relu", "lossprobe.diagnosis.loss_plateau"} <= set(probe.tags())


def test_two_planted_faults_give_two_root_causes():
    # raw 0..255 pixels under plain SGD (Adam would learn well regardless: then the scale is
    # advice), and the training set read in label order without shuffling
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[])
    order = torch.argsort(Y[:1400], stable=True)
    xs, ys = X[:1400][order] * 255.0, Y[:1400][order]
    loss_fn = nn.CrossEntropyLoss()
    for step in range(200):
        i = (step * 32) % (1400 - 32)
        loss = loss_fn(model(xs[i:i + 32]), ys[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.detach()
    roots = roots_of(probe.findings)
    assert {"unnormalized_inputs", "unshuffled_data"} <= set(roots)
    found = caused_by(probe.findings)
    assert found["unnormalized_inputs"] is None and found["unshuffled_data"] is None
