"""The findings' lifecycle: a warning that clears and stays clear is resolved (kept, not the
run's health); a critical finding never resolves; advice (info) counts as healthy and is
raised to its catalog severity once the run confirms it."""
from lossprobe.findings import Detection
from lossprobe.verdict import Verdict


def det(code, step=0, severity=None):
    return Detection(code, step, {"x": 1.0}, severity=severity)


def test_a_warning_that_clears_and_stays_clear_is_resolved():
    v = Verdict(resolve_steps=60)
    v.apply([det("loss_plateau", 20)], seen_through=40)
    assert v.health == "warning"
    v.apply([], seen_through=80)                       # clear for 40 steps: not yet
    assert v.health == "warning" and not v.findings()[0].resolved
    v.apply([], seen_through=100)                      # clear for 60 steps: resolved
    f = v.findings()[0]
    assert f.resolved and not f.active and v.health == "healthy"
    assert f.code == "loss_plateau" and f.step == 20   # kept, with when it began


def test_a_resolved_warning_that_comes_back_counts_again():
    v = Verdict(resolve_steps=60)
    v.apply([det("loss_plateau", 20)], seen_through=40)
    v.apply([], seen_through=120)
    assert v.health == "healthy"
    v.apply([det("loss_plateau", 20)], seen_through=140)
    assert v.health == "warning" and not v.findings()[0].resolved


def test_a_critical_finding_never_resolves():
    v = Verdict(resolve_steps=60)
    v.apply([det("nan_loss", 10)], seen_through=20)
    v.apply([], seen_through=500)
    assert v.health == "critical" and not v.findings()[0].resolved


def test_advice_is_healthy_until_the_run_confirms_it():
    v = Verdict()
    v.apply([det("learning_rate_too_high", 0, severity="info")], seen_through=20)
    assert v.health == "healthy" and v.findings()[0].severity == "info"
    v.apply([det("learning_rate_too_high", 0)], seen_through=40)   # now with symptoms: the catalog's warning
    assert v.health == "warning" and v.findings()[0].severity == "warning"


def test_a_warning_whose_rule_now_finds_only_advice_resolves():
    # confirmed by a symptom early on, then the symptom went away: the rule still measures the
    # fast updates, as advice; the warning clears like any other
    v = Verdict(resolve_steps=60)
    v.apply([det("learning_rate_too_high", 0)], seen_through=20)
    assert v.health == "warning"
    v.apply([det("learning_rate_too_high", 0, severity="info")], seen_through=60)
    assert v.health == "warning"
    v.apply([det("learning_rate_too_high", 0, severity="info")], seen_through=100)
    f = v.findings()[0]
    assert f.resolved and v.health == "healthy" and f.severity == "warning"
