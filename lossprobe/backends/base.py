"""What every backend shares: guarded capture.

An exception inside a hook must never reach the user's training: the part that raised
is reported once (through the probe's channel) and switched off; the rest of the capture
goes on.

Example::

    class MyBackend(CaptureGuard):
        framework = "myfw"
        def _hook(self, x):
            self._safe("inputs", self._input_stats, x)
"""
from __future__ import annotations

from typing import Any, Callable


class CaptureGuard:
    framework = ""
    channel: Any = None   # lossprobe.channel.Channel, set by start()
    _disabled: set

    def _safe(self, part: str, fn: Callable, *args):
        """``fn(*args)``, or None once ``part`` has failed (reported once, then switched off).
        A TrainingHealthError (``on_critical="raise"``) is the probe's own signal: it passes."""
        if part in self._disabled:
            return None
        try:
            return fn(*args)
        except Exception as exc:
            from ..probe import TrainingHealthError
            if isinstance(exc, TrainingHealthError):
                raise
            self._disabled.add(part)
            self._warn(part, f"{part} capture failed ({type(exc).__name__}: {exc}); switched off, "
                             "training continues")
            return None

    def finish(self) -> None:
        """At detach, before the last flush: close a step that is still open (none by default)."""

    def _warn(self, key: str, msg: str) -> None:
        """Report once per key, through the probe's channel."""
        if self.channel is not None:
            self.channel.warn(f"{self.framework}:{key}", msg)
