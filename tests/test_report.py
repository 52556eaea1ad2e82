"""The HTML report and the console summary, read as a user reads them.

A real torch run whose loss spikes ~1000x in one step must be drawn on a log axis with
readable power-of-ten ticks and a marker where the finding began; root causes (findings built
with ``caused_by`` set, as the attribution will set it) lead, with their consequences under
them; the page stays one file with no script.
"""
from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

import lossprobe
from lossprobe.findings import Detection, Finding
from lossprobe.plot import Series, line_plot, log_ticks, nice_ticks, tick_label
from lossprobe.report import findings_report, render_html
from lossprobe.sinks import ConsoleSink, FinalReport, format_table
from torch_helpers import X, Y


@pytest.fixture(scope="module")
def spiky():
    """200 steps of a small MLP on digits; at step 120 one batch scaled by 1e6 (its update skipped)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[])
    for s in range(200):
        idx = torch.randint(0, len(X), (64,), generator=g)
        x = X[idx] * (1e6 if s == 120 else 1.0)
        loss = loss_fn(model(x), Y[idx])
        opt.zero_grad()
        loss.backward()
        if s == 120:
            opt.zero_grad()
        opt.step()
    probe.detach()
    return probe


class _Svgs(HTMLParser):
    """Each <svg>'s attributes, y tick labels and markers; plus scripts and external references."""

    def __init__(self):
        super().__init__()
        self.svgs, self.scripts, self.refs, self._tick, self.html_attrs, self.meta = [], 0, [], False, {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.html_attrs = a
        if tag == "meta":
            self.meta.append(a)
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            if k in a:
                self.refs.append(a[k])
        if tag == "svg":
            self.svgs.append({"label": a.get("aria-label"), "y": a.get("data-y"), "ticks": [], "markers": []})
        if tag == "g" and "marker" in a.get("class", ""):
            self.svgs[-1]["markers"].append(float(a["data-x"]))
        self._tick = tag == "text" and "ty" in a.get("class", "").split()

    def handle_data(self, data):
        if self._tick:
            self.svgs[-1]["ticks"].append(data)
            self._tick = False


def _parse(page: str) -> _Svgs:
    p = _Svgs()
    p.feed(page)
    return p


def test_spiky_loss_gets_a_log_axis_with_readable_ticks_and_markers(spiky):
    spike = next(f for f in spiky.findings if f.code == "loss_spike")
    assert spike.step == 120
    _, losses = spiky.history.loss_sketch()
    assert losses.max() / losses.min() > 1e4          # the plant: more than three decades
    page = spiky.html()
    doc = _parse(page)
    loss = next(s for s in doc.svgs if s["label"] == "Loss")
    assert loss["y"] == "log"
    # every labelled tick is a power of ten (1, 10, 100, 0.1, 1e4 ...), never "1e4.2"
    assert len(loss["ticks"]) >= 3
    for t in loss["ticks"]:
        assert re.fullmatch(r"1(0*)|0\.0*1|1e-?\d+", t), t
    assert [float(t) for t in loss["ticks"]] == sorted(float(t) for t in loss["ticks"])
    # a marker where each finding began, in every plot that spans its step
    for s in doc.svgs:
        assert spike.step in s["markers"], s["label"]
    assert {f.step for f in spiky.findings} <= set(loss["markers"])
    # the per-layer gradient-norm plot, with readable layer names
    layers = next(s for s in doc.svgs if s["label"].startswith("Gradient norm per layer"))
    assert layers["y"] == "log" and layers["ticks"]
    assert "0.Linear.weight" in page and "2.Linear.weight" in page


def test_page_is_self_contained_and_declares_language_and_viewport(spiky):
    page = spiky.html()
    doc = _parse(page)
    assert doc.scripts == 0 and doc.refs == []
    assert doc.html_attrs.get("lang") == "en"
    assert any(m.get("name") == "viewport" and "width=device-width" in m.get("content", "") for m in doc.meta)
    assert "{'" not in page and "': " not in page         # evidence is a table, not a Python dict
    assert '<table class="ev">' in page and "<th>median_before</th>" in page


def test_a_smooth_loss_stays_linear_with_round_ticks():
    steps = list(range(100))
    svg = line_plot([Series("loss", steps, [2.3 - 0.01 * s for s in steps], "#000")], "Loss")
    doc = _parse(svg)
    (loss,) = doc.svgs
    assert loss["y"] == "linear" and loss["ticks"] == ["1", "1.5", "2", "2.5"]


@pytest.mark.parametrize("lo, hi", [(0.0123, 2.47), (-3.0, 7.0), (0.0, 299.0), (0.198, 0.202), (1e5, 3e5)])
def test_linear_ticks_are_round_cover_the_range_and_read_distinctly(lo, hi):
    t = nice_ticks(lo, hi)
    assert t[0] <= lo and t[-1] >= hi and 3 <= len(t) <= 8
    gaps = {round(b - a, 12) for a, b in zip(t, t[1:])}
    assert len(gaps) == 1
    labels = [tick_label(v) for v in t]
    assert len(set(labels)) == len(labels) and not any("e+" in x for x in labels)


@pytest.mark.parametrize("lo, hi", [(0.12, 1.3), (0.05, 2.5e5), (1e-12, 1e10), (5.0, 5.5)])
def test_log_ticks_cover_the_range(lo, hi):
    t = log_ticks(lo, hi)
    assert t[0] <= lo and t[-1] >= hi and len(t) <= 12
    assert all(re.fullmatch(r"[125](e-?\d+)?|0\.0*[125]|[125]0*", tick_label(v)) for v in t), [tick_label(v) for v in t]


# -- root causes lead -------------------------------------------------------------------

def _finding(code, step, caused_by=None, resolved=False, **evidence):
    f = Finding.from_detection(Detection(code, step, evidence or {"value": 1.0}))
    f.caused_by, f.resolved, f.last_step = caused_by, resolved, step + 40
    f.active = not resolved
    return f


@pytest.fixture
def explained():
    """A learning rate too high that explains dead ReLUs and a plateau; an independent
    unshuffled loader; over-regularisation that resolved early (nothing here explains it, and
    it explains nothing that began after it cleared); the run converged at the end. The
    ``caused_by`` set here is what :func:`lossprobe.rootcause.attribute` sets from the causal
    model, which recomputes it."""
    return [
        _finding("dead_relu", 40, "learning_rate_too_high", layers={"1.ReLU": 1.0}),
        _finding("learning_rate_too_high", 12, median_update_ratio=0.8),
        _finding("over_regularization", 30, resolved=True, shrunk_by=0.4),
        _finding("loss_plateau", 80, "learning_rate_too_high"),
        _finding("unshuffled_data", 60, distinct_ratio=0.1),
        _finding("converged", 250),
    ]


def _report(findings):
    curve = {"step": [0, 100, 200], "value": [2.3, 1.0, 0.5]}
    return {"framework": "torch", "steps_seen": 300, "lossprobe_version": lossprobe.__version__,
            **findings_report(findings, "warning"),
            "curves": {"loss": curve, "val_loss": {"step": [], "value": []}, "grad_norm": curve,
                       "layer_grad_norm": {"step": [], "layers": {}}}}


def test_report_dict_orders_by_root_cause(explained):
    rep = _report(explained)
    assert [rc["code"] for rc in rep["root_causes"]] == ["learning_rate_too_high", "unshuffled_data"]
    assert rep["fix_first"] == rep["root_causes"][0]["fix_first"]
    order = [(f["code"], f["depth"], f["status"]) for f in rep["findings"]]
    assert order == [("learning_rate_too_high", 0, "active"), ("dead_relu", 1, "active"),
                     ("loss_plateau", 1, "active"), ("unshuffled_data", 0, "active"),
                     ("over_regularization", 0, "resolved"), ("converged", 0, "active")]


def test_html_leads_with_root_causes_and_nests_consequences(explained):
    page = render_html(_report(explained))
    start = page.index("Where to start")
    first, second = page.index("Root cause: <code>learning_rate_too_high"), page.index(
        "Also a root cause: <code>unshuffled_data")
    assert start < first < second < page.index("<h2>Findings")
    lead = page[first:second]
    assert "Fix first:" in lead and "<code>dead_relu</code> (from step 40)" in lead and "loss_plateau" in lead
    assert "over_regularization" not in page[start:page.index("<h2>Findings")]     # resolved: not where to start
    rows = re.findall(r'<tr class="([^"]*)"><td>(?:&#8627; )?<b>(\w+)</b>', page)
    assert rows == [("", "learning_rate_too_high"), ("consequence", "dead_relu"),
                    ("consequence", "loss_plateau"), ("", "unshuffled_data"), ("resolved", "over_regularization"),
                    ("", "converged")]


def test_console_summary_leads_with_root_causes(explained):
    text = format_table(explained, "warning")
    lines = text.splitlines()
    assert lines[0] == "lossprobe: health = warning (2 root causes)"
    codes = [ln.split()[0] for ln in lines[2:8]]
    assert codes == ["learning_rate_too_high", "dead_relu", "loss_plateau", "unshuffled_data", "over_regularization",
                     "converged"]
    assert lines[3].startswith("    dead_relu") and lines[2].startswith("  learning_rate_too_high")
    assert "resolved" in lines[6].split()
    assert "  root cause: learning_rate_too_high - " in text and "    explains: dead_relu, loss_plateau" in text
    assert lines[-1].startswith("  fix first (learning_rate_too_high): ")
    assert sum(ln.startswith("  fix first") for ln in lines) == 1
    # the live line says what explains a new finding
    buf = io.StringIO()
    from lossprobe.sinks import FlushUpdate
    ConsoleSink(buf).on_flush(FlushUpdate([], explained, explained[:1], "warning", "healthy", {}, 40))
    assert "WARNING dead_relu caused by learning_rate_too_high (layers=1.ReLU: 1)" in buf.getvalue()
    buf = io.StringIO()
    ConsoleSink(buf).close(FinalReport({}, "", explained, "warning", {}))
    assert buf.getvalue() == text + "\n"
