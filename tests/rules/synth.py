"""Synthetic histories for rule unit tests: a rule is a pure function of the history, so its
threshold edges can be tested without training a model.

Example::

    h = synth(120, loss=lambda t: 2.3 * np.exp(-t / 40), n_classes=10, loss_kind="cross_entropy")
    assert run_rule("converged", h) is not None
"""
from __future__ import annotations

from typing import Callable, Union

import numpy as np

from lossprobe import Config
from lossprobe.history import History
from lossprobe.record import PARAM_FIELDS, SCALAR_FIELDS, Facts, Layout, StepRecord
from lossprobe.rules import RULES

Series = Union[Callable[[int], float], np.ndarray, list, float, None]

PARAMS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")
SIZES = (4096, 64, 4096, 64, 640, 10)


def _at(series: Series, t: int, i: int):
    if series is None:
        return None
    if callable(series):
        return series(t)
    if np.isscalar(series):
        return series
    return series[i]


def synth(n: int, *, loss: Series = None, every: int = 1, sampled_every: int = 10, layout: dict | None = None,
          facts: dict | None = None, window: int = 1024, **fields: Series) -> History:
    """A history of ``n`` steps (step numbers 0, every, 2*every, ...).

    ``loss`` and any StepRecord field (``grad_norm=``, ``param_grad_norms=`` with rows of
    len(PARAMS), ``target_min=`` ...) are a constant, a sequence over the steps or a function of
    the step number; a value of None leaves the field unmeasured on that step. Fields named in
    ``SAMPLED`` below are only set every ``sampled_every`` steps, as backends do.
    ``layout``: Layout keyword overrides (``activations``, ``kinds`` ...); ``facts``: what the
    backend learned (``Facts`` fields: ``n_classes``, ``loss_kind``, ``output_activation`` ...).
    """
    lay = dict(framework="synthetic", params=list(PARAMS), param_sizes=list(SIZES),
               is_weight=[p.endswith("weight") for p in PARAMS])
    lay.update(layout or {})
    layout_obj = Layout(**lay)
    h = History(layout_obj, window=window)
    for i in range(n):
        t = i * every
        rec = StepRecord.empty(t, layout_obj)
        v = _at(loss, t, i)
        if v is not None:
            rec.loss, rec.loss_seen = float(v), 1.0
        for name, series in fields.items():
            if name in SAMPLED and t % sampled_every:
                continue
            v = _at(series, t, i)
            if v is None:
                continue
            if name in SCALAR_FIELDS:
                setattr(rec, name, float(v))
            elif name in PARAM_FIELDS or name in ("act_dead", "act_sat", "act_scale"):
                setattr(rec, name, np.asarray(v, float))
            elif name == "param_grad_missing":
                rec.param_grad_missing = np.asarray(v, bool)
            else:
                raise KeyError(f"synth: unknown field {name}")
        h.append(rec)
    if facts is not None:
        h.set_facts(Facts(**facts))
    return h


SAMPLED = {"update_ratios", "param_norms", "act_dead", "act_sat", "act_scale", "target_min", "target_max",
           "target_distinct", "target_is_index", "input_mean", "input_std", "input_abs_max",
           "logit_std", "softmax_saturation", "prob_rows", "logit_abs_max"}


def run_rule(code: str, h: History, **config):
    """The rule's Detection (or None) under a Config with the given overrides."""
    return RULES[code](h, Config(**config))


def noisy(level: Callable[[int], float], sigma: float, seed: int = 0) -> Callable[[int], float]:
    """``level(t)`` plus reproducible Gaussian noise of relative size ``sigma``."""
    rng = np.random.default_rng(seed)
    cache: dict[int, float] = {}

    def f(t: int) -> float:
        if t not in cache:
            cache[t] = level(t) * (1 + sigma * rng.standard_normal())
        return cache[t]
    return f
