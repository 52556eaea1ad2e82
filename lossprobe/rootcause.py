"""Root cause first: which finding explains the others.

A fault shows several symptoms (a learning rate far too high kills ReLUs, then the loss sits
at chance). :func:`attribute` groups a run's findings into root causes, each with the
findings it explains under it, so a reader starts with the cause and one fix.

How it decides, from the causal model in :mod:`lossprobe.causes` and the findings' steps:

* a finding *explains* another when the model links its code to the other's (for the form
  and size of both, :data:`~lossprobe.causes.ONLY_WHEN`) and the time fits: a set-up fault
  (:data:`~lossprobe.causes.SETUP`) explains its consequences whenever both are present; any
  other cause must not have begun after its consequence (steps closer than
  :data:`SAME_TIME` do not order two findings, except numeric faults dated to the exact
  step, which the phase of the step orders: the batch, then the loss, then the gradients);
  a cause that acts through the updates (a learning rate, weight decay, stale gradients)
  explains no state already there on the first step; a resolved cause explains only what
  began while it was active; two readings of one stretch of the loss curve
  (:data:`~lossprobe.causes.READINGS`) go together whatever their steps, and so does a cause
  whose rule needs its effect before it can fire (:data:`~lossprobe.causes.DATED_BY_EFFECT`);
  a set-up fault that acts on an effect only through the size of the updates
  (:data:`~lossprobe.causes.THROUGH_STEP_SIZE`) does not explain it while the measured step
  size is out of range for a reason that fault cannot account for (:func:`_screened`);
* a root cause is a finding that nothing else explains (through any chain). Each other
  finding goes under the root that explains it most directly, then the root more of whose
  own findings explain it too, then a fault in the whole model before one in a part of it
  (:func:`~lossprobe.causes.partial_fault`), then by :func:`_claim`; ``caused_by`` is set to
  that root's code. Independent faults stay separate roots;
* when findings explain each other and their steps do not say which came first (the
  learning rate too high and gradients exploding from the same step), each is reported as a
  root with ``confidence="undecided"``, ``alternatives`` naming the others, and a ``why``
  that says which change would decide it; the first of them by :func:`_claim` leads and
  holds what any of them explains;
* info findings (``converged``, advice such as a high update ratio while the loss still
  falls) are neither roots nor consequences;
* a root whose findings have all resolved (cleared and stayed clear) is not reported: where to
  start is among what still counts in the final health. A resolved cause of a finding that
  still counts is reported (the learning-rate burst that killed the ReLUs).

Roots come worst first: by the worst severity in the group, then by how many findings each
explains, then by :func:`_claim`; undecided causes stay together, their leader first.
``attribute(findings)[0]`` is the run's root cause and its ``fix_first`` the run's first fix.

Example::

    for rc in lossprobe.rootcause.attribute(probe.findings):
        print(rc.code, "->", rc.consequences, "| fix first:", rc.fix_first)
        print("  ", rc.why)
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from .catalog import CATALOG, SEVERITY_RANK
from .causes import (CAN_CAUSE, CONFIRM, DATED_BY_EFFECT, READINGS, SETUP, STEP_SIZE, THROUGH_STEP_SIZE,
                     THROUGH_UPDATES, WITHIN_STEPS, layer, link_holds, partial_fault)
from .config import Config
from .findings import Finding


@dataclass(frozen=True)
class RootCause:
    code: str                    # the finding that explains the others
    severity: str
    step: int                    # when it began
    consequences: tuple[str, ...] = ()   # codes of the findings it explains (each has caused_by == code)
    fix_first: str = ""          # the root's first fix
    why: str = ""                # how the cause produced the consequences (or what would decide it)
    confidence: str = "clear"    # "clear" | "undecided" (the evidence does not decide between causes)
    alternatives: tuple[str, ...] = ()   # undecided: the other candidate root causes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["consequences"] = list(self.consequences)
        d["alternatives"] = list(self.alternatives)
        return d


SAME_TIME = Config().activation_every
"""Steps within which two findings' first steps do not say which began first: activation
statistics and update/weight ratios are measured every ``activation_every`` (10) steps, so a
finding built on them is dated to that resolution at best."""

PHASE = {"nonfinite_inputs": 0, "nan_loss": 1, "softmax_overflow": 1, "loss_spike": 1,
         "nonfinite_gradients": 2, "exploding_gradients": 2, "zero_gradients": 2}
"""Codes dated to the exact step (read on every step), with the part of the step that shows
them: 0 the batch, 1 the forward pass and loss, 2 the backward pass. Two of these on the same
step are ordered by it: a NaN in the batch comes before the NaN loss it causes, and a NaN
loss before the NaN gradients backpropagated from it."""

STATE = frozenset({"softmax_overflow", "nan_loss", "nonfinite_gradients", "dead_relu", "saturated_activations",
                   "vanishing_gradients", "zero_gradients"})
"""Codes that describe the network's state on the step they are dated to (its forward and
backward pass). Dated to step 0, the first step the probe sees, such a state was there before
the optimizer's first update, so no cause that acts through the updates produced it."""


