"""Channel: the one way a backend talks to its probe.

A backend never touches the probe itself (its history, sinks or privates): it is started
with a channel and uses three calls::

    channel.ingest(Flush(decode=..., val_points=..., facts=...))  # a flush: decoded off the training thread
    channel.boundary()             # a step boundary on the training thread: queued sink updates
                                   # are delivered, a pending TrainingHealthError is raised
    channel.warn("torch:outputs", "model output holds no tensor; output statistics are off")

``Channel.null()`` is a channel to nowhere (a backend used without a probe).
"""
from __future__ import annotations

from typing import Callable

from .record import Flush


class Channel:
    """Backend -> probe: ``ingest`` a flush, mark a step ``boundary``, ``warn`` once per key."""

    def __init__(self, ingest: Callable[[Flush], None], boundary: Callable[[bool], None],
                 warn: Callable[[str, str], None]):
        self._ingest, self._boundary, self._warn = ingest, boundary, warn

    def ingest(self, flush: Flush) -> None:
        """Hand over one flush (processed in order, on the probe's worker thread or inline)."""
        self._ingest(flush)

    def boundary(self, raise_pending: bool = True) -> None:
        """A step boundary on the training thread. ``raise_pending=False``: deliver queued
        sink updates only (a place where raising would be out of order)."""
        self._boundary(raise_pending)

    def warn(self, key: str, msg: str) -> None:
        """Report ``msg`` once for ``key`` (through the ``lossprobe`` logger)."""
        self._warn(key, msg)

    @classmethod
    def null(cls) -> "Channel":
        return cls(lambda flush: None, lambda raise_pending: None, lambda key, msg: None)
