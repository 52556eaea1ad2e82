"""Diagnosis rules: each a small pure function ``(History, Config) -> Detection | None``.

One module per family; a rule registers itself under the catalog code it emits::

    @rule("nan_loss")
    def nan_loss(h: History, cfg: Config) -> Detection | None: ...

``run_rules(history, config)`` evaluates every registered rule; an exception inside
one rule is reported once and that rule is switched off (it never breaks training).
"""
from __future__ import annotations

import logging
from typing import Callable

from ..catalog import CATALOG
from ..config import Config
from ..findings import Detection
from ..history import History

log = logging.getLogger("lossprobe")
Rule = Callable[[History, Config], "Detection | None"]
RULES: dict[str, Rule] = {}


def rule(code: str) -> Callable[[Rule], Rule]:
    if code not in CATALOG:
        raise KeyError(f"rule for unknown diagnosis code {code!r}: add it to catalog.py first")

    def register(fn: Rule) -> Rule:
        RULES[code] = fn
        return fn
    return register


class RuleRunner:
    """Runs the registered rules, disabling any rule that raises (reported once)."""

    def __init__(self, codes: "list[str] | None" = None):
        self.codes = list(RULES) if codes is None else list(codes)
        self.disabled: dict[str, str] = {}

    def run(self, h: History, cfg: Config, pause: "Callable[[], None] | None" = None) -> list[Detection]:
        """``pause``: called between rules (the probe's worker passes a GIL yield, so the
        training thread never waits a whole evaluation for the interpreter)."""
        out: list[Detection] = []
        for code in self.codes:
            if pause is not None:
                pause()
            if code in self.disabled:
                continue
            try:
                det = RULES[code](h, cfg)
            except Exception as exc:  # a rule bug must never stop training
                self.disabled[code] = f"{type(exc).__name__}: {exc}"
                log.warning("lossprobe: rule %s failed (%s) and is switched off", code, self.disabled[code])
                continue
            if det is not None:
                out.append(det)
        return out


# importing the families registers their rules
from . import numerics, gradients, activations, curves, validation, data, optimizer, setup, distributed  # noqa: E402,F401
