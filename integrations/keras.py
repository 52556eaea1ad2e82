"""Keras callback form of lossprobe: attach for one ``fit`` and detach when it ends.

Example::

    from lossprobe.integrations.keras import LossProbeCallback

    cb = LossProbeCallback(sinks=["console"])
    model.fit(x, y, validation_data=(xv, yv), epochs=5, callbacks=[cb])
    print(cb.probe.health, [f.code for f in cb.probe.findings])

The callback is the same probe as ``lossprobe.attach(model)``: it attaches in
``on_train_begin`` (the model is built and compiled by then), lets the TensorFlow backend
re-trace the training step with its in-graph statistics, reads them every
``flush_every`` steps and detaches in ``on_train_end``, so the model leaves ``fit``
exactly as it came in. Each ``fit`` gets a fresh probe (``cb.probe`` is the latest).
Use ``lossprobe.attach`` instead to keep one probe across several ``fit`` calls.
"""
from __future__ import annotations

from typing import Any, Iterable

import keras

import lossprobe
from lossprobe.config import Config
from lossprobe.sinks import Sink


class LossProbeCallback(keras.callbacks.Callback):
    """Diagnose training health during ``model.fit`` (see the module docstring)."""

    def __init__(self, config: Config | None = None, sinks: Iterable[Sink | str] | None = None):
        super().__init__()
        self.config = config
        self.sinks = None if sinks is None else list(sinks)
        self.probe: lossprobe.Probe | None = None
        self._driver: Any = None   # the backend's own fit callback, for this fit

    def on_train_begin(self, logs=None):
        self.probe = lossprobe.attach(self.model, config=self.config, sinks=self.sinks)
        self._driver = self.probe.backend.fit_callback()
        self._driver.set_model(self.model)
        self._driver.set_params(self.params or {})
        self._driver.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        if self._driver is not None:
            self._driver.on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        if self._driver is None:
            return
        try:
            self._driver.on_train_batch_begin(batch, logs)
        except lossprobe.TrainingHealthError:
            # fit stops here without calling on_train_end: leave the model as it came in
            self._driver = None
            self.probe.detach()
            raise

    def on_epoch_end(self, epoch, logs=None):
        if self._driver is not None:
            self._driver.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        if self._driver is None:
            return
        driver, self._driver = self._driver, None
        try:
            driver.on_train_end(logs)
        finally:
            self.probe.detach()
