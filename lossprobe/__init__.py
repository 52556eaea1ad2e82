"""lossprobe: tells you why your training loss will not fall.

Example::

    import lossprobe
    probe = lossprobe.attach(model, optimizer=opt)     # torch, Keras or Paddle
    ...train as usual...
    probe.detach()
    print(probe.health)                                 # healthy | warning | critical
    for f in probe.findings:
        print(f.code, f.step, f.evidence, f.fixes[0])

Post-hoc, on a metric history alone::

    lossprobe.diagnose({"loss": losses, "val_loss": val_losses})
"""
from __future__ import annotations

__version__ = "0.1.0"

from typing import Any, Iterable

from .catalog import CATALOG
from .config import Config
from .findings import Finding
from .probe import Probe, TrainingHealthError
from .sinks import ConsoleSink, Sink

__all__ = ["attach", "diagnose", "Probe", "Finding", "Config", "Sink", "ConsoleSink",
           "TrainingHealthError", "CATALOG", "__version__"]


def attach(model: Any, *, optimizer: Any = None, config: Config | None = None,
           sinks: Iterable[Sink | str] | Sink | str | None = None) -> Probe:
    """Attach a probe to ``model`` and return it.

    ``model``: a ``torch.nn.Module``, a Keras model or a Paddle ``nn.Layer``/``paddle.Model``.
    ``optimizer``: optional; steps are then counted from its ``step()``. Without it the
    probe finds the optimizer that holds the model's parameters at its first step.
    ``sinks``: where findings go: ``"console"`` (default), ``"mlflow"``, ``"wandb"`` or
    :class:`Sink` objects; a list, or one of them alone (``sinks="mlflow"``). Attaching twice to one model raises ``RuntimeError``.
    """
    from .backends import backend_for

    config = config or Config()
    backend = backend_for(model)(model, optimizer=optimizer, config=config)
    probe = Probe(backend.layout, config, sinks)
    backend.start(probe.channel)
    probe._start(backend)
    return probe


def diagnose(history: Any, **kwargs: Any) -> list[Finding]:
    """Run the curve rules on a metric history alone (see :mod:`lossprobe.posthoc`)."""
    from .posthoc import diagnose as _diagnose
    return _diagnose(history, **kwargs)