def attribute(findings: list[Finding]) -> list[RootCause]:
    """Root causes of a run's warning and critical findings (one finding per code, as a probe
    keeps them), each with the findings it explains; sets ``caused_by`` on those and clears it
    everywhere else. Worst first: ``[0]`` is the run's root cause."""
    for f in findings:
        f.caused_by = None
    serious = [f for f in findings if f.severity != "info"]
    if not serious:
        return []
    screened = _screened(serious)
    edges = {a.code: [b for b in serious if _explains(a, b) and (a.code, b.code) not in screened] for a in serious}
    dist = {a.code: _distances(a.code, edges) for a in serious}
    by_code = {f.code: f for f in serious}

    # a root: whatever explains it (through any chain), it explains in turn
    roots = [f for f in serious
             if all(g.code in dist[f.code] for g in serious if f.code in dist[g.code])]
    root_codes = {r.code for r in roots}
    claim = {r.code: _claim(r, edges) for r in roots}
    # roots that explain each other (the evidence does not order them) act as one: the first
    # by claim leads and takes what any of them explains
    peers = {r.code: sorted((g.code for g in roots if g is r or r.code in dist[g.code]), key=lambda c: claim[c])
             for r in roots}
    leaders = [r for r in roots if peers[r.code][0] == r.code]
    groups: dict[str, list[Finding]] = {r.code: [] for r in roots}
    for f in serious:
        if f.code in root_codes:
            continue
        owner = min((r for r in leaders if any(f.code in dist[c] for c in peers[r.code])),
                    key=lambda r: (min(dist[c].get(f.code, len(serious)) for c in peers[r.code]),
                                   -_support(r, f, edges, dist), partial_fault(r.code, r.evidence), claim[r.code]))
        f.caused_by = owner.code
        groups[owner.code].append(f)

    out = []
    for r in roots:
        if all(f.resolved for f in (r, *groups[r.code])):
            continue
        rivals = tuple(c for c in peers[r.code] if c != r.code)
        members = sorted(groups[r.code], key=lambda f: (dist[r.code][f.code], f.step, _catalog_index(f.code)))
        why = _why(r, members, edges, dist[r.code])
        if rivals:
            why = _undecided(r, rivals, by_code) + (" " + why if members else "")
        out.append(RootCause(r.code, r.severity, r.step, tuple(f.code for f in members),
                             fix_first=r.fixes[0] if r.fixes else "", why=why,
                             confidence="undecided" if rivals else "clear", alternatives=rivals))
    # undecided causes stay together, their leader first, where the leader's group belongs
    out.sort(key=lambda rc: (_priority([by_code[c] for c in peers[rc.code]], groups[peers[rc.code][0]],
                                       claim[peers[rc.code][0]]), claim[rc.code]))
    return out


def _explains(a: Finding, b: Finding) -> bool:
    """The causal model links a to b and the time fits (see the module docstring)."""
    if a is b or not link_holds(a.code, b.code, a.evidence, b.evidence):
        return False
    if a.code in THROUGH_UPDATES and b.code in STATE and b.step <= 0:
        return False  # there before the first update
    if a.resolved and b.step > a.last_step + SAME_TIME:
        return False  # began after the cause had cleared
    if b.step - a.step > WITHIN_STEPS.get((a.code, b.code), math.inf):
        return False  # a link that acts at once: too long after the cause began
    if a.code in SETUP or b.code in SETUP or (a.code, b.code) in READINGS | DATED_BY_EFFECT:
        return True   # a set-up fault holds from the start; readings of one curve stretch go together;
        #               a cause dated by its effect is not ordered by its date
    return _began_before(b, a) is not True


def _began_before(a: Finding, b: Finding) -> bool | None:
    """True when a began before b, False when after, None when the steps do not say."""
    if a.code in PHASE and b.code in PHASE:
        if a.step != b.step:
            return a.step < b.step
        if PHASE[a.code] != PHASE[b.code]:
            return PHASE[a.code] < PHASE[b.code]
        return None
    if abs(a.step - b.step) <= SAME_TIME:
        return None
    return a.step < b.step


