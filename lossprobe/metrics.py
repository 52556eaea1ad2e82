"""Tracker metric rows from StepRecords (names under ``lossprobe/``).

Per-layer series are published for a bounded set of layers: the first, the last and
evenly spaced ones between (``Config.max_layer_metrics``), since a 500-layer model
must not produce 500 charts.

Example::

    rows = metric_rows(records, layout, max_layers=16)   # [(step, {"lossprobe/loss": 0.7, ...})]
"""
from __future__ import annotations

import math

import numpy as np

from .record import Layout, StepRecord


def pick_layers(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def metric_rows(records: list[StepRecord], layout: Layout, max_layers: int = 16) -> list[tuple[int, dict[str, float]]]:
    weights = [i for i, w in enumerate(layout.is_weight) if w] or list(range(len(layout.params)))
    chosen = [weights[i] for i in pick_layers(len(weights), max_layers)]
    acts = pick_layers(len(layout.activations), max_layers)
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
                m[f"lossprobe/grad_norm/{layout.params[i]}"] = float(g)
            u = r.update_ratios[i] if r.update_ratios.size else math.nan
            if not math.isnan(u):
                m[f"lossprobe/update_ratio/{layout.params[i]}"] = float(u)
        if r.update_ratios.size and weights:
            u = r.update_ratios[weights]
            if np.isfinite(u).all():
                m["lossprobe/update_ratio"] = float(np.median(u))
        for j in acts:
            kind = layout.kinds[j]
            name = layout.activations[j]
            if kind == "relu" and not math.isnan(r.act_dead[j]):
                m[f"lossprobe/dead_fraction/{name}"] = float(r.act_dead[j])
            if kind in ("sigmoid", "tanh") and not math.isnan(r.act_sat[j]):
                m[f"lossprobe/saturation/{name}"] = float(r.act_sat[j])
        # non-finite values stay (a NaN loss is the news); each sink maps them to what its tracker stores
        m = {k: float(v) for k, v in m.items()}
        if m:
            out.append((int(r.step), m))
    return out
