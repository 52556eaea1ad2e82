"""Post-hoc diagnosis: run the curve rules on a metric history that was never probed.

Accepts a dict (``{"loss": [...], "val_loss": [...], "step": [...], "val_step": [...]}``),
a list of losses, or a path to a CSV/JSON file with such columns.

Example::

    findings = lossprobe.diagnose({"loss": losses, "val_loss": vals})
    [f.code for f in findings]
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .findings import Finding
from .history import History
from .record import Facts, Layout, StepRecord
from .rules import RuleRunner
from .verdict import Verdict

# Rules that only need the loss curves (the rest need tensors a backend measures).
CURVE_CODES = ["nan_loss", "softmax_overflow", "chance_level_loss", "loss_plateau", "loss_divergence",
               "loss_spike", "loss_oscillation", "converged", "overfitting", "validation_anomaly"]


def load_history(source: Any) -> dict[str, list]:
    """Normalise a history source into {"step", "loss", "val_step", "val_loss"} lists."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.suffix.lower() == ".json":
            source = json.loads(p.read_text())
        else:
            with p.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            cols: dict[str, list] = {}
            for r in rows:
                for k, v in r.items():
                    cols.setdefault(k.strip(), []).append(_num(v))
            source = cols
    if isinstance(source, (list, tuple, np.ndarray)):
        source = {"loss": list(source)}
    if not isinstance(source, dict):
        raise TypeError(f"diagnose: expected a dict, a list of losses or a CSV/JSON path, got {type(source).__name__}")
    loss = [_num(v) for v in source.get("loss", source.get("train_loss", []))]
    step = [int(s) for s in source.get("step", range(len(loss)))][: len(loss)]
    val = source.get("val_loss", source.get("validation_loss", [])) or []
    pairs = [(s, _num(v)) for s, v in zip(source.get("val_step", step if len(val) == len(loss) else []), val)]
    if not pairs and val:
        # validation measured less often: spread its points evenly over the training steps
        idx = np.linspace(0, max(len(step) - 1, 0), len(val)).round().astype(int)
        pairs = [(step[i] if step else int(i), _num(v)) for i, v in zip(idx, val)]
    pairs = [(s, v) for s, v in pairs if v is not None and math.isfinite(v)]
    return {"step": step, "loss": loss, "val_step": [p[0] for p in pairs], "val_loss": [p[1] for p in pairs]}


def _num(v) -> float | None:
    """A float; None for an empty or unparsable cell (not measured, unlike a real 'nan')."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def diagnose(source: Any, *, n_classes: int = 0, config: Config | None = None) -> list[Finding]:
    """Findings for a loss (and validation-loss) history alone."""
    cfg = config or Config()
    hist = load_history(source)
    layout = Layout(framework="posthoc")
    h = History(layout, window=max(cfg.window, len(hist["loss"])), facts=Facts(n_classes=n_classes))
    for s, l in zip(hist["step"], hist["loss"]):
        rec = StepRecord.empty(int(s), layout)
        if l is not None:
            rec.loss, rec.loss_seen = l, 1.0
        h.append(rec)
    for s, v in zip(hist["val_step"], hist["val_loss"]):
        h.add_val(int(s), v)
    verdict = Verdict()
    verdict.apply(RuleRunner(CURVE_CODES).run(h, cfg), h.last_step, final=True)
    return sorted(verdict.findings(), key=lambda f: (f.severity != "critical", f.step))