def _distances(start: str, edges: dict[str, list[Finding]]) -> dict[str, int]:
    """Links from ``start`` to every finding it explains, directly or through a chain."""
    dist, todo = {}, deque([(start, 0)])
    while todo:
        code, d = todo.popleft()
        for b in edges[code]:
            if b.code not in dist and b.code != start:
                dist[b.code] = d + 1
                todo.append((b.code, d + 1))
    return dist


def _screened(findings: list[Finding]) -> set[tuple[str, str]]:
    """Links screened off by the measured step size.

    Input or target scale changes the dynamics (overshooting, blowing up, crawling) only by
    changing how large each update is relative to the weights
    (:data:`~lossprobe.causes.THROUGH_STEP_SIZE`), and that ratio is measured: a learning
    rate too high or too low. When the set-up fault cannot account for the measured ratio
    (the model, for the size of both, does not link it to that finding: inputs of this scale
    cannot make steps this large, large inputs never make them tiny), the ratio is out of
    range on its own, and given the ratio the set-up fault adds nothing to what the steps do:
    its links through the step size do not hold. Its direct effects (saturated units,
    overflowing logits) stay its own. With the ratio in the range the fault accounts for, or
    not measured, every link holds."""
    steps = [f for f in findings if f.code in STEP_SIZE]
    out = set()
    for a in findings:
        if any(not link_holds(a.code, s.code, a.evidence, s.evidence) for s in steps):
            out |= {(c, e) for c, e in THROUGH_STEP_SIZE if c == a.code}
    return out


def _support(root: Finding, f: Finding, edges: dict[str, list[Finding]], dist: dict[str, dict[str, int]]) -> int:
    """How many of the root and the findings it explains explain ``f`` directly: a plateau
    explained by a learning rate too high and also by the dead ReLUs that rate produced has
    more behind it than one explained by a single other fault."""
    return sum(any(o is f for o in edges[c]) for c in (root.code, *dist[root.code]))


def _catalog_index(code: str) -> int:
    return list(CATALOG).index(code) if code in CATALOG else len(CATALOG)


def _claim(root: Finding, edges: dict[str, list[Finding]]) -> tuple:
    """Between roots with an equal claim on a finding by the evidence (and among causes the
    evidence does not order): a set-up fault (a cause whenever present; its step is only when
    it was measured), then the earliest (steps too close to order two findings for certain
    still lean one way), then the one higher up the chain from mistake to symptom
    (:func:`~lossprobe.causes.layer`), then the worse finding, then the one that explains more
    findings on its own."""
    rank = layer(root.code)
    return (rank > 0, root.step if rank > 0 else 0, rank, -SEVERITY_RANK[root.severity], -len(edges[root.code]),
            _catalog_index(root.code))


def _priority(roots: list[Finding], members: list[Finding], claim: tuple) -> tuple:
    """Where to start: the group (its root, or undecided roots, and what they explain) with the
    worst finding, then the one that explains more."""
    worst = max(SEVERITY_RANK[f.severity] for f in (*roots, *members))
    return (-worst, -len(members), claim)


def _why(root: Finding, members: list[Finding], edges: dict[str, list[Finding]], dist: dict[str, int]) -> str:
    """One sentence: the root, then for each consequence the link that produced it."""
    if not members:
        return f"{root.code} (from step {root.step}) explains no other finding."
    clauses = []
    for f in members:
        d = dist[f.code]
        # the link into f from the root or from a finding one step closer to the root
        parent = root.code if d == 1 else next(
            p for p, outs in edges.items() if dist.get(p) == d - 1 and any(o is f for o in outs))
        clauses.append(f"{CAN_CAUSE[parent][f.code]} ({f.code})")
    head = f"{root.code} (from step {root.step}) explains {_and([f.code for f in members])}"
    return f"{head}: {'; '.join(clauses)}."


def _undecided(root: Finding, rivals: tuple[str, ...], by_code: dict[str, Finding]) -> str:
    """What the evidence leaves open, and the change that would decide it."""
    steps = sorted({root.step, *(by_code[c].step for c in rivals)})
    when = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
    test = CONFIRM.get(root.code, CATALOG[root.code].fixes[0])
    others = "the other" if len(rivals) == 1 else "the others"
    return (f"The evidence does not decide between {_and([root.code, *rivals])}: they began together "
            f"({when}) and each can lead to {others}; {test}: if {_and(list(rivals), 'or')} "
            f"{'goes' if len(rivals) == 1 else 'go'} too, {root.code} is the cause.")


def _and(items: list[str], word: str = "and") -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1]
