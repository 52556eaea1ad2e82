"""The fault zoo: small, real PyTorch training scripts, each with one planted fault and the
diagnosis codes it must produce, its corrected twin, and healthy scripts that must produce no
warning.

Each scenario is a plain function ``script(seed) -> Probe``: it trains a small model the
way a user would, with the probe attached, and returns the detached probe. The registry
records what the fault is supposed to produce and when it became visible (its onset),
so :func:`run` can score a run::

    from zoo import load, run
    out = run(load()["dead_relu/mlp_lr_burst_kills_relus"], seed=0)
    out.passed, out.latency            # True {"dead_relu": 59}

Every faulty script takes ``fixed: bool = False``; with ``fixed=True`` it is its *corrected
twin*: the same script with the one planted mistake fixed (the faulty line reads e.g.
``lr=1e-3 if fixed else 0.1``). The twin is registered as ``twin/<code>/<script>`` and is
scored like a healthy run (no warning or critical finding) that must also learn: the twins
are the zoo's false-alarm measure::

    twin = load()["twin/dead_relu/mlp_lr_burst_kills_relus"]
    out = run(twin)
    out.passed, out.learned.ok         # silent, and its loss fell

Scenarios live in :mod:`zoo.faults` (one or more per catalog code, each with its twin) and
:mod:`zoo.healthy` (no warning or critical finding allowed).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Union

import torch

from twins import TWIN, LossFell, loss_fell
from lossprobe.catalog import CATALOG

Onset = Union[int, Callable[..., int]]


@dataclass(frozen=True)
class Scenario:
    name: str                    # "<code>/<script>" or "healthy/<script>"
    script: Callable[[int], object]
    expect: tuple[str, ...]      # codes that must appear
    onset: Onset                 # step the fault became visible (or a function of the probe)
    allow: tuple[str, ...] = ()  # other critical codes that are consequences of this fault
    model: str = ""
    fast: bool = False           # part of the CI subset (tests/test_zoo.py)
    silent: bool = False         # healthy run: no warning/critical finding at all
    planted: str = ""            # how the fault is planted (a twin: how it is fixed), one line
    twin_of: str = ""            # a corrected twin: the name of the faulty scenario it fixes

    @property
    def code(self) -> str:
        return self.expect[0] if self.expect else "healthy"

    @property
    def fault_code(self) -> str:
        """The headline code of the fault (a twin: of the fault it corrects)."""
        return self.twin_of.split("/")[0] if self.twin_of else self.code


@dataclass
class Outcome:
    scenario: Scenario
    seed: int
    health: str
    codes: dict[str, str]               # code -> severity of every finding
    first_step: dict[str, int]          # code -> Finding.step (the rule's own onset estimate)
    detected_at: dict[str, int]         # code -> training step at which the probe first reported it
    onset: int
    seconds: float
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)   # criticals not explained by the fault, or any warning on a silent run
    learned: LossFell | None = None     # whether the training loss fell (see twins.loss_fell)

    @property
    def passed(self) -> bool:
        """Expected codes found, nothing unexpected, and a twin's loss fell (a twin that does not
        learn is no sound run: its silence proves nothing)."""
        return not self.missing and not self.unexpected and self.learns

    @property
    def learns(self) -> bool:
        """A twin's training loss fell; other scenarios are not judged on it."""
        return not self.scenario.twin_of or (self.learned is not None and self.learned.ok)

    @property
    def latency(self) -> dict[str, int]:
        """Steps from the fault's onset to the flush at which each expected code was reported."""
        return {c: self.detected_at[c] - self.onset for c in self.scenario.expect if c in self.detected_at}

    @property
    def onset_error(self) -> dict[str, int]:
        """``Finding.step - onset`` for each expected code: how well the finding dates the fault."""
        return {c: self.first_step[c] - self.onset for c in self.scenario.expect if c in self.first_step}

    def describe(self) -> str:
        found = ", ".join(f"{c}@{self.first_step[c]}/{self.detected_at.get(c, '?')}" for c in self.codes) or "-"
        flag = "ok  " if self.passed else "FAIL"
        extra = ""
        if self.missing:
            extra += f" missing={self.missing}"
        if self.unexpected:
            extra += f" unexpected={self.unexpected}"
        if self.scenario.twin_of and self.learned is not None:
            extra += f" {self.learned.describe()}" + ("" if self.learned.ok else " (NOT LEARNING)")
        return f"{flag} {self.scenario.name:<45} onset={self.onset:<4} found: {found}{extra} ({self.seconds:.1f}s)"


