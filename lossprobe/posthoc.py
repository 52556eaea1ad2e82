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


class HistoryError(ValueError):
    """A history that cannot be read as a loss curve; the message is one line that says why."""


def load_history(source: Any) -> dict[str, list]:
    """Normalise a history source into {"step", "loss", "val_step", "val_loss"} lists.

    Raises :class:`HistoryError` (one line, naming the file) for a missing, unreadable,
    binary, malformed, empty or header-only file, and for a history without a loss column.
    """
    where = ""
    if isinstance(source, (str, Path)):
        where = f"{source}: "
        source = _read_file(Path(source))
    if isinstance(source, (list, tuple)) and source and all(isinstance(r, dict) for r in source):
        source = _columns(source)                      # JSON records: [{"step": 0, "loss": 2.3}, ...]
    if isinstance(source, (list, tuple, np.ndarray)):
        source = {"loss": list(source)}
    if not isinstance(source, dict):
        if where:
            raise HistoryError(f"{where}JSON holds a {type(source).__name__}, not columns or a list of losses")
        raise TypeError(f"diagnose: expected a dict, a list of losses or a CSV/JSON path, got {type(source).__name__}")
    key = next((k for k in LOSS_KEYS if k in source), None)
    if key is None:
        found = ", ".join(repr(k) for k in source) or "none"
        raise HistoryError(f"{where}no loss column (columns: {found}); name the training loss "
                           f"{' or '.join(repr(k) for k in LOSS_KEYS)}")
    loss = [_num(v) for v in source[key]]
    if not any(v is not None for v in loss):
        raise HistoryError(f"{where}the {key!r} column holds no numbers")
    step = [_num(s) for s in source.get("step", range(len(loss)))][: len(loss)]
    if any(s is None or not math.isfinite(s) for s in step):
        raise HistoryError(f"{where}the 'step' column holds a value that is not a step number")
    step = [int(s) for s in step]
    val = source.get("val_loss", source.get("validation_loss", [])) or []
    pairs = [(s, _num(v)) for s, v in zip(source.get("val_step", step if len(val) == len(loss) else []), val)]
    if not pairs and val:
        # validation measured less often: spread its points evenly over the training steps
        idx = np.linspace(0, max(len(step) - 1, 0), len(val)).round().astype(int)
        pairs = [(step[i] if step else int(i), _num(v)) for i, v in zip(idx, val)]
    pairs = [(s, v) for s, v in pairs if v is not None and math.isfinite(v)]
    return {"step": step, "loss": loss, "val_step": [p[0] for p in pairs], "val_loss": [p[1] for p in pairs]}


LOSS_KEYS = ("loss", "train_loss")


def _read_file(p: Path) -> Any:
    """A CSV or JSON file's content (JSON by suffix or by its first character)."""
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise HistoryError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise HistoryError(f"{p}: is a directory, not a CSV/JSON file") from None
    except OSError as exc:
        raise HistoryError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    if b"\0" in data[:4096]:
        raise HistoryError(f"{p}: a binary file, not a CSV/JSON loss history")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HistoryError(f"{p}: not UTF-8 text, not a CSV/JSON loss history") from None
    if not text.strip():
        raise HistoryError(f"{p}: the file is empty")
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise HistoryError(f"{p}: not valid JSON ({exc})") from None
    return _read_csv(p, text)


def _read_csv(p: Path, text: str) -> dict[str, list]:
    rows = [(i, r) for i, r in enumerate(csv.reader(text.splitlines()), start=1) if any(c.strip() for c in r)]
    header = [h.strip() for h in rows[0][1]]
    if len(header) == 1 and not any(k in header for k in LOSS_KEYS):
        for sep in (";", "\t", "|"):
            if sep in header[0]:
                name = {"\t": "tab"}.get(sep, repr(sep))
                raise HistoryError(f"{p}: columns are separated by {name}; lossprobe reads comma-separated CSV")
    if len(rows) == 1:
        raise HistoryError(f"{p}: a header ({', '.join(header)}) but no rows")
    cols: dict[str, list] = {h: [] for h in header}
    for i, r in rows[1:]:
        if len(r) != len(header):
            raise HistoryError(f"{p}: line {i} has {len(r)} fields, the header has {len(header)}")
        for h, v in zip(header, r):
            cols[h].append(v)
    return cols


def _columns(records: list[dict]) -> dict[str, list]:
    keys = list(dict.fromkeys(k for r in records for k in r))
    return {k: [r.get(k) for r in records] for k in keys}


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
