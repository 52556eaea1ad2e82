"""Small real PyTorch training runs on scikit-learn's digits, with faults planted by argument."""
from __future__ import annotations

import torch
from torch import nn
from sklearn.datasets import load_digits

import lossprobe

_X, _Y = load_digits(return_X_y=True)
X = torch.tensor(_X / 16.0, dtype=torch.float32)
Y = torch.tensor(_Y)
X_IMG = X.reshape(-1, 1, 8, 8)


def mlp(depth: int = 2, width: int = 64, act=nn.ReLU, out: int = 10) -> nn.Sequential:
    layers, d = [], 64
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    layers.append(nn.Linear(d, out))
    return nn.Sequential(*layers)


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))


def train(model, *, steps=150, lr=1e-3, opt="adam", batch=64, images=False, seed=0, x_fn=None, y_fn=None,
          loss_fn=None, functional=False, val_every=0, config=None, give_optimizer=True, probe=True,
          after_step=None, ascent=False, schedule=None):
    """Train ``model``; returns the (detached) probe. ``x_fn``/``y_fn`` plant input/label faults."""
    torch.manual_seed(seed)
    data = X_IMG if images else X
    Opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[opt]
    optimizer = Opt(model.parameters(), lr=lr)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    cfg = config or lossprobe.Config()
    p = lossprobe.attach(model, optimizer=optimizer if give_optimizer else None, config=cfg, sinks=[]) if probe else None
    gen = torch.Generator().manual_seed(seed)
    n_train = len(data) - 300
    for step in range(steps):
        idx = torch.randint(0, n_train, (batch,), generator=gen)
        x, y = data[idx], Y[idx]
        if x_fn:
            x = x_fn(x, step)
        if y_fn:
            y = y_fn(y, step)
        out = model(x)
        if functional:
            loss = nn.functional.cross_entropy(out, y)
            if p:
                p.observe(loss, targets=y)
        else:
            loss = loss_fn(out, y)
        optimizer.zero_grad()
        (-loss if ascent else loss).backward()
        optimizer.step()
        if after_step:
            after_step(model, step)
        if schedule:
            for g in optimizer.param_groups:
                g["lr"] = schedule(step + 1)
        if val_every and step % val_every == val_every - 1:
            model.eval()
            with torch.no_grad():
                loss_fn(model(data[n_train:]), Y[n_train:])
            model.train()
    if p:
        p.detach()
    return p


def codes(probe, severities=("warning", "critical")) -> set[str]:
    return {f.code for f in probe.findings if f.severity in severities}
