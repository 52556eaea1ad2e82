"""Verdict: the findings' lifecycle and the run's health, for a live probe and post-hoc alike.

Rules return :class:`~lossprobe.findings.Detection` objects; a verdict turns the first
detection of a code into a :class:`~lossprobe.findings.Finding`, updates it each time
the rule fires again, marks findings whose rule no longer fires as inactive, keeps
contradictory codes out (:func:`resolve_conflicts`) and says the run's health.

Health forgives transients: a warning whose rule has not fired for ``resolve_steps`` steps
is *resolved* (kept, with its steps, but no longer the run's health), and fires again if
the condition comes back. A critical finding never resolves: a run that produced NaN or
diverged once is not to be trusted, whatever it did afterwards.

Example::

    verdict = Verdict()
    new = verdict.apply(RuleRunner().run(history, config), seen_through=history.last_step)
    verdict.health, [f.code for f in verdict.findings()]
"""
from __future__ import annotations

from .catalog import SEVERITY_RANK, worst
from .findings import Detection, Finding
from .rootcause import attribute


def resolve_conflicts(dets: list[Detection]) -> list[Detection]:
    """Keep the verdicts consistent: a converged run has no plateau; a NaN run's curve rules
    (divergence, spike, plateau, oscillation) are noise around the real cause."""
    codes = {d.code for d in dets}
    drop = set()
    if codes & {"softmax_overflow", "zero_gradients", "exploding_gradients", "stale_gradients"}:
        drop |= {"converged"}   # a flat loss there is the fault at work, not a finished run
    if "converged" in codes - drop:
        drop |= {"loss_plateau", "learning_rate_too_low"}
    if "nan_loss" in codes:
        drop |= {"loss_plateau", "loss_oscillation", "converged"}
    if "loss_divergence" in codes:
        drop |= {"loss_plateau"}
    if "chance_level_loss" in codes:
        drop |= {"converged", "loss_plateau"}  # the plateau at ln(C) is the chance-level finding
    if "learning_rate_too_low" in codes and _only_unmoved(dets):
        # tensors that get a gradient, sit in the optimizer and still never move: the step size
        drop |= {"frozen_parameters"}
    elif codes & {"dead_relu", "vanishing_gradients", "frozen_parameters"}:
        # tiny updates there come from gradients that do not arrive, not from the learning rate
        drop |= {"learning_rate_too_low"}
    return [d for d in dets if d.code not in drop]


def _only_unmoved(dets: list[Detection]) -> bool:
    """frozen_parameters found only tensors that have a gradient and are in the optimizer yet
    never move (none without a gradient, none left out of the optimizer)."""
    ev = next((d.evidence for d in dets if d.code == "frozen_parameters"), None)
    return ev is not None and not ev.get("never_got_gradient") and not ev.get("not_in_optimizer")


def health_of(findings) -> str:
    """healthy | warning | critical: critical once any critical finding fired; otherwise the
    worst finding that is not resolved (an ``info`` finding such as converged is healthy)."""
    return worst(f.severity for f in findings if f.severity == "critical" or not f.resolved)


class Verdict:
    """Findings by code (never deleted), the run's health, and new criticals to raise.

    ``collect_critical``: keep each new critical finding (once per code) for
    :meth:`take_critical` -- the probe raises them under ``on_critical="raise"``.
    """

    def __init__(self, collect_critical: bool = False, resolve_steps: int = 40):
        self.collect_critical = collect_critical
        self.resolve_steps = resolve_steps
        self._findings: dict[str, Finding] = {}
        self._raised: set[str] = set()
        self._critical: list[Finding] = []
        self.health = "healthy"

    def apply(self, dets: list[Detection], seen_through: int | None = None, final: bool = False) -> list[Finding]:
        """One rule evaluation on data up to step ``seen_through``; returns the new findings."""
        new: list[Finding] = []
        fired = set()
        for det in resolve_conflicts(dets):
            f = self._findings.get(det.code)
            if f is not None and f.severity == "warning" and det.severity == "info":
                continue  # a warning whose rule now finds only advice has cleared (and may resolve)
            fired.add(det.code)
            if det.code in self._findings:
                self._findings[det.code].update(det, seen_through)
            else:
                f = Finding.from_detection(det)
                if seen_through is not None:
                    f.last_step = max(f.last_step, int(seen_through))  # still firing there
                self._findings[det.code] = f
                new.append(f)
        for code, f in self._findings.items():
            if code not in fired:
                f.active = False
                f.resolved = (f.severity != "critical" and seen_through is not None
                              and int(seen_through) - f.last_step >= self.resolve_steps)
            else:
                f.resolved = False
        self.health = health_of(self._findings.values())
        if self.collect_critical and not final:
            crit = [f for f in new if f.severity == "critical" and f.code not in self._raised]
            self._raised.update(f.code for f in crit)
            self._critical.extend(crit)
        return new

    def findings(self) -> list[Finding]:
        """Worst first, then by the step each began; ``caused_by`` set (root-cause attribution)."""
        out = sorted(self._findings.values(), key=lambda f: (-SEVERITY_RANK[f.severity], f.step, f.code))
        attribute(out)
        return out

    def take_critical(self) -> list[Finding]:
        """New critical findings not yet handed out (empty unless ``collect_critical``)."""
        out, self._critical = self._critical, []
        return out
