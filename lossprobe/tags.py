"""Tracker tags: the contract both MLflow and W&B publish (and `lossprobe tag` back-fills).

Example::

    tracker_tags(probe.findings, probe.health, framework="torch")
    # {"lossprobe.health": "critical", "lossprobe.diagnoses": "exploding_gradients,nan_loss",
    #  "lossprobe.diagnosis.nan_loss": "critical", ...}
"""
from __future__ import annotations

from .findings import Finding
from .rootcause import attribute

PREFIX = "lossprobe"


def tracker_tags(findings: list[Finding], health: str, framework: str | None = None,
                 version: str | None = None) -> dict[str, str]:
    codes = sorted({f.code for f in findings})
    tags = {f"{PREFIX}.health": health, f"{PREFIX}.diagnoses": ",".join(codes)}
    roots = attribute(findings)
    if roots:
        tags[f"{PREFIX}.root_cause"] = roots[0].code
    for f in findings:
        tags[f"{PREFIX}.diagnosis.{f.code}"] = f.severity
    if framework:
        tags[f"{PREFIX}.framework"] = framework
    if version:
        tags[f"{PREFIX}.version"] = version
    return tags
