"""Config checks every value when it is made, naming the field; ``sinks`` takes one name."""
from __future__ import annotations

import dataclasses

import pytest

import lossprobe
from lossprobe.sinks import ConsoleSink
from torch_helpers import mlp


@pytest.mark.parametrize("kwargs, kind", [
    ({"window": 0}, ValueError),
    ({"window": -5}, ValueError),
    ({"activation_every": "10"}, TypeError),
    ({"explode_factor": "1e3"}, TypeError),
    ({"flush_every": 2.5}, TypeError),
    ({"flush_every": 0}, ValueError),
    ({"rules_every": True}, TypeError),          # a bool is not a count
    ({"background": "no"}, TypeError),
    ({"on_critical": "stop"}, ValueError),
    ({"dead_fraction": 1.5}, ValueError),
    ({"vanish_ratio": 0.0}, ValueError),
    ({"explode_factor": float("nan")}, ValueError),
    ({"extra": ["a"]}, TypeError),
])
def test_bad_values_fail_at_construction_naming_the_field(kwargs, kind):
    (name, value), = kwargs.items()
    with pytest.raises(kind) as err:
        lossprobe.Config(**kwargs)
    msg = str(err.value)
    assert msg.startswith(f"Config.{name} must be ") and repr(value) in msg and "\n" not in msg


def test_cross_field_and_replace_are_checked():
    with pytest.raises(ValueError, match="update_ratio_low"):
        lossprobe.Config(update_ratio_low=0.5, update_ratio_high=0.1)
    with pytest.raises(ValueError, match="Config.window"):
        dataclasses.replace(lossprobe.Config(), window=0)


def test_good_values_pass_unchanged():
    import numpy as np
    cfg = lossprobe.Config(window=8, flush_every=np.int64(5), explode_factor=100, dead_fraction=1,
                           on_critical="raise", extra={"k": 1})
    assert (cfg.window, cfg.flush_every, cfg.explode_factor, cfg.dead_fraction) == (8, 5, 100, 1)
    assert lossprobe.Config() == lossprobe.Config(**lossprobe.Config().to_dict())


def test_sinks_accepts_one_name_or_one_sink():
    model = mlp()
    probe = lossprobe.attach(model, sinks="console")
    try:
        assert [type(s) for s in probe.sinks] == [ConsoleSink]
    finally:
        probe.detach()
    sink = ConsoleSink()
    with lossprobe.attach(model, sinks=sink) as probe:
        assert probe.sinks == [sink]
    with pytest.raises(ValueError, match="unknown sink 'consol'"):
        lossprobe.attach(model, sinks="consol")
