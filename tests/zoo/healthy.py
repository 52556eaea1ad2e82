"""Healthy training scripts: none may end with a warning or critical finding.

They cover what ordinary, working training looks like: different models (MLP, CNN with
BatchNorm, GRU, LSTM, transformer, regression, autoencoder), optimizers (SGD, momentum,
Nesterov, Adam, AdamW, RMSprop, Adagrad), schedules (step, one-cycle, warm-up + cosine,
reduce-on-plateau), small batches, dropout, input-noise augmentation, label smoothing,
weight decay, gradient clipping, validation through ``model.eval()`` + ``torch.no_grad()``
or ``probe.observe(val_loss=...)``, and a loss handed over with ``probe.observe``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import healthy_script
from .common import (GRUClassifier, SmallCNN, TinyTransformer, attach, batches, digit_images, digit_rows,
                     digits, evaluate, mlp, wave_regression)


@healthy_script(model="mlp", fast=True, planted="Adam 1e-3, validation every 20 steps")
def mlp_adam_with_validation(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digits()
    model = mlp([64, 128, 64, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(240), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@healthy_script(model="mlp", fast=True, planted="SGD + momentum 0.9, StepLR halving every 100 steps, validation")
def mlp_sgd_momentum_steplr(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digits()
    model = mlp([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(300), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if step % 25 == 24:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@healthy_script(model="cnn", fast=True, planted="CNN with BatchNorm, Adam, validation in eval mode")
def cnn_batchnorm_adam(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digit_images()
    model = SmallCNN(batchnorm=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@healthy_script(model="cnn", planted="SGD Nesterov with a one-cycle schedule, batch 32")
def cnn_nesterov_one_cycle(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=300)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(300), batches(Xtr, Ytr, 32, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe


@healthy_script(model="gru", fast=True, planted="GRU, Adam 3e-3, gradient clipping at 1.0, validation")
def gru_adam_clipped(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digit_rows()
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(250), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 24:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@healthy_script(model="transformer", fast=True, planted="AdamW with 30 warm-up steps then cosine decay, validation")
def transformer_warmup_cosine(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digit_rows()
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    total, warm = 300, 30
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(total), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if step % 30 == 29:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@healthy_script(model="regression", planted="MLP regression, Adam, validation on held-out points")
def regression_adam_validation(seed):
    torch.manual_seed(seed)
    X, y = wave_regression(4096, seed)
    Xtr, ytr, Xva, yva = X[:3584], y[:3584], X[3584:], y[3584:]
    model = mlp([4, 64, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(300), batches(Xtr, ytr, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, loss_fn, Xva, yva)
    probe.detach()
    return probe


@healthy_script(model="regression", planted="targets with irreducible noise (std 0.5): the loss settles at a floor")
def regression_noisy_targets(seed):
    torch.manual_seed(seed)
    X, y = wave_regression(4096, seed, noise=0.5)
    Xtr, ytr, Xva, yva = X[:3584], y[:3584], X[3584:], y[3584:]
    model = mlp([4, 64, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(400), batches(Xtr, ytr, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 25 == 24:
            evaluate(model, loss_fn, Xva, yva)
    probe.detach()
    return probe


@healthy_script(model="mlp", fast=True, planted="Gaussian input-noise augmentation, dropout 0.2, RMSprop")
def mlp_noise_augmentation_dropout_rmsprop(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digits()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(300), batches(Xtr, Ytr, 64, seed)):
        x = x + 0.3 * torch.randn_like(x)
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@healthy_script(model="mlp-binary", fast=True, planted="binary even/odd task, BCEWithLogitsLoss, SGD Nesterov")
def bce_binary_nesterov(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digits()
    ttr, tva = (Ytr % 2).float()[:, None], (Yva % 2).float()[:, None]
    model = mlp([64, 64, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = nn.BCEWithLogitsLoss()
    probe = attach(model)
    for step, (x, t) in zip(range(250), batches(Xtr, ttr, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 25 == 24:
            evaluate(model, loss_fn, Xva, tva)
    probe.detach()
    return probe


@healthy_script(model="mlp", fast=True, planted="tanh MLP with Adagrad")
def mlp_tanh_adagrad(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 64, 10], act=nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(250), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@healthy_script(model="mlp", fast=True, planted="batch size 8, plain SGD lr 0.02: noisy but sound")
def mlp_small_batch_sgd(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(400), batches(Xtr, Ytr, 8, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@healthy_script(model="autoencoder", planted="digits autoencoder (64 -> 16 -> 64), MSE reconstruction, Adam")
def autoencoder_reconstruction(seed):
    torch.manual_seed(seed)
    Xtr, _, Xva, _ = digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 64))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, _) in zip(range(300), batches(Xtr, Xtr, 64, seed)):
        loss = loss_fn(model(x), x)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 25 == 24:
            evaluate(model, loss_fn, Xva, Xva)
    probe.detach()
    return probe


@healthy_script(model="mlp", fast=True, planted="functional loss handed over with probe.observe(loss, targets=y); "
                "validation via probe.observe(val_loss=...)")
def mlp_functional_loss_observe(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digits()
    model = mlp([64, 96, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = attach(model)
    for step, (x, y) in zip(range(250), batches(Xtr, Ytr, 64, seed)):
        loss = F.cross_entropy(model(x), y)
        probe.observe(loss, targets=y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 25 == 24:
            model.eval()
            with torch.no_grad():
                val = F.cross_entropy(model(Xva), Yva)
            model.train()
            probe.observe(val_loss=val)
    probe.detach()
    return probe


@healthy_script(model="cnn", fast=True, planted="AdamW weight decay 0.05 and label smoothing 0.1 (the loss floor is ~0.5)")
def cnn_label_smoothing_adamw(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digit_images()
    model = SmallCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    probe = attach(model)
    for step, (x, y) in zip(range(300), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class LSTMRegressor(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.out(h[:, -1])


@healthy_script(model="lstm", fast=True, planted="LSTM sequence regression (sum of the last 5 inputs), Adam, ReduceLROnPlateau")
def lstm_sequence_regression(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2048, 20, 1, generator=g)
    y = X[:, -5:, 0].sum(1, keepdim=True) / 2
    model = LSTMRegressor()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    running = 0.0
    for step, (x, t) in zip(range(300), batches(X, y, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
        running += loss.item()
        if step % 25 == 24:
            sched.step(running); running = 0.0
    probe.detach()
    return probe


@healthy_script(model="cnn", planted="CNN pre-trained on 300 images, then fine-tuned on all 1400 at lr 3e-4: "
                "the loss starts low and improves a little")
def cnn_fine_tune_low_lr(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digit_images()
    model = SmallCNN()
    pre = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _, (x, y) in zip(range(100), batches(Xtr[:300], Ytr[:300], 32, seed + 7)):   # "pre-training"
        pre.zero_grad(); F.cross_entropy(model(x), y).backward(); pre.step()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe
