"""lossprobe in a PyTorch Lightning Trainer: ``LossProbeCallback``.

Run it (CPU, a few seconds)::

    .venv/bin/python examples/lightning_callback.py                       # healthy
    .venv/bin/python examples/lightning_callback.py --fault nan           # one NaN pixel at step 40
    .venv/bin/python examples/lightning_callback.py --fault lr --mlflow sqlite:////tmp/pl.db

The callback attaches at ``on_train_start`` to the LightningModule, takes the training loss
from ``training_step``'s output and ``val_loss`` from what the module logged. With an
``MLFlowLogger`` (``--mlflow URI``) or a ``WandbLogger`` on the Trainer, lossprobe's tags,
metrics and report go into *that* run, next to the module's own metrics.

``--fault lr``: Adam at lr=0.5 -- the loss jumps and ReLU units die.
"""
from __future__ import annotations

import argparse
import warnings

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn

import lossprobe
from lossprobe.integrations.lightning import LossProbeCallback


class Digits(pl.LightningModule):
    def __init__(self, fault: str = "none"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.fault = fault

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.fault == "nan" and self.global_step == 40:
            x = x.clone()
            x[0, 0] = float("nan")
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.5 if self.fault == "lr" else 3e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fault", choices=["none", "nan", "lr"], default="none")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--mlflow", metavar="URI", help="log with Lightning's MLFlowLogger (e.g. sqlite:////tmp/pl.db)")
    a = ap.parse_args()

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[:1400], y[:1400]), batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[1400:], y[1400:]), batch_size=256)
    logger = False
    if a.mlflow:
        from lightning.pytorch.loggers import MLFlowLogger
        logger = MLFlowLogger(experiment_name="lossprobe-lightning", run_name=f"digits-{a.fault}", tracking_uri=a.mlflow)

    probe_cb = LossProbeCallback(config=lossprobe.Config(flush_every=10))
    trainer = pl.Trainer(max_steps=a.steps, val_check_interval=20, logger=logger, callbacks=[probe_cb],
                         enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu", devices=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Digits(a.fault), train, val)
    print("health:", probe_cb.probe.health, [f.code for f in probe_cb.probe.findings])
    if a.mlflow:
        print(f"MLflow run {logger.run_id}: tags.`lossprobe.health` = '{probe_cb.probe.health}'")


if __name__ == "__main__":
    main()
