"""Tracker metric rows from StepRecords (names under ``lossprobe/``).

Per-layer series are published for a bounded set of layers: the first, the last and
evenly spaced ones between (``Config.max_layer_metrics``), since a 500-layer model
must not produce 500 charts.

Per-layer names keep the layer's path and add its type where the path is a bare index
(``lossprobe/dead_fraction/1.ReLU``, ``lossprobe/grad_norm/0.Linear.weight``).

Example::

    rows = metric_rows(records, layout, max_layers=16)   # [(step, {"lossprobe/loss": 0.7, ...})]
"""
from __future__ import annotations

import math

import numpy as np

from .record import Layout, StepRecord


def layer_label(path: str, type_name: str = "") -> str:
    """A layer's name for people: its path, plus its type where the path ends in a bare
    index, which says nothing about the layer (``"1"``, ReLU -> ``"1.ReLU"``;
    ``"features.3"`` -> ``"features.3.ReLU"``; ``"encoder.fc"`` stays as it is)."""
    last = path.rsplit(".", 1)[-1]
    return f"{path}.{type_name}" if type_name and last.isdigit() else path


def param_label(name: str, owner_type: str = "") -> str:
    """A parameter's name with its layer labelled as in :func:`layer_label`
    (``"0.weight"`` held by a Linear -> ``"0.Linear.weight"``)."""
    owner, dot, leaf = name.rpartition(".")
    return f"{layer_label(owner, owner_type)}.{leaf}" if dot else name


def layer_labels(layout: Layout) -> tuple[list[str], list[str]]:
    """Readable names of the layout's (params, activations), aligned with it."""
    ptypes = layout.param_owner_types or [""] * len(layout.params)
    atypes = layout.activation_types or [""] * len(layout.activations)
    return ([param_label(n, t) for n, t in zip(layout.params, ptypes)],
            [layer_label(n, t) for n, t in zip(layout.activations, atypes)])


def pick_layers(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def metric_rows(records: list[StepRecord], layout: Layout, max_layers: int = 16) -> list[tuple[int, dict[str, float]]]:
    weights = [i for i, w in enumerate(layout.is_weight) if w] or list(range(len(layout.params)))
    chosen = [weights[i] for i in pick_layers(len(weights), max_layers)]
    acts = pick_layers(len(layout.activations), max_layers)
    pnames, anames = layer_labels(layout)
    out = []
    for r in records:
        m: dict[str, float] = {}
        if r.loss_seen:
            m["lossprobe/loss"] = r.loss
        for name in ("grad_norm", "lr", "logit_abs_max"):
            v = getattr(r, name)
            if not math.isnan(v):
                m[f"lossprobe/{name}"] = v
        for i in chosen:
            g = r.param_grad_norms[i] if r.param_grad_norms.size else math.nan
            if not math.isnan(g):
                m[f"lossprobe/grad_norm/{pnames[i]}"] = float(g)
            u = r.update_ratios[i] if r.update_ratios.size else math.nan
            if not math.isnan(u):
                m[f"lossprobe/update_ratio/{pnames[i]}"] = float(u)
        if r.update_ratios.size and weights:
            u = r.update_ratios[weights]
            if np.isfinite(u).all():
                m["lossprobe/update_ratio"] = float(np.median(u))
        for j in acts:
            kind = layout.kinds[j]
            name = anames[j]
            if kind == "relu" and not math.isnan(r.act_dead[j]):
                m[f"lossprobe/dead_fraction/{name}"] = float(r.act_dead[j])
            if kind in ("sigmoid", "tanh") and not math.isnan(r.act_sat[j]):
                m[f"lossprobe/saturation/{name}"] = float(r.act_sat[j])
        # non-finite values stay (a NaN loss is the news); each sink maps them to what its tracker stores
        m = {k: float(v) for k, v in m.items()}
        if m:
            out.append((int(r.step), m))
    return out
