"""Data-parallel rules: rank_divergence, and naming the rank behind a non-finite value.

A backend running under data parallelism (``torch.distributed``) gathers a small
per-rank summary of every flushed step at flush time and keeps it in a
:class:`RankTable` stored at ``history.layout.extra["dist"]``; these rules read it.
A single-process run has no table and the rules here stay silent.

* ``rank_divergence``: one rank's loss sits far from the other ranks' over the recent
  window, by much more than the batch-to-batch noise of the difference.
* ``nan_loss``, ``nonfinite_inputs`` and ``nonfinite_gradients`` keep their own rules;
  this module wraps them so that, under data parallelism, their evidence names the
  rank(s) where the non-finite value appeared first (``evidence["rank"]``,
  ``evidence["ranks"]``). A NaN on rank 3 is then a finding that says "rank 3".

:class:`NoiseScale` (the gradient noise scale of McCandlish et al., 2018) also lives
here: it is host-side arithmetic on squared gradient norms that a backend measured at
two batch sizes, and the batch-size advice is read from it.

Example::

    table = RankTable(world=2, window=256)
    table.append(step=5, rows=[{"loss": 0.4}, {"loss": 2.3}])
    table.view("loss")        # (steps, array of shape (n, world))
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..findings import Detection
from . import RULES, rule
from .stats import MAD_TO_SIGMA

# per-rank columns a backend reports for each step: the loss value (NaN when not measured)
# and flags (1.0 = a non-finite value seen on that rank, 0.0 = clean, NaN = not measured)
RANK_COLUMNS = ("loss", "loss_nonfinite", "input_nonfinite", "output_nonfinite", "grad_nonfinite")


class RankTable:
    """Bounded per-rank history (``window`` steps x ``world`` ranks) of a few scalars.

    Besides the recent window it keeps, for each non-finite column, the first step at
    which any rank reported a non-finite value and which ranks did (whole-run facts:
    the first bad rank must still be known after the window has moved on).
    """

    def __init__(self, world: int, window: int = 1024):
        self.world = int(world)
        self.window = int(window)
        self._steps = np.zeros(self.window, dtype=np.int64)
        self._cols = {c: np.full((self.window, self.world), np.nan) for c in RANK_COLUMNS}
        self.count = 0
        self.first_bad: dict[str, tuple[int, list[int]]] = {}

    def append(self, step: int, rows: list[dict[str, float]]) -> None:
        """One step: ``rows[r]`` holds rank r's values (missing keys = not measured)."""
        i = self.count % self.window
        self._steps[i] = step
        for c in RANK_COLUMNS:
            vals = np.array([float(r.get(c, math.nan)) if r else math.nan for r in rows[:self.world]]
                            + [math.nan] * max(0, self.world - len(rows)))
            self._cols[c][i] = vals
            if c not in self.first_bad:
                bad = _bad_ranks(c, vals)
                if bad:
                    self.first_bad[c] = (int(step), bad)
        self.count += 1

    def view(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values of shape (n, world)), oldest first."""
        n = min(self.count, self.window)
        if self.count <= self.window:
            return self._steps[:n], self._cols[column][:n]
        s = self.count % self.window
        idx = np.r_[s:self.window, 0:s]
        return self._steps[idx], self._cols[column][idx]


def _bad_ranks(column: str, vals: np.ndarray) -> list[int]:
    if column == "loss":  # values, not flags: an unmeasured loss is NaN too
        return []
    return [int(r) for r in np.flatnonzero(np.nan_to_num(vals, nan=0.0) > 0)]


def rank_table(h) -> RankTable | None:
    t = getattr(h, "layout", None) and h.layout.extra.get("dist")
    return t if isinstance(t, RankTable) and t.world > 1 and t.count > 0 else None


# -- rank_divergence ---------------------------------------------------------------
@rule("rank_divergence")
def rank_divergence(h, cfg):
    """One rank's loss far from the others' (median of others), beyond the noise of the gap."""
    t = rank_table(h)
    if t is None:
        return None
    steps, loss = t.view("loss")
    loss, steps = loss[-cfg.curve_window:], steps[-cfg.curve_window:]
    ok = np.isfinite(loss).all(axis=1)
    min_steps = int(cfg.extra.get("rank_min_steps", 10))
    if ok.sum() < min_steps:
        return None
    L, s = loss[ok], steps[ok]
    n, w = L.shape
    level = float(np.median(np.abs(L)))
    rel = float(cfg.extra.get("rank_divergence_rel", 0.3))
    z_min = float(cfg.extra.get("rank_divergence_z", cfg.trend_z))
    best = None
    for r in range(w):
        others = np.median(np.delete(L, r, axis=1), axis=1)
        d = L[:, r] - others
        gap = float(np.median(d))
        noise = MAD_TO_SIGMA * float(np.median(np.abs(d - gap)))
        se = max(noise, 1e-12) / math.sqrt(n)
        if abs(gap) <= rel * max(level, 1e-12) or abs(gap) <= z_min * se:
            continue
        # with two ranks both gaps are equal and opposite: name the rank with the higher
        # loss (a corrupt or mislabelled shard raises the loss far more often than not)
        key = (abs(gap), gap)
        if best is None or key > best[0]:
            best = (key, r, gap, float(np.median(L[:, r])), float(np.median(others)), gap / (se or 1e-12))
    if best is None:
        return None
    _, r, gap, mine, theirs, z = best
    return Detection("rank_divergence", int(s[0]), {
        "rank": r, "rank_loss": mine, "other_ranks_loss": theirs, "gap": gap,
        "gap_z": z, "world_size": w, "steps": n,
        "per_rank_loss": [float(v) for v in np.median(L, axis=0)],
    }, message=f"Rank {r}'s loss ({mine:.4g}) differs from the other ranks' ({theirs:.4g}).")


# -- rank attribution of the non-finite rules -----------------------------------------
_RANK_SOURCES = {
    "nan_loss": ("loss_nonfinite",),
    "nonfinite_inputs": ("input_nonfinite",),
    "nonfinite_gradients": ("grad_nonfinite", "loss_nonfinite", "input_nonfinite"),
}


def _with_rank(code: str, columns: tuple[str, ...]):
    inner = RULES[code]

    def ranked(h, cfg):
        det = inner(h, cfg)
        if det is None:
            return None
        t = rank_table(h)
        if t is None:
            return det
        for c in columns:
            if c in t.first_bad:
                step, ranks = t.first_bad[c]
                det.evidence = {**det.evidence, "rank": ranks[0], "ranks": ranks, "rank_step": step}
                where = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
                det.message = (det.message + " " if det.message else "") + \
                    f"First seen on {where} of {t.world} (step {step})."
                break
        return det

    ranked.__name__ = f"{code}_with_rank"
    ranked.__wrapped__ = inner  # type: ignore[attr-defined]
    return ranked


for _code, _cols in _RANK_SOURCES.items():
    if _code in RULES and not hasattr(RULES[_code], "__wrapped__"):
        RULES[_code] = _with_rank(_code, _cols)


# -- gradient noise scale -------------------------------------------------------------
class NoiseScale:
    """The simple gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al., 2018).

    Feed it, per step, the squared norm of a gradient measured on a small batch
    (``g_small_sq``, batch ``b_small`` samples; when several such gradients exist, their
    mean) and on a big batch (``g_big_sq``, ``b_big`` samples) that contains the small
    ones. Since E|G_B|^2 = |G|^2 + tr(Sigma)/B, the two give unbiased estimates::

        |G|^2     ~ (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
        tr(Sigma) ~ (g_small_sq - g_big_sq) / (1/b_small - 1/b_big)

    Each estimate is noisy (often negative on one step): both are smoothed with a
    bias-corrected exponential moving average *separately*, and the ratio is taken of
    the smoothed values. The result is in samples; compare it with the batch size.

    Example::

        ns = NoiseScale(beta=0.9)
        ns.update(step=10, g_small_sq=4.1, g_big_sq=1.3, b_small=32, b_big=64)
        ns.value, ns.batch, ns.advice()
    """

    def __init__(self, beta: float = 0.9, far: float = 10.0):
        self.beta, self.far = float(beta), float(far)
        self._g2 = self._tr = 0.0
        self._w = 0.0       # sum of EMA weights, for bias correction
        self.n = 0
        self.value = math.nan   # smoothed B_simple (samples)
        self.batch = math.nan   # the big (effective) batch of the latest update
        self.step = -1
        self.source = ""        # "ddp" | "micro-batches"

    def update(self, step: int, g_small_sq: float, g_big_sq: float, b_small: float, b_big: float) -> float:
        vals = (g_small_sq, g_big_sq, b_small, b_big)
        if not all(math.isfinite(v) for v in vals) or b_small <= 0 or b_big <= b_small:
            return math.nan
        g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
        tr = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
        b = self.beta
        self._g2 = b * self._g2 + (1 - b) * g2
        self._tr = b * self._tr + (1 - b) * tr
        self._w = b * self._w + (1 - b)
        self.n += 1
        self.step, self.batch = int(step), float(b_big)
        g2s, trs = self._g2 / self._w, self._tr / self._w
        self.value = trs / g2s if g2s > 0 and trs > 0 else math.nan
        return self.value

    def advice(self, min_updates: int = 10) -> str | None:
        """A sentence when the batch is ``far`` times above or below the noise scale."""
        if self.n < min_updates or not math.isfinite(self.value) or not math.isfinite(self.batch):
            return None
        ratio = self.batch / self.value
        if ratio > self.far:
            return (f"The batch ({self.batch:.0f} samples) is {ratio:.0f}x the gradient noise scale "
                    f"({self.value:.0f}): each step's gradient is already nearly noise-free, so a larger "
                    "batch buys little. A smaller batch (with a proportionally smaller learning rate) "
                    "would reach the same loss with far fewer samples.")
        if ratio < 1.0 / self.far:
            return (f"The batch ({self.batch:.0f} samples) is {1 / ratio:.0f}x below the gradient noise scale "
                    f"({self.value:.0f}): gradients are mostly noise. Raising the batch (and the learning "
                    "rate with it) would cut the number of steps almost proportionally.")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"noise_scale": self.value, "batch": self.batch, "updates": self.n, "step": self.step,
                "source": self.source, "advice": self.advice()}


def noise_scale(h) -> NoiseScale | None:
    ns = getattr(h, "layout", None) and h.layout.extra.get("noise_scale")
    return ns if isinstance(ns, NoiseScale) else None


def _batch_size_rule(h, cfg):
    """Fires when the batch is far above or below the measured gradient noise scale."""
    ns = noise_scale(h)
    if ns is None:
        return None
    text = ns.advice(int(cfg.extra.get("noise_scale_min_updates", 10)))
    if text is None:
        return None
    return Detection(_BATCH_CODE, ns.step, {"noise_scale": ns.value, "batch": ns.batch,
                                            "ratio": ns.batch / ns.value, "source": ns.source}, message=text)


# The batch-size verdict needs a catalog code; it registers itself once the catalog has it.
_BATCH_CODE = "batch_size_mismatch"
from ..catalog import CATALOG as _CATALOG  # noqa: E402

if _BATCH_CODE in _CATALOG:
    rule(_BATCH_CODE)(_batch_size_rule)
