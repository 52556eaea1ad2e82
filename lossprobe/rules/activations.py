"""Activation health: dead_relu, saturated_activations, bad_initialization, frozen_batchnorm."""
from __future__ import annotations

import numpy as np

from ..findings import Detection
from . import rule
from .curves import learning_well
from .stats import along


def _persistent(h, field: str, kinds: tuple[str, ...], threshold: float, persist: float):
    """Watched layers of the given kinds whose stat is >= threshold on >= persist of sampled steps."""
    m = h.matrix(field)
    if m.size == 0:
        return []
    out = []
    for j, (name, kind) in enumerate(zip(h.layout.activations, h.layout.kinds)):
        if kind not in kinds or _is_bounded_output(h, j):
            continue
        col = m[:, j]
        ok = np.isfinite(col)
        if ok.sum() < 3:
            continue
        vals = col[ok][-max(3, cfg_window(h)):]
        share = float(np.mean(vals >= threshold))
        if share >= persist:
            onset = int(h.steps()[ok][int(np.argmax(col[ok] >= threshold))])
            out.append((name, float(np.median(vals)), share, onset))
    return out


def _is_bounded_output(h, j: int) -> bool:
    """A sigmoid/tanh/softmax that is the model output: saturating there is the prediction
    being confident, not a fault."""
    return j == h.facts.output_activation_index and h.layout.kinds[j] in ("sigmoid", "tanh", "softmax")


def cfg_window(h) -> int:
    return 3  # sampled points considered: with activation_every=10, the last ~30 steps


@rule("dead_relu")
def dead_relu(h, cfg):
    if h.n_steps < cfg.warmup_steps:
        return None
    layers = _persistent(h, "act_dead", ("relu",), cfg.dead_fraction, cfg.dead_persist)
    if not layers:
        return None
    worst = max(layers, key=lambda r: r[1])
    well = learning_well(h, cfg)
    return Detection("dead_relu", min(r[3] for r in layers), {
        "layers": {n: round(v, 3) for n, v, _, _ in layers}, "worst_layer": worst[0],
        "dead_share": worst[1], "threshold": cfg.dead_fraction},
        message=f"{worst[0]}: {worst[1]:.0%} of units never fire."
        + (" The loss still falls well: advice, not a fault yet." if well else ""),
        severity="info" if well else None)


@rule("saturated_activations")
def saturated_activations(h, cfg):
    if h.n_steps < cfg.warmup_steps:
        return None
    layers = _persistent(h, "act_sat", ("sigmoid", "tanh"), cfg.saturation_fraction, cfg.dead_persist)
    if not layers:
        return None
    worst = max(layers, key=lambda r: r[1])
    well = learning_well(h, cfg)
    return Detection("saturated_activations", min(r[3] for r in layers), {
        "layers": {n: round(v, 3) for n, v, _, _ in layers}, "worst_layer": worst[0],
        "saturated_share": worst[1], "threshold": cfg.saturation_fraction},
        message=" The loss still falls well: advice, not a fault yet." if well else "",
        severity="info" if well else None)


@rule("bad_initialization")
def bad_initialization(h, cfg):
    """Activation scale from first to last hidden layer at the first sampled step.

    With a sound init (He for ReLU, Glorot for tanh) each layer keeps the scale of the
    one before within a small factor; a ratio of 100x over the depth means the init
    multiplies or divides the signal at every layer.
    """
    scale = h.matrix("act_scale")
    kinds = np.asarray(h.layout.kinds)
    hidden = np.array([not _is_bounded_output(h, j) for j in range(kinds.size)], bool)
    cols = np.flatnonzero(np.isin(kinds, ("relu", "tanh", "linear")) & hidden)
    if scale.size == 0 or cols.size < 3 or h.first_step is None:
        return None
    rows = np.flatnonzero(along(np.isfinite(scale[:, cols]), "all", 1))
    if rows.size == 0 or h.steps()[rows[0]] - h.first_step > 2 * cfg.activation_every:
        return None  # only judge the very start of training
    s = scale[rows[0], cols]
    first, last = float(s[0]), float(s[-1])
    if first <= 0:
        return None
    ratio = last / first if last > 0 else 0.0
    if 1 / cfg.init_scale_ratio < ratio < cfg.init_scale_ratio:
        return None
    return Detection("bad_initialization", int(h.steps()[rows[0]]), {
        "first_layer": h.layout.activations[cols[0]], "last_layer": h.layout.activations[cols[-1]],
        "scale_first": first, "scale_last": last, "ratio": ratio,
        "direction": "collapses" if ratio < 1 else "explodes"})


@rule("frozen_batchnorm")
def frozen_batchnorm(h, cfg):
    x = h.series("bn_eval_in_train")
    ok = np.isfinite(x)
    # measured on sampled steps only (one in activation_every): a few samples suffice, the
    # mode of a module is a fact, not a noisy statistic
    if h.n_steps < cfg.warmup_steps or ok.sum() < 3:
        return None
    hit = x[ok] > 0
    if hit[-10:].mean() < 0.5:
        return None
    i = int(np.argmax(hit))
    return Detection("frozen_batchnorm", int(h.steps()[ok][i]), {
        "batchnorm_layers_in_eval": int(np.max(x[ok])), "share_of_steps": float(hit.mean())})
