"""Where a flush's host work runs, and when the rules run.

* :class:`Worker`: one daemon thread that processes flushes in order (decoding, rules,
  sinks), overlapping the training thread's next steps; ``drain()`` waits for it
  (bounded: a stuck sink cannot hang training for ever).
* :class:`RuleSchedule`: the rules run every ``rules_every`` flushed steps, and at once
  when a flush holds a non-finite loss, gradient or input.

Example::

    w = Worker(on_error=lambda what, exc: print(what, exc))
    w.submit(print, "hello")
    w.drain(); w.stop()
"""
from __future__ import annotations

import math
import queue
import threading
import time
from typing import Callable

import numpy as np

from .record import StepRecord


def yield_gil() -> None:
    """Let a waiting training thread take the interpreter now. Without this, a worker busy
    for milliseconds holds it for up to the switch interval (5 ms) while the training thread,
    back from a device op, waits."""
    time.sleep(0)


class Worker:
    """Runs submitted callables in order on one daemon thread. ``on_error(what, exc)`` is
    told about an exception (the worker goes on); ``on_slow(msg)`` when a drain gives up."""

    def __init__(self, on_error: Callable[[str, BaseException], None],
                 on_slow: Callable[[str], None] | None = None, drain_timeout: float = 60.0):
        self.on_error = on_error
        self.on_slow = on_slow
        self.queue: queue.Queue = queue.Queue()
        self.drain_timeout = drain_timeout
        self.thread = threading.Thread(target=self._run, name="lossprobe-flush", daemon=True)
        self.thread.start()

    def here(self) -> bool:
        """Is the caller this worker's thread?"""
        return threading.current_thread() is self.thread

    def submit(self, fn, *args) -> None:
        self.queue.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                fn, args = item
                try:
                    fn(*args)
                except Exception as exc:
                    self.on_error("flush processing", exc)
            finally:
                self.queue.task_done()

    def drain(self) -> None:
        if self.here():
            return
        deadline = time.monotonic() + self.drain_timeout
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self.on_slow is not None:
                        self.on_slow("flush processing is taking too long; reading what is done")
                    return
                self.queue.all_tasks_done.wait(min(left, 0.5))

    def stop(self) -> None:
        self.drain()
        self.queue.put(None)
        self.thread.join(timeout=5)


class RuleSchedule:
    """Say when the rules are due: every ``every`` flushed steps, or now for urgent records."""

    def __init__(self, every: int):
        self.every = every
        self._since = 0

    def due(self, records: list[StepRecord]) -> bool:
        self._since += len(records)
        if self._since >= self.every or urgent(records):
            self._since = 0
            return True
        return False


def urgent(records: list[StepRecord]) -> bool:
    """A non-finite loss, gradient or input: run the rules now, not at the next rules_every."""
    for r in records:
        if (r.loss_seen and not math.isfinite(r.loss)) or (r.input_nonfinite > 0) or (
                not math.isnan(r.grad_norm) and not math.isfinite(r.grad_norm)):
            return True
        measured = ~r.param_grad_missing & ~r.param_grad_unmeasured if r.param_grad_unmeasured.size \
            else ~r.param_grad_missing
        g = r.param_grad_norms[measured] if r.param_grad_norms.size else r.param_grad_norms
        # a row that is all NaN means "not measured on this step"; any Inf, or NaN beside
        # finite values, is a gradient that broke
        if g.size and not np.isfinite(g).all() and not np.isnan(g).all():
            return True
    return False
