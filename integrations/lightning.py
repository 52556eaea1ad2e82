"""PyTorch Lightning: a callback that attaches a lossprobe to the LightningModule.

Example::

    import lightning.pytorch as pl
    from lossprobe.integrations.lightning import LossProbeCallback

    probe_cb = LossProbeCallback()                       # console + the Trainer's MLflow/W&B logger
    trainer = pl.Trainer(max_epochs=5, callbacks=[probe_cb], logger=pl.loggers.MLFlowLogger(...))
    trainer.fit(module, train_loader, val_loader)
    print(probe_cb.probe.health, [f.code for f in probe_cb.probe.findings])

What it does:

* at ``on_train_start`` it attaches to the LightningModule (after the sanity check, so
  those validation batches are not counted), with the Trainer's optimizer when there is
  exactly one;
* it hands the probe the loss of every training batch (``outputs["loss"]`` of
  ``training_step``) and the batch's targets when the batch is an ``(x, y)`` pair, and
  the validation loss Lightning logged (``val_loss`` by default, read from
  ``trainer.callback_metrics`` at ``on_validation_end``) unless the probe already saw
  the validation losses itself (an ``nn.Module`` loss in ``validation_step``);
* Lightning runs forward and backward *inside* ``optimizer.step(closure)``: the probe
  reads the gradients when the closure returns (it does so for any closure);
* publishing: without ``sinks=``, the probe reports to the console and to the run of
  the Trainer's ``MLFlowLogger`` or ``WandbLogger`` (same run id, so the lossprobe tags,
  metrics and report sit next to the module's own metrics). Under DDP only rank 0
  publishes (see :mod:`lossprobe.backends.torch_dist`);
* ``on_train_end`` (or an exception) detaches the probe and publishes the final report.

Works with the ``lightning`` package (``lightning.pytorch``) and with the older
``pytorch_lightning``; whichever your code imported is used (``lightning`` first).
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Iterable

import lossprobe
from lossprobe.config import Config
from lossprobe.sinks import Sink


def _callback_base() -> type:
    if "pytorch_lightning" in sys.modules and "lightning" not in sys.modules:
        from pytorch_lightning.callbacks import Callback
        return Callback
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError:  # pragma: no cover - depends on what is installed
        try:
            from pytorch_lightning.callbacks import Callback
        except ImportError as exc:
            raise ImportError("lossprobe.integrations.lightning needs Lightning: pip install lightning") from exc
    return Callback


def logger_sinks(trainer: Any) -> list[Sink]:
    """lossprobe sinks that publish into the runs of the Trainer's MLflow / W&B loggers."""
    out: list[Sink] = []
    if getattr(trainer, "global_rank", 0) != 0:
        return out
    for lg in list(getattr(trainer, "loggers", None) or []):
        kind = type(lg).__name__
        if kind == "MLFlowLogger":
            from lossprobe.integrations.mlflow import MlflowSink
            out.append(MlflowSink(tracking_uri=getattr(lg, "_tracking_uri", None), run_id=lg.run_id))
        elif kind == "WandbLogger":
            from lossprobe.integrations.wandb import WandbSink
            out.append(WandbSink(run=lg.experiment))
    return out


class LossProbeCallback(_callback_base()):
    """Attach lossprobe to the LightningModule a Trainer fits.

    ``config``: a :class:`lossprobe.Config`. ``sinks``: where findings go; default the
    console plus the Trainer's MLflow/W&B logger runs (``use_loggers=False`` to skip
    those). ``val_key``: the ``callback_metrics`` key holding the validation loss.
    After ``fit``, ``callback.probe`` holds the (detached) probe.
    """

    def __init__(self, config: Config | None = None, sinks: Iterable[Sink | str] | None = None, *,
                 use_loggers: bool = True, val_key: str = "val_loss"):
        super().__init__()
        self.config = config
        self.sinks = None if sinks is None else list(sinks)
        self.use_loggers = use_loggers
        self.val_key = val_key
        self.probe: lossprobe.Probe | None = None
        self._val_seen = 0

    # -- lifecycle ----------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is not None and self.probe.attached:
            return
        sinks = self.sinks
        if sinks is None:
            sinks = ["console"] + (logger_sinks(trainer) if self.use_loggers else [])
        opts = list(getattr(trainer, "optimizers", None) or [])
        self.probe = lossprobe.attach(pl_module, optimizer=opts[0] if len(opts) == 1 else None,
                                      config=self.config, sinks=sinks)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is not None:
            self.probe.detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.probe is not None:
            self.probe.detach()

    # -- training -------------------------------------------------------------------
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.probe is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not _is_tensor(loss):
            loss = None
        targets = batch[1] if isinstance(batch, (list, tuple)) and len(batch) >= 2 and _is_tensor(batch[1]) else None
        if loss is not None:
            self.probe.observe(loss, targets=targets)

    # -- validation -------------------------------------------------------------------
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is not None:
            self._val_seen = self.probe.validation_losses_seen

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is None or getattr(trainer, "sanity_checking", False):
            return
        if self.probe.validation_losses_seen > self._val_seen:
            return  # the probe caught the validation losses itself (an nn.Module loss)
        v = (getattr(trainer, "callback_metrics", None) or {}).get(self.val_key)
        if v is not None:
            self.probe.observe(val_loss=v)


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)
