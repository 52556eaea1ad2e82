"""What the zoo's training scripts share: data, small models, the probe, onset helpers.

Everything is local and small: ``sklearn.datasets.load_digits`` (1797 8x8 images, 10
classes) or generated data, models of a few thousand parameters, one CPU thread.

The scripts attach the probe through :func:`attach`, which is ``lossprobe.attach`` with
one silent sink (:class:`DetectionLog`) that notes the step at which each code was
first reported: that is what the benchmark measures detection latency with.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import torch
from torch import nn

import lossprobe
from lossprobe.sinks import FlushUpdate, Sink

N_TRAIN = 1400  # digits: the first 1400 of a fixed permutation train, the other 397 validate


# -- the probe -------------------------------------------------------------------------
class DetectionLog(Sink):
    """A silent sink: the training step at which each diagnosis code first appeared."""

    name = "zoo-detection-log"

    def __init__(self) -> None:
        self.first_seen: dict[str, int] = {}

    def on_flush(self, update: FlushUpdate) -> None:
        for f in update.findings:
            self.first_seen.setdefault(f.code, int(update.last_step))


CONFIG_OVERRIDES: dict = {}
"""Config fields every zoo probe is created with (the benchmark's ``--set rules_every=20``)."""


def attach(model: nn.Module, **kwargs) -> lossprobe.Probe:
    """``lossprobe.attach(model, sinks=[])`` plus the silent detection log."""
    if CONFIG_OVERRIDES and "config" not in kwargs:
        kwargs["config"] = lossprobe.Config(**CONFIG_OVERRIDES)
    return lossprobe.attach(model, sinks=[DetectionLog()], **kwargs)


def detection_log(probe: lossprobe.Probe) -> DetectionLog:
    for s in probe.sinks:
        if isinstance(s, DetectionLog):
            return s
    return DetectionLog()


# -- data ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    perm = np.random.RandomState(0).permutation(len(d.target))
    return d.data[perm].astype(np.float32), d.target[perm].astype(np.int64)


def digits(normalize: bool = True, scale: float = 1.0):
    """``(Xtr, Ytr, Xva, Yva)`` as tensors: 64 pixel features, labels 0..9.

    ``normalize``: standardise each pixel with the training mean/std (the right thing);
    ``False`` keeps the raw 0..16 intensities times ``scale``.
    """
    X, Y = _digits_raw()
    X = X * scale
    if normalize:
        mu, sd = X[:N_TRAIN].mean(0), X[:N_TRAIN].std(0)
        X = (X - mu) / np.where(sd > 0, sd, 1.0)
    X, Y = torch.tensor(X), torch.tensor(Y)
    return X[:N_TRAIN], Y[:N_TRAIN], X[N_TRAIN:], Y[N_TRAIN:]


def digit_images(normalize: bool = True, scale: float = 1.0):
    """Digits as ``(N, 1, 8, 8)`` images."""
    Xtr, Ytr, Xva, Yva = digits(normalize, scale)
    return Xtr.reshape(-1, 1, 8, 8), Ytr, Xva.reshape(-1, 1, 8, 8), Yva


def digit_rows(normalize: bool = True):
    """Digits as sequences: 8 time steps (image rows) of 8 features."""
    Xtr, Ytr, Xva, Yva = digits(normalize)
    return Xtr.reshape(-1, 8, 8), Ytr, Xva.reshape(-1, 8, 8), Yva


def wave_regression(n: int, seed: int, noise: float = 0.05, dim: int = 4):
    """A smooth non-linear target of ``dim`` standard-normal features (MSE regression)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    X = torch.randn(n, dim, generator=g)
    w = torch.linspace(1.0, -1.0, dim)
    y = torch.sin(X @ w) + 0.5 * torch.cos(2 * X[:, 0]) + noise * torch.randn(n, generator=g)
    return X, y.unsqueeze(1)


def linear_regression(n: int, seed: int, noise: float = 0.1, dim: int = 4):
    """A linear target of ``dim`` standard-normal features plus noise: least squares fits it
    down to the noise floor (``noise ** 2``)."""
    g = torch.Generator().manual_seed(20_000 + seed)
    X = torch.randn(n, dim, generator=g)
    w = torch.linspace(2.0, -1.0, dim)
    y = X @ w + 0.5 + noise * torch.randn(n, generator=g)
    return X, y.unsqueeze(1)


def batches(X: torch.Tensor, Y: torch.Tensor, batch_size: int, seed: int,
            shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of mini-batches (a fresh permutation each epoch, like a DataLoader)."""
    g = torch.Generator().manual_seed(seed)
    n = X.shape[0]
    while True:
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield X[idx], Y[idx]


def evaluate(model: nn.Module, loss_fn: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    """Validation loss the usual way: eval mode, no_grad, an ``nn.Module`` loss (the probe
    records it as validation loss by itself)."""
    model.eval()
    with torch.no_grad():
        v = loss_fn(model(X), Y)
    model.train()
    return float(v)


# -- models ----------------------------------------------------------------------------
def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU, out_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Two 3x3 conv layers on 8x8 digits, a pool and a linear head."""

    def __init__(self, channels: int = 16, batchnorm: bool = False, act: type[nn.Module] = nn.ReLU,
                 classes: int = 10):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c) if batchnorm else nn.Identity(), act(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c) if batchnorm else nn.Identity(), act(),
            nn.MaxPool2d(2))
        self.head = nn.Linear(2 * c * 16, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class GRUClassifier(nn.Module):
    """A GRU over the image rows; the last hidden state feeds a linear head."""

    def __init__(self, hidden: int = 48, classes: int = 10, features: int = 8):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    """Rows as tokens: a linear embedding, learned positions, one encoder layer, mean pool."""

    def __init__(self, d: int = 32, classes: int = 10, tokens: int = 8, features: int = 8, layers: int = 1):
        super().__init__()
        self.embed = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.zeros(1, tokens, d))
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(h.mean(1))


# -- onset helpers (when a fault became visible in the signals) ------------------------
def _losses(probe) -> tuple[np.ndarray, np.ndarray]:
    h = probe.history
    seen = h.series("loss_seen") > 0
    return h.steps()[seen], h.series("loss")[seen]


def first_nonfinite_loss(probe) -> int:
    """Step of the first NaN/Inf training loss."""
    t, y = _losses(probe)
    bad = ~np.isfinite(y)
    return int(t[int(np.argmax(bad))]) if bad.any() else 0


def val_min_step(probe) -> int:
    """Step of the lowest validation loss: from there on validation stops improving."""
    s, v = probe.history.val_sketch()
    return int(s[int(np.nanargmin(v))]) if v.size else 0


def loss_min_step(probe, smooth: int = 9) -> int:
    """Step of the lowest (running-median smoothed) training loss: where a rise begins."""
    t, y = _losses(probe)
    ok = np.isfinite(y)
    t, y = t[ok], y[ok]
    if y.size < smooth:
        return 0
    sm = np.array([np.median(y[max(0, i - smooth // 2): i + smooth // 2 + 1]) for i in range(y.size)])
    return int(t[int(np.argmin(sm))])


def flat_from(probe, share: float = 0.95, smooth: int = 15) -> int:
    """First step at which the smoothed training loss has made ``share`` of its total drop
    (from the start of the run to its final level): where it stops falling, a plateau begins."""
    t, y = _losses(probe)
    ok = np.isfinite(y)
    t, y = t[ok], y[ok]
    if y.size < smooth:
        return 0
    sm = np.array([np.median(y[max(0, i - smooth // 2): i + smooth // 2 + 1]) for i in range(y.size)])
    start, final = float(sm[0]), float(np.median(y[-smooth:]))
    if start - final < 0.05 * abs(start):
        return int(t[0])  # it never fell: flat from the start
    done = sm <= final + (1 - share) * (start - final)
    return int(t[int(np.argmax(done))]) if done.any() else int(t[-1])


WARMUP = 20  # lossprobe.Config().warmup_steps: before it a loss that is not falling yet is normal


def stalled_from(probe) -> int:
    """Onset of a fault whose symptom is a loss that stops falling (a plateau, a stall at
    chance, over-regularisation): where it stopped, but not before the warm-up, before which
    no loss curve is expected to have done anything."""
    return max(WARMUP, flat_from(probe))


def val_point(probe, k: int) -> int:
    """Step of the k-th validation measurement (1-based): a validation pattern cannot be
    visible before a few validation points exist."""
    s, _ = probe.history.val_sketch()
    return int(s[min(k, len(s)) - 1]) if len(s) else 0


def val_stalled_from(probe) -> int:
    """Onset of a train-flat / validation-falling pattern: the train loss has stalled and
    validation has been measured three times."""
    return max(stalled_from(probe), val_point(probe, 3))


def lr_lambda_jump(at: int, factor: float):
    """A LambdaLR multiplier that is 1 before ``at`` and ``factor`` from there on."""
    return lambda step: 1.0 if step < at else factor


FLT_MIN = float(np.finfo(np.float32).tiny)
