"""Inline SVG line plots with readable axes, for the self-contained HTML report (no script).

Linear axes get "nice" ticks (steps of 1, 2 or 5 times a power of ten); log axes get a tick
at each power of ten (with 2 and 5 between them when the range is short), labelled ``0.01``,
``1``, ``1e4`` -- never ``1e4.2``. Vertical markers show where something began.

Example::

    svg = line_plot([Series("train loss", steps, losses, "#1565c0")], "Loss",
                    log_y=spans_decades(losses, 3), markers=[Marker(120, "1", "#c62828", "nan_loss")])
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 40


@dataclass(frozen=True)
class Series:
    name: str
    x: Sequence[float]
    y: Sequence[float | None]      # None or non-finite: a gap
    color: str


@dataclass(frozen=True)
class Marker:
    x: float
    label: str          # a short tag drawn at the top of the line ("1", "2", ...)
    color: str
    title: str          # shown on hover, and what the legend under the plot says


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values (1, 2 or 5 times a power of ten apart) from the last one at or
    below ``lo`` to the first one at or above ``hi``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    k0, k1 = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [float(f"{k * step:.12g}") for k in range(k0, k1 + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks (as values, not exponents) for a log axis over [lo, hi], both > 0: from the last
    tick at or below ``lo`` to the first at or above ``hi``, so both ends are labelled."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1,) if b - a > 2 else (1, 2, 5)
    every = max(1, math.ceil((b - a) / 8))      # at most ~8 labelled powers of ten
    ticks = [float(f"{m * 10.0 ** e:.12g}") for e in range(a, b + every, every) for m in mults]
    below = [t for t in ticks if t <= lo * (1 + 1e-9)]
    above = [t for t in ticks if t >= hi * (1 - 1e-9)]
    start = below[-1] if below else ticks[0]
    end = above[0] if above else ticks[-1]
    return [t for t in ticks if start <= t <= end]


def tick_label(v: float, digits: int = 3) -> str:
    """``0``, ``0.25``, ``1``, ``250``, ``1e4``, ``2e-5``, ``1.5e6``: short and exact enough
    (``digits`` significant digits; never Python's ``1e+04``)."""
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e4:
        return f"{v:.{digits + 1}g}"
    mant, exp = f"{v:.{digits - 1}e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def spans_decades(values: Sequence[float | None], decades: float) -> bool:
    """True when the positive finite values span more than ``decades`` powers of ten
    (and nothing is zero or negative), i.e. a linear axis would flatten most of the curve."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals or min(vals) <= 0:
        return False
    return math.log10(max(vals) / min(vals)) > decades


def line_plot(series: Sequence[Series], title: str, *, log_y: bool = False, markers: Sequence[Marker] = (),
              x_label: str = "step", width: int = WIDTH, height: int = HEIGHT) -> str:
    """An SVG (scales with the page, up to ``width`` px) of the series, with labelled ticks."""
    def ok(y):
        return y is not None and math.isfinite(y) and (not log_y or y > 0)

    pts = [(x, y) for s in series for x, y in zip(s.x, s.y) if ok(y)]
    if not pts:
        return f'<p class="nodata">{html.escape(title)}: no data</p>'
    ty = math.log10 if log_y else (lambda v: v)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 - y0 <= 1e-6 * max(abs(y0), abs(y1)):           # flat: give it some room
        pad = abs(y0) * 0.01 or 1.0
        y0, y1 = (y0 / 2, y1 * 2) if log_y else (y0 - pad, y1 + pad)
    yt = log_ticks(y0, y1) if log_y else nice_ticks(y0, y1)
    if len(yt) >= 2:           # the axis runs from tick to tick, so both ends are labelled
        y0, y1 = yt[0], yt[-1]
    xt = [t for t in nice_ticks(x0, x1, 6) if x0 <= t <= x1]
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM
    ly0, ly1 = ty(y0), ty(y1)

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + ph - (ty(y) - ly0) / (ly1 - ly0) * ph

    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
           f'style="max-width:{width}px" role="img" aria-label="{esc(title)}" data-y="{"log" if log_y else "linear"}">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
           f'<text x="{LEFT}" y="18" class="pt">{esc(title)}{" (log scale)" if log_y else ""}</text>']
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tk ty">{tick_label(t)}</text>')
    for t in xt:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + ph}" y2="{TOP + ph + 4}" class="ax"/>'
                   f'<text x="{x:.1f}" y="{TOP + ph + 16}" text-anchor="middle" class="tk">{tick_label(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" class="ax"/>'
               f'<text x="{LEFT + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" class="tk">{esc(x_label)}</text>')
    for m in markers:
        if x0 <= m.x <= x1:
            x = sx(m.x)
            out.append(f'<g class="marker" data-x="{m.x:g}"><title>{esc(m.title)}</title>'
                       f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="{m.color}" '
                       f'stroke-dasharray="4 3" class="mk"/>'
                       f'<text x="{x + 3:.1f}" y="{TOP + 11}" fill="{m.color}" class="ml">{esc(m.label)}</text></g>')
    for s in series:
        for run in _runs(s, ok):
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
            shape = (f'<polyline fill="none" stroke="{s.color}" stroke-width="1.5" points="{d}">' if len(run) > 1
                     else f'<circle r="2" fill="{s.color}" cx="{d.split(",")[0]}" cy="{d.split(",")[1]}">')
            out.append(shape + f"<title>{esc(s.name)}</title>" + ("</polyline>" if len(run) > 1 else "</circle>"))
    out.append("</svg>")
    legend = [f'<span style="color:{s.color}">&#9632;</span> {esc(s.name)}' for s in series
              if any(ok(y) for y in s.y)]
    legend += [f'<span style="color:{m.color}">&#9482;{esc(m.label)}</span> {esc(m.title)}'
               for m in markers if x0 <= m.x <= x1]
    return f'<figure>{"".join(out)}<figcaption>{" &middot; ".join(legend)}</figcaption></figure>'



def _runs(s: Series, ok) -> list[list[tuple[float, float]]]:
    """The series split at gaps (None / non-finite), so a gap is not drawn across."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(s.x, s.y):
        if ok(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]
