"""lossprobe in a Hugging Face ``transformers.Trainer``: ``LossProbeCallback``.

Run it (CPU, a few seconds; the model is built from a config, nothing is downloaded)::

    .venv/bin/python examples/hf_trainer.py                         # healthy
    .venv/bin/python examples/hf_trainer.py --labels random         # loss stuck at 0.6931
    .venv/bin/python examples/hf_trainer.py --labels random --mlflow sqlite:////tmp/hf.db

A 2-layer BERT classifies token sequences whose first token gives the class. With
``--labels random`` the labels no longer depend on the input: the loss sits at ln 2 = 0.6931
and the probe reports ``chance_level_loss``. The callback reads the per-step loss from the
model's output, ``eval_loss`` from each evaluation, and publishes into the run the Trainer
itself reports to (``report_to=["mlflow"]`` with ``--mlflow``).
"""
from __future__ import annotations

import argparse
import os

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import lossprobe
from lossprobe.integrations.transformers import LossProbeCallback


def token_data(n: int, seed: int, labels: str) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, 12), generator=g)
    lab = torch.randint(0, 2, (n,), generator=g)
    ids[:, 0] = lab + 1
    if labels == "random":
        lab = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": i, "labels": y} for i, y in zip(ids, lab)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", choices=["ok", "random"], default="ok")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--mlflow", metavar="URI", help="report_to=['mlflow'] with this tracking URI")
    ap.add_argument("--out", default="hf-out")
    a = ap.parse_args()
    if a.mlflow:
        os.environ["MLFLOW_TRACKING_URI"] = a.mlflow
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "lossprobe-hf")

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, num_labels=2, max_position_embeddings=32)
    model = BertForSequenceClassification(config)
    args = TrainingArguments(output_dir=a.out, per_device_train_batch_size=16, per_device_eval_batch_size=64,
                             max_steps=a.steps, learning_rate=3e-3, logging_steps=10, eval_strategy="steps",
                             eval_steps=20, save_strategy="no", report_to=["mlflow"] if a.mlflow else [],
                             use_cpu=True, disable_tqdm=True)
    probe_cb = LossProbeCallback(config=lossprobe.Config(flush_every=10))
    trainer = Trainer(model=model, args=args, train_dataset=token_data(2048, 0, a.labels),
                      eval_dataset=token_data(128, 1, a.labels), callbacks=[probe_cb])
    trainer.train()
    print("health:", probe_cb.probe.health, [f.code for f in probe_cb.probe.findings])


if __name__ == "__main__":
    main()
