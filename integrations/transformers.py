"""Hugging Face ``transformers.Trainer``: a ``TrainerCallback`` that attaches a lossprobe.

Example::

    from transformers import Trainer, TrainingArguments
    from lossprobe.integrations.transformers import LossProbeCallback

    probe_cb = LossProbeCallback()
    trainer = Trainer(model=model, args=TrainingArguments(..., report_to=["mlflow"]),
                      train_dataset=train, eval_dataset=val, callbacks=[probe_cb])
    trainer.train()
    print(probe_cb.probe.health, [f.code for f in probe_cb.probe.findings])

What it does:

* at ``on_train_begin`` it attaches to ``trainer.model`` (the unwrapped model the
  callback receives; under DDP every rank attaches and only rank 0 publishes) with the
  Trainer's optimizer (unwrapped from accelerate's ``AcceleratedOptimizer``);
* the training loss of every micro-batch is read from the model output's ``loss`` (a
  forward hook; Hugging Face models compute their loss inside ``forward``), with the
  ``labels`` as targets when they are one per example (sequence classification; token
  labels with ``-100`` padding are not passed). A model that returns no loss (a custom
  ``compute_loss``) falls back to ``logs["loss"]`` from ``on_log``, which is an average
  over ``logging_steps``;
* ``eval_loss`` from ``on_evaluate`` becomes a validation point;
* publishing: without ``sinks=``, the console plus the tracker runs the Trainer itself
  reports to: ``"wandb"`` (the ``wandb.run`` the Trainer's ``WandbCallback`` started) and
  ``"mlflow"`` (the active MLflow run of its ``MLflowCallback``) when they are in
  ``args.report_to``. Add this callback after the Trainer's own (``callbacks=[...]`` does
  that), so their runs exist when the probe opens its sinks;
* ``on_train_end`` detaches the probe (final report, tags).

The Trainer clips gradients (``max_grad_norm``) before ``optimizer.step()``: the probe's
gradient norms are the clipped ones; the Trainer's own ``grad_norm`` log is the raw norm.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable

import torch

import lossprobe
from lossprobe.config import Config
from lossprobe.sinks import Sink

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("lossprobe.integrations.transformers needs transformers: pip install transformers") from exc


def report_to_sinks(args: Any) -> list[str]:
    """The lossprobe sink names matching the Trainer's own ``report_to``."""
    rt = getattr(args, "report_to", None) or []
    rt = [rt] if isinstance(rt, str) else list(rt)
    if "all" in rt:
        rt = ["mlflow", "wandb"]
    return [name for name in ("mlflow", "wandb") if name in rt]


class LossProbeCallback(TrainerCallback):
    """Attach lossprobe to the model a ``transformers.Trainer`` trains.

    ``config``: a :class:`lossprobe.Config`. ``sinks``: where findings go; default the
    console plus the trackers in ``args.report_to`` (``use_report_to=False`` to skip them).
    After training, ``callback.probe`` holds the (detached) probe.
    """

    def __init__(self, config: Config | None = None, sinks: Iterable[Sink | str] | None = None, *,
                 use_report_to: bool = True):
        self.config = config
        self.sinks = None if sinks is None else list(sinks)
        self.use_report_to = use_report_to
        self.probe: lossprobe.Probe | None = None
        self._hook: Any = None
        self._model_loss = False
        self._val_seen = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if model is None or (self.probe is not None and self.probe.attached):
            return
        sinks = self.sinks
        if sinks is None:
            sinks = ["console"] + (report_to_sinks(args) if self.use_report_to else [])
        opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one
        self.probe = lossprobe.attach(model, optimizer=opt if isinstance(opt, torch.optim.Optimizer) else None,
                                      config=self.config, sinks=sinks)
        self._model_loss = False
        self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)

    def _on_forward(self, module: Any, args: Any, kwargs: dict, output: Any) -> None:
        if self.probe is None or not (module.training and torch.is_grad_enabled()):
            return None
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return None
        labels = kwargs.get("labels")
        targets = labels if isinstance(labels, torch.Tensor) and labels.ndim == 1 else None
        self._model_loss = True
        self.probe.observe(loss, targets=targets)
        return None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.probe is None or self._model_loss or not logs or "loss" not in logs:
            return
        self.probe.observe(float(logs["loss"]))  # a custom compute_loss: the logged average

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.probe is not None:
            self._val_seen = self.probe.validation_losses_seen  # evaluation, if any, runs after this

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        if self.probe is None or not self.probe.attached or not metrics or "eval_loss" not in metrics:
            return
        if self.probe.validation_losses_seen > self._val_seen:
            return  # the probe caught the evaluation losses itself (the model's nn.CrossEntropyLoss)
        self.probe.observe(val_loss=float(metrics["eval_loss"]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.probe is not None:
            self.probe.detach()
