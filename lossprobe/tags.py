"""Tracker tags: the contract both MLflow and W&B publish (and `lossprobe tag` back-fills).

Example::

    tracker_tags(probe.findings, probe.health, framework="torch")
    # {"lossprobe.health": "critical", "lossprobe.diagnoses": "exploding_gradients,nan_loss",
    #  "lossprobe.root_cause": "exploding_gradients", "lossprobe.diagnosis.nan_loss": "critical", ...}
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
    # always written, empty when there is none: trackers merge tags, so a cause that resolved
    # must not leave its code behind
    tags[f"{PREFIX}.root_cause"] = roots[0].code if roots else ""
    for f in findings:
        tags[f"{PREFIX}.diagnosis.{f.code}"] = f.severity
    if framework:
        tags[f"{PREFIX}.framework"] = framework
    if version:
        tags[f"{PREFIX}.version"] = version
    return tags
