"""Report rendering: a JSON-serialisable dict, and a self-contained HTML page with SVG plots.

No plotting library and no script: the curves are inline SVG (:mod:`lossprobe.plot`), so the
page opens anywhere (MLflow's artifact viewer, W&B's Html panel, a browser, offline). It reads
as the console does: the root causes first, each with the findings it explains under it and
one fix to try first; then every finding with its evidence as a small table; then the loss
(on a log axis when it spans more than three decades), the global and the per-layer gradient
norms, each with a marker where every finding began.

Example::

    probe.save_report("run.html")
"""
from __future__ import annotations

import html
import math
from typing import Any


from .findings import Finding
from .metrics import layer_labels, pick_layers
from .plot import Marker, Series, line_plot, spans_decades
from .readout import evidence_items, ordered
from .record import Layout
from .rootcause import attribute

LOG_DECADES = 3          # a loss spanning more powers of ten than this is drawn on a log axis
LAYER_LINES = 8          # per-layer gradient-norm lines drawn (first, last, evenly between)
LAYER_POINTS = 400       # points per per-layer line (every k-th step of the recent window)


def _clean(xs) -> list:
    return [None if (v is None or (isinstance(v, float) and not math.isfinite(v))) else float(v) for v in xs]


def _layer_grad_norms(h, layout: Layout) -> dict[str, Any]:
    """Recent per-layer gradient norms of a few weight tensors: {"step": [...], "layers": {name: [...]}}."""
    g = h.matrix("param_grad_norms")
    steps = h.steps()
    if not g.size or not len(steps):
        return {"step": [], "layers": {}}
    weights = [i for i, w in enumerate(layout.is_weight) if w] or list(range(g.shape[1]))
    chosen = [weights[i] for i in pick_layers(len(weights), LAYER_LINES)]
    stride = max(1, math.ceil(len(steps) / LAYER_POINTS))
    names, _ = layer_labels(layout)
    return {"step": steps[::stride].tolist(),
            "layers": {names[i]: _clean(g[::stride, i].tolist()) for i in chosen}}


def findings_report(findings: list[Finding], health: str) -> dict[str, Any]:
    """The result part of a report: health, root causes (each with what it explains), one
    "fix first" for the run, and every finding (root causes first, as :func:`ordered` reads them)."""
    roots = attribute(findings)
    return {
        "health": health,
        "root_causes": [rc.to_dict() for rc in roots],
        "fix_first": roots[0].fix_first if roots else None,
        "findings": [{**row.finding.to_dict(), "status": row.status, "root": row.root, "depth": row.depth}
                     for row in ordered(findings, roots)],
    }


def build_report(probe) -> dict[str, Any]:
    from . import __version__
    h = probe.history
    ls, lv = h.loss_sketch()
    vs, vv = h.val_sketch()
    steps = h.steps()
    return {
        "lossprobe_version": __version__,
        "framework": probe.layout.framework,
        "steps_seen": int(h.n_steps),
        "last_step": probe.step,
        **findings_report(probe.findings, probe.health),
        "tags": probe.tags(),
        "layout": probe.layout.to_dict(),
        "curves": {
            "loss": {"step": ls.tolist(), "value": _clean(lv)},
            "val_loss": {"step": vs.tolist(), "value": _clean(vv)},
            "grad_norm": {"step": steps.tolist(), "value": _clean(h.series("grad_norm"))},
            "layer_grad_norm": _layer_grad_norms(h, probe.layout),
        },
        "config": probe.config.to_dict(),
    }


