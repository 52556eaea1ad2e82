"""What every backend shares: guarded capture and instance patches that detach undoes.

An exception inside a hook must never reach the user's training: the part that raised
is reported once (through the probe's channel) and switched off; the rest of the capture
goes on.

Example::

    class MyBackend(CaptureGuard):
        framework = "myfw"
        def _hook(self, x):
            self._safe("inputs", self._input_stats, x)
        def start(self, channel):
            self._patch(model, "fit", lambda fit: functools.wraps(fit)(lambda *a, **k: fit(*a, **k)))
        def detach(self):
            self._unpatch()
"""
from __future__ import annotations

from typing import Any, Callable, MutableMapping


def claim(attached: MutableMapping, model: Any) -> None:
    """One probe per model: a clear error for a second ``attach`` (the backend records
    ``attached[model] = self`` when it starts)."""
    if model in attached:
        raise RuntimeError(
            "lossprobe.attach: this model already has a probe attached; call probe.detach() "
            "on the first one (or use it as a context manager) before attaching again.")


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

    def _patch(self, obj: Any, name: str, make: Callable[[Callable], Callable]) -> None:
        """Replace ``obj.name`` by ``make(original)`` on the instance; undone by :meth:`_unpatch`."""
        patches = self.__dict__.setdefault("_patches", [])
        had = name in vars(obj)
        previous = vars(obj).get(name)
        wrapper = make(getattr(obj, name))
        setattr(obj, name, wrapper)
        patches.append((obj, name, had, previous, wrapper))

    def _unpatch(self) -> None:
        """Restore every patched attribute that still holds our wrapper (newest first)."""
        for obj, name, had, previous, wrapper in reversed(self.__dict__.get("_patches", [])):
            try:
                if vars(obj).get(name) is wrapper:
                    if had:
                        setattr(obj, name, previous)
                    else:
                        delattr(obj, name)
            except Exception:
                pass
        self.__dict__["_patches"] = []
