"""What every backend shares: guarded capture.

An exception inside a hook must never reach the user's training: the part that raised
is reported once (through the probe) and switched off; the rest of the capture goes on.

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
    probe: Any = None
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
            if self.probe is not None:
                self.probe._warn_once(f"{self.framework}:{part}", f"{part} capture failed "
                                      f"({type(exc).__name__}: {exc}); switched off, training continues")
            return None