_SEV_COLOR = {"critical": "#c62828", "warning": "#e65100", "info": "#1565c0", "healthy": "#2e7d32"}
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:16px;max-width:1100px;
color:#222;line-height:1.4}
h1{font-size:1.5em;margin:.2em 0} h2{font-size:1.2em;margin-top:1.4em;border-bottom:1px solid #ddd}
.badge{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-size:.8em;vertical-align:middle}
.meta{color:#555;font-size:.9em}
.root{border-left:4px solid #999;padding:4px 12px;margin:10px 0;background:#fafafa}
.root h3{margin:.2em 0;font-size:1.05em} .root p{margin:.3em 0}
.scroll{overflow-x:auto}
table.f{border-collapse:collapse;width:100%;font-size:13px}
table.f td,table.f th{border:1px solid #ddd;padding:5px;vertical-align:top;text-align:left}
table.f th{background:#f3f3f3}
tr.consequence td:first-child{padding-left:22px}
tr.resolved{color:#777}
table.ev{border-collapse:collapse;font-size:12px;margin-top:4px}
table.ev th,table.ev td{border:none;padding:1px 8px 1px 0;font-weight:normal;background:none}
table.ev th{color:#555;font-family:ui-monospace,monospace}
ol{margin:0;padding-left:18px}
.num{color:#777;font-size:11px}
figure{margin:12px 0} figcaption{font-size:12px;color:#444}
.pt{font-size:13px;font-weight:600} .tk{font-size:11px;fill:#444} .ml{font-size:10px;font-weight:600}
.grid{stroke:#eee} .ax{stroke:#999} .nodata{color:#777;font-style:italic}
"""


def render_html(report: dict[str, Any]) -> str:
    """The report dict as one self-contained HTML page (inline CSS and SVG, no script)."""
    esc = html.escape
    findings = report["findings"]
    health = report["health"]
    number = {f["code"]: i + 1 for i, f in enumerate(findings)}
    markers = [Marker(f["step"], str(number[f["code"]]), _SEV_COLOR.get(f["severity"], "#555"),
                      f'{f["code"]} began at step {f["step"]}') for f in findings]
    c = report["curves"]
    loss = c["loss"]["value"] + c["val_loss"]["value"]
    loss_plot = line_plot([Series("train loss", c["loss"]["step"], c["loss"]["value"], "#1565c0"),
                           Series("validation loss", c["val_loss"]["step"], c["val_loss"]["value"], "#ef6c00")],
                          "Loss", log_y=spans_decades(loss, LOG_DECADES), markers=markers)
    grad_plot = line_plot([Series("global gradient norm", c["grad_norm"]["step"], c["grad_norm"]["value"], "#6a1b9a")],
                          "Global gradient norm (recent window)", log_y=True, markers=markers)
    layers = c.get("layer_grad_norm") or {"step": [], "layers": {}}
    layer_plot = line_plot([Series(name, layers["step"], ys, _PALETTE[i % len(_PALETTE)])
                            for i, (name, ys) in enumerate(layers["layers"].items())],
                           "Gradient norm per layer (recent window)", log_y=True, markers=markers)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lossprobe report: {esc(health)}</title>
<style>{_CSS}</style>
</head><body>
<h1>lossprobe report <span class="badge" style="background:{_SEV_COLOR.get(health, '#555')}">{esc(health)}</span></h1>
<p class="meta">framework: {esc(str(report.get("framework", "-")))} &middot; steps seen: {report.get("steps_seen", "-")}
&middot; lossprobe {esc(str(report.get("lossprobe_version", "")))}</p>
<h2>Where to start</h2>
{_roots_html(report)}
<h2>Findings</h2>
{_findings_html(findings, number)}
<h2>Curves</h2>
<p class="meta">Numbered dashed lines mark the step where each finding began.</p>
{loss_plot}{grad_plot}{layer_plot}
</body></html>
"""


_PALETTE = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457")


def _roots_html(report: dict[str, Any]) -> str:
    esc = html.escape
    roots = report.get("root_causes") or []
    if not roots:
        return "<p>No warning or critical findings: training looks healthy.</p>"
    by_code = {f["code"]: f for f in report["findings"]}
    parts = []
    for i, rc in enumerate(roots):
        f = by_code.get(rc["code"], {})
        explained = [x for x in report["findings"] if x.get("root") == rc["code"] and x.get("depth")]
        color = _SEV_COLOR.get(rc["severity"], "#555")
        lead = "Root cause" if i == 0 else "Also a root cause"
        parts.append(
            f'<div class="root" style="border-color:{color}"><h3>{lead}: <code>{esc(rc["code"])}</code> '
            f'<span style="color:{color}">{esc(rc["severity"])}</span>, from step {rc["step"]}</h3>'
            f'<p>{esc(f.get("message", ""))}</p>'
            + (f'<p><b>Fix first:</b> {esc(rc["fix_first"])}</p>' if rc.get("fix_first") else "")
            + (f'<p>It explains: ' + ", ".join(f'<code>{esc(x["code"])}</code> (from step {x["step"]})'
                                                for x in explained)
               + (f". {esc(rc['why'])}" if rc.get("why") else "") + "</p>" if explained else "")
            + ("<p><i>The evidence does not decide between causes here.</i></p>"
               if rc.get("confidence") == "undecided" else "")
            + "</div>")
    return "".join(parts)


def _findings_html(findings: list[dict[str, Any]], number: dict[str, int]) -> str:
    esc = html.escape
    if not findings:
        return "<p>No findings.</p>"
    rows = []
    for f in findings:
        ev = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in evidence_items(f["evidence"]))
        causes = "".join(f"<li>{esc(x)}</li>" for x in f["causes"])
        fixes = "".join(f"<li>{esc(x)}</li>" for x in f["fixes"])
        cls = " ".join(c for c in ("consequence" if f.get("depth") else "", "resolved" if f.get("resolved") else "") if c)
        under = f'<br><small>caused by <code>{esc(f["caused_by"])}</code></small>' if f.get("caused_by") else ""
        rows.append(
            f'<tr class="{cls}"><td>{"&#8627; " if f.get("depth") else ""}<b>{esc(f["code"])}</b> '
            f'<span class="num">[{number[f["code"]]}]</span>{under}</td>'
            f'<td style="color:{_SEV_COLOR.get(f["severity"], "#000")}">{esc(f["severity"])}</td>'
            f'<td>{esc(f.get("status", ""))}</td>'
            f'<td>{f["step"]}&ndash;{max(f["last_step"], f["step"])}</td>'
            f'<td>{esc(f["message"])}' + (f'<table class="ev">{ev}</table>' if ev else "") + "</td>"
            f"<td><ol>{causes}</ol></td><td><ol>{fixes}</ol></td></tr>")
    return ('<div class="scroll"><table class="f"><tr><th>code</th><th>severity</th><th>status</th><th>steps</th>'
            "<th>what it means, and the evidence</th><th>likely causes</th><th>fixes</th></tr>"
            + "".join(rows) + "</table></div>")
