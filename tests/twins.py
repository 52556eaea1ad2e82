"""What the corrected twins share across frameworks: their name, and the test that they learn.

A *corrected twin* is a planted-fault scenario with its one mistake fixed; it must end with
no warning or critical finding, and it must learn (a run that does not learn is no sound run,
and its silence proves nothing). Twins are named ``twin/<fault scenario>`` in the PyTorch zoo
(``tests/zoo``), the TensorFlow and Paddle suites and the accuracy runners.

Framework-free (numpy only), so every framework's tests and runner judge with the same
statistic::

    from twins import TWIN, loss_fell
    fell = loss_fell(probe.history.loss_sketch()[1])
    fell.ok, fell.describe()          # True "loss 2.31 -> 0.142"

:func:`loss_fell` is the real-program corpus's test (``benchmarks/realworld/run.py:learns``)
on a probe's own loss outline: the median of the last tenth at most ``below`` times the
median of the first twentieth (at least 3 points each).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

TWIN = "twin/"       # name prefix of a corrected twin: "twin/<the fault scenario's name>"
LEARNS_BELOW = 0.7


class LossFell(NamedTuple):
    ok: bool
    head: float    # median of the first twentieth of the finite losses
    tail: float    # median of the last tenth

    def describe(self) -> str:
        return f"loss {self.head:.3g} -> {self.tail:.3g}"


def loss_fell(losses: Sequence[float], below: float = LEARNS_BELOW) -> LossFell:
    """Whether the finite ``losses`` (oldest first) fell to at most ``below`` of where they began."""
    y = np.asarray(losses, dtype=float)
    y = y[np.isfinite(y)]
    if y.size < 6:
        return LossFell(False, float("nan"), float("nan"))
    head = float(np.median(y[: max(3, y.size // 20)]))
    tail = float(np.median(y[-max(3, y.size // 10):]))
    return LossFell(head > 0 and tail <= below * head, head, tail)


class TwinAlarm(AssertionError):
    """A corrected twin got a warning or critical finding. The twin tests raise it for an alarm
    and nothing else, so ``pytest.mark.xfail(strict=True, raises=TwinAlarm, reason=...)`` marks a
    known alarm without also excusing a twin that stopped learning or crashed."""


def assert_sound_twin(probe) -> None:
    """A twin's contract on a finished probe: its loss fell (else ``AssertionError``) and it has
    no warning or critical finding (else :class:`TwinAlarm`)."""
    fell = loss_fell(probe.history.loss_sketch()[1])
    assert fell.ok, f"the twin does not learn ({fell.describe()}): its silence would prove nothing"
    alarms = [f"{f.code}@{f.step} {f.evidence}" for f in probe.findings if f.severity != "info"]
    if alarms:
        raise TwinAlarm("; ".join(alarms))


def twin_param(value, name: str, alarmed: dict[str, str]):
    """A ``pytest.param`` for a twin test, id ``name``: a strict xfail (``raises=TwinAlarm``) when
    ``alarmed`` says the rules alarm this twin today (``name -> the alarm and why``), so the test
    turns red the day they stop, until the entry is removed."""
    import pytest
    marks = [pytest.mark.xfail(strict=True, raises=TwinAlarm, reason=alarmed[name])] if name in alarmed else []
    return pytest.param(value, id=name, marks=marks)