SCENARIOS: dict[str, Scenario] = {}
CRITICAL = {c for c, d in CATALOG.items() if d.severity == "critical"}


def _register(s: Scenario) -> None:
    if s.name in SCENARIOS:
        raise KeyError(f"duplicate zoo scenario {s.name}")
    for c in (*s.expect, *s.allow):
        if c not in CATALOG:
            raise KeyError(f"{s.name}: unknown code {c}")
    SCENARIOS[s.name] = s


def fault(*codes: str, onset: Onset, model: str, planted: str, fix: str = "", allow: tuple[str, ...] = (),
          fast: bool = False, silent: bool = False):
    """Register a faulty script that must produce ``codes`` (the first is its headline code),
    and its corrected twin ``script(seed, fixed=True)``, described by ``fix`` (one line: what
    the twin changes). Every fault has a twin, in the CI subset when the fault is; only the
    ``silent`` info-level scenarios (a sound run that must report ``converged``) have no
    mistake to fix."""
    def deco(fn):
        name = f"{codes[0]}/{fn.__name__}"
        _register(Scenario(name, fn, tuple(codes), onset, tuple(allow), model, fast, silent, planted))
        if fix:
            _register(Scenario(f"{TWIN}{name}", functools.partial(fn, fixed=True), (), 0, (), model, fast, True,
                               fix, twin_of=name))
        elif not silent:
            raise ValueError(f"{name}: a faulty script needs its corrected twin (fix=...)")
        return fn
    return deco


def healthy_script(*, model: str, planted: str = "", fast: bool = False):
    """Register a healthy script: it must end with no warning or critical finding."""
    def deco(fn):
        _register(Scenario(f"healthy/{fn.__name__}", fn, (), 0, (), model, fast, True, planted))
        return fn
    return deco


def run(s: Scenario, seed: int = 0) -> Outcome:
    """Run one scenario on one CPU thread and score it."""
    from .common import detection_log
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        probe = s.script(seed)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    findings = probe.findings
    codes = {f.code: f.severity for f in findings}
    first = {f.code: int(f.step) for f in findings}
    log = detection_log(probe).first_seen
    detected_at = {c: int(log.get(c, probe.step)) for c in codes}
    onset = int(s.onset(probe)) if callable(s.onset) else int(s.onset)
    missing = [c for c in s.expect if c not in codes]
    if s.silent:  # a warning that cleared and stayed clear (resolved) is not held against it
        unexpected = [f.code for f in findings if f.severity != "info" and not f.resolved and f.code not in s.expect]
    else:
        unexpected = [c for c, sev in codes.items()
                      if sev == "critical" and c not in s.expect and c not in s.allow]
    learned = loss_fell(probe.history.loss_sketch()[1])
    return Outcome(s, seed, probe.health, codes, first, detected_at, onset, seconds, missing, unexpected, learned)


def crashed(s: Scenario, seed: int, exc: BaseException) -> Outcome:
    """The outcome of a script that raised: every expected code missing, and an alarm."""
    return Outcome(s, seed, "crashed", {}, {}, {}, 0, 0.0, list(s.expect), [f"crash: {type(exc).__name__}"])


def load() -> dict[str, Scenario]:
    """Import the scenario modules (which register themselves) and return the registry."""
    from . import faults, faults_setup, healthy  # noqa: F401
    return SCENARIOS
