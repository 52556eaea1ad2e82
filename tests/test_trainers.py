"""Trainer callbacks on tiny real models: PyTorch Lightning (digits MLP) and Hugging Face
``transformers.Trainer`` (a 2-layer BERT built from a config: no downloads). Each diagnoses a
planted fault, stays quiet on a healthy run, and publishes into the run the trainer's own
MLflow reporting uses (a local sqlite store)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import lossprobe
from torch_helpers import X, Y

# installed by the test extra (lightning, transformers, accelerate): a missing one fails, never skips
import lightning.pytorch as pl  # noqa: E402
from lossprobe.integrations.lightning import LossProbeCallback as LightningProbe  # noqa: E402
from lossprobe.integrations.transformers import LossProbeCallback as HFProbe  # noqa: E402


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """One sqlite tracking store for the module (creating its tables is the slow part)."""
    import mlflow
    db = f"sqlite:///{tmp_path_factory.mktemp('trainers') / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.MlflowClient(db).search_experiments()   # creates the schema once
    yield db
    mlflow.set_tracking_uri(previous)


def _runs(db: str, experiment: str):
    import mlflow
    client = mlflow.MlflowClient(db)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


# -- PyTorch Lightning -----------------------------------------------------------------
class Digits(pl.LightningModule):
    """A digits classifier with a functional loss (what the callback must hand the probe)."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.nan_at = nan_at

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step == self.nan_at:
            x = x.clone()
            x[0, 0] = float("nan")          # one corrupt sample
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _fit(module, callback, logger=False, steps=120):
    torch.manual_seed(0)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[:1400], Y[:1400]), batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[1400:], Y[1400:]), batch_size=200)
    trainer = pl.Trainer(max_steps=steps, val_check_interval=20, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         accelerator="cpu", devices=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train, val)
    return trainer


def test_lightning_healthy_run_captures_loss_and_val_loss():
    cb = LightningProbe(config=lossprobe.Config(flush_every=10), sinks=[])
    _fit(Digits(), cb)
    p = cb.probe
    assert p._closed and p.health == "healthy", [f.code for f in p.findings]
    assert p.history.n_steps == 120
    loss = p.history.series("loss")
    assert (p.history.series("loss_seen") == 1).all() and loss[:10].mean() > 2 * loss[-10:].mean()
    steps, val = p.history.val_sketch()
    assert len(val) == 5 and val[-1] < val[0]          # every validation pass, no sanity-check batches
    # grads are read after Lightning's closure ran backward, not before it
    assert not p.history.matrix("param_grad_missing")[0].any()


def test_lightning_fault_is_diagnosed_in_the_loggers_mlflow_run(mlflow_db):
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=mlflow_db)
    cb = LightningProbe(config=lossprobe.Config(flush_every=10))   # default sinks: console + the logger's run
    _fit(Digits(nan_at=40), cb, logger=logger)
    found = {f.code: f for f in cb.probe.findings}
    assert found["nonfinite_inputs"].step == 40
    assert found["nan_loss"].step == 40
    assert found["nonfinite_gradients"].step == 40       # the step's own gradients (read in the closure)
    assert [s.name for s in cb.probe.sinks] == ["console", "mlflow"]
    assert cb.probe.sinks[1].drain(30)
    client, runs = _runs(mlflow_db, "lightning")
    assert [r.info.run_id for r in runs] == [logger.run_id]     # no second run: the logger's own
    run = runs[0]
    assert run.data.tags["lossprobe.health"] == "critical"
    assert run.data.tags["lossprobe.diagnosis.nan_loss"] == "critical"
    assert {"loss", "val_loss", "lossprobe/loss", "lossprobe/grad_norm"} <= set(run.data.metrics)


# -- Hugging Face transformers.Trainer -------------------------------------------------------
def _token_data(n: int, seed: int, labels: str = "ok"):
    """Sequences whose first token gives the class; ``labels='random'`` breaks that link."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, 12), generator=g)
    lab = torch.randint(0, 2, (n,), generator=g)
    ids[:, 0] = lab + 1
    if labels == "random":
        lab = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": i, "labels": y} for i, y in zip(ids, lab)]


def _hf_train(tmp_path, callback, labels="ok", report_to=(), steps=80):
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, num_labels=2, max_position_embeddings=32)
    model = BertForSequenceClassification(cfg)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=16,
                             per_device_eval_batch_size=64, max_steps=steps, learning_rate=3e-3,
                             logging_steps=10, eval_strategy="steps", eval_steps=10, save_strategy="no",
                             report_to=list(report_to), use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_token_data(2048, 0, labels),
                      eval_dataset=_token_data(128, 1, labels), callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return trainer


def test_hf_trainer_healthy_run(tmp_path):
    cb = HFProbe(config=lossprobe.Config(flush_every=10), sinks=[])
    trainer = _hf_train(tmp_path, cb)
    p = cb.probe
    assert p._closed and p.history.n_steps == 80
    # the probe's per-step loss agrees with the Trainer's logged averages
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    loss = p.history.series("loss")
    assert len(logged) == 8 and math.isclose(float(loss[:10].mean()), logged[0], rel_tol=1e-4)
    steps, val = p.history.val_sketch()
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(val) == len(evals) == 8 and val[-1] < 0.1      # one point per evaluation, never two
    codes = {f.code for f in p.findings}
    assert p.health != "critical" and not codes & {"chance_level_loss", "label_problem", "loss_plateau"}


def test_hf_trainer_healthy_run_has_no_warning(tmp_path):
    cb = HFProbe(config=lossprobe.Config(flush_every=10), sinks=[])
    _hf_train(tmp_path, cb)
    assert cb.probe.health == "healthy", [f.code for f in cb.probe.findings]


def test_hf_trainer_random_labels_is_chance_level_in_the_trainers_mlflow_run(tmp_path, mlflow_db, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf")
    cb = HFProbe(config=lossprobe.Config(flush_every=10))   # sinks from report_to: console + mlflow
    _hf_train(tmp_path, cb, labels="random", report_to=["mlflow"])
    found = {f.code: f for f in cb.probe.findings}
    assert "chance_level_loss" in found
    assert found["chance_level_loss"].evidence["classes"] == 2      # ln 2 = 0.6931
    assert [s.name for s in cb.probe.sinks] == ["console", "mlflow"]
    assert cb.probe.sinks[1].drain(30)
    client, runs = _runs(mlflow_db, "hf")
    assert len(runs) == 1                                 # the Trainer's MLflowCallback run, shared
    run = runs[0]
    assert run.data.tags["lossprobe.diagnosis.chance_level_loss"] == "warning"
    assert {"train_loss", "eval_loss", "lossprobe/loss", "lossprobe/val_loss"} <= set(run.data.metrics)
