"""Report rendering: a JSON-serialisable dict, and a self-contained HTML page with SVG plots.

No plotting library is needed: the curves are drawn as inline SVG polylines, so the
page opens anywhere (MLflow's artifact viewer, W&B's Html panel, a browser).

Example::

    probe.save_report("run.html")
"""
from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from .rootcause import attribute
from .sinks import format_table


def _clean(xs) -> list:
    return [None if (v is None or (isinstance(v, float) and not math.isfinite(v))) else float(v) for v in xs]


def build_report(probe) -> dict[str, Any]:
    from . import __version__
    h = probe.history
    ls, lv = h.loss_sketch()
    vs, vv = h.val_sketch()
    steps = h.steps()
    gn = h.series("grad_norm")
    roots = attribute(probe.findings)
    return {
        "lossprobe_version": __version__,
        "framework": probe.layout.framework,
        "health": probe.health,
        "steps_seen": int(h.n_steps),
        "last_step": probe.step,
        "findings": [f.to_dict() for f in probe.findings],
        "root_causes": [rc.to_dict() for rc in roots],
        "fix_first": roots[0].fix_first if roots else None,
        "tags": probe.tags(),
        "layout": probe.layout.to_dict(),
        "curves": {
            "loss": {"step": ls.tolist(), "value": _clean(lv)},
            "val_loss": {"step": vs.tolist(), "value": _clean(vv)},
            "grad_norm": {"step": steps.tolist(), "value": _clean(gn)},
        },
        "config": probe.config.to_dict(),
    }


def _svg_plot(series: list[tuple[str, list, list, str]], title: str, log_y: bool = False,
              width: int = 640, height: int = 220) -> str:
    pts_all = [(x, y) for _, xs, ys, _ in series for x, y in zip(xs, ys) if y is not None and (not log_y or y > 0)]
    if not pts_all:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    tf = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs_all = [p[0] for p in pts_all]
    ys_all = [tf(p[1]) for p in pts_all]
    x0, x1 = min(xs_all), max(xs_all) or 1
    y0, y1 = min(ys_all), max(ys_all)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    m = 40
    def sx(x): return m + (x - x0) / (x1 - x0) * (width - 2 * m)
    def sy(y): return height - m + (y0 - tf(y)) / (y1 - y0) * (height - 2 * m)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<rect width="100%" height="100%" fill="#fff" stroke="#ddd"/>',
             f'<text x="{m}" y="18" font-size="13" font-family="sans-serif">{html.escape(title)}{" (log10)" if log_y else ""}</text>']
    for name, xs, ys, color in series:
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if y is not None and (not log_y or y > 0))
        if pts:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"><title>{html.escape(name)}</title></polyline>')
    lab = (lambda v: f"1e{v:.1f}") if log_y else (lambda v: f"{v:.4g}")
    parts.append(f'<text x="2" y="{m}" font-size="10" font-family="sans-serif">{lab(y1)}</text>')
    parts.append(f'<text x="2" y="{height - m}" font-size="10" font-family="sans-serif">{lab(y0)}</text>')
    parts.append(f'<text x="{m}" y="{height - 8}" font-size="10" font-family="sans-serif">step {x0}</text>')
    parts.append(f'<text x="{width - m - 60}" y="{height - 8}" font-size="10" font-family="sans-serif">step {x1}</text>')
    legend = " ".join(f'<tspan fill="{c}">&#9632; {html.escape(n)}</tspan>' for n, _, _, c in series)
    parts.append(f'<text x="{width - 260}" y="18" font-size="11" font-family="sans-serif">{legend}</text>')
    parts.append("</svg>")
    return "".join(parts)


_SEV_COLOR = {"critical": "#c62828", "warning": "#ef6c00", "info": "#1565c0", "healthy": "#2e7d32"}


def render_html(report: dict[str, Any]) -> str:
    c = report["curves"]
    loss_plot = _svg_plot([("train loss", c["loss"]["step"], c["loss"]["value"], "#1565c0"),
                           ("val loss", c["val_loss"]["step"], c["val_loss"]["value"], "#ef6c00")], "Loss")
    grad_plot = _svg_plot([("grad norm", c["grad_norm"]["step"], c["grad_norm"]["value"], "#6a1b9a")],
                          "Global gradient norm (recent window)", log_y=True)
    rows = []
    for f in report["findings"]:
        ev = "<br>".join(f"<code>{html.escape(str(k))}</code> = {html.escape(str(v))}" for k, v in f["evidence"].items())
        causes = "".join(f"<li>{html.escape(x)}</li>" for x in f["causes"])
        fixes = "".join(f"<li>{html.escape(x)}</li>" for x in f["fixes"])
        rows.append(
            f'<tr><td><b>{html.escape(f["code"])}</b></td>'
            f'<td style="color:{_SEV_COLOR.get(f["severity"], "#000")}">{f["severity"]}</td>'
            f'<td>{f["step"]}&ndash;{f["last_step"]}</td><td>{html.escape(f["message"])}<br><small>{ev}</small></td>'
            f'<td><ol>{causes}</ol></td><td><ol>{fixes}</ol></td></tr>')
    table = ("<table><tr><th>code</th><th>severity</th><th>steps</th><th>what and evidence</th>"
             "<th>likely causes</th><th>fixes</th></tr>" + "".join(rows) + "</table>") if rows else "<p>No findings: training looks healthy.</p>"
    health = report["health"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lossprobe report</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ddd;padding:6px;vertical-align:top;font-size:13px}} th{{background:#f5f5f5}}
.badge{{display:inline-block;padding:4px 10px;border-radius:4px;color:#fff;background:{_SEV_COLOR.get(health, '#555')}}}</style>
</head><body>
<h1>lossprobe report <span class="badge">{html.escape(health)}</span></h1>
<p>framework: {html.escape(str(report["framework"]))} &middot; steps seen: {report["steps_seen"]} &middot; lossprobe {html.escape(report["lossprobe_version"])}</p>
<h2>Findings</h2>{table}
<h2>Curves</h2>{loss_plot}<br>{grad_plot}
</body></html>"""
