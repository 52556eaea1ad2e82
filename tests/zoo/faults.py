"""Faulty training scripts: one fault planted in each, with the codes it must produce.

Every script is what a user could plausibly have written, bug included; the decorator
says which diagnosis it must trigger, when the fault became visible (``onset``: a step,
or a function of the finished probe for faults whose moment depends on the run), and
which other critical codes are direct consequences of it (``allow``: a NaN loss brings
NaN gradients with it). Warnings that come along are not held against a faulty run.

Every script takes ``fixed: bool = False``: ``fixed=True`` is its corrected twin, the same
script with the one planted mistake fixed, the faulty line written ``good if fixed else bad``
(or ``if not fixed:`` before the bug); ``fix=`` says what the twin changes. The twin must
learn and stay silent. Where fixing the planted line alone would leave a run that cannot
learn, the fault's other settings were chosen so that the fix does (e.g. Adam rather than
plain SGD under the deep sigmoid stacks, a linear target for the least-squares overflow).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from . import fault
from .common import (FLT_MIN, WARMUP, GRUClassifier, SmallCNN, TinyTransformer, attach, batches, digit_images,
                     digit_rows, digits, evaluate, first_nonfinite_loss, flat_from, linear_regression,
                     loss_min_step, lr_lambda_jump, mlp, stalled_from, val_min_step, val_stalled_from,
                     wave_regression)

NONFINITE = ("nan_loss", "nonfinite_gradients", "nonfinite_inputs", "exploding_gradients", "loss_divergence")


# ======================================================================================
# NaN / Inf
# ======================================================================================
@fault("nan_loss", onset=first_nonfinite_loss, model="mlp", fast=True, allow=NONFINITE + ("softmax_overflow",),
       planted="hand-written cross-entropy log(softmax) and an lr schedule that jumps 300x at step 100",
       fix="the step at 100 is the 0.3x decay that was meant, not 300x (the hand-written log(softmax) stays)")
def mlp_naive_ce_lr_jump(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda_jump(100, 0.3 if fixed else 300.0))
    probe = attach(model)
    for step, (x, y) in zip(range(240), batches(Xtr, Ytr, 64, seed)):
        p = torch.softmax(model(x), dim=1)
        loss = -(F.one_hot(y, 10) * torch.log(p)).sum(1).mean()  # 0 * log(0) = NaN once p underflows
        probe.observe(loss, targets=y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe


@fault("nan_loss", onset=first_nonfinite_loss, model="regression", fast=True, allow=NONFINITE,
       planted="linear least squares, plain SGD at lr 1.5 (past 2/curvature): the error doubles every step",
       fix="SGD lr 0.1, inside the stable range")
def regression_sgd_overflow(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = linear_regression(2048, seed)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1 if fixed else 1.5)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(200), batches(X, y, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("nan_loss", onset=first_nonfinite_loss, model="gru", fast=True, allow=NONFINITE + ("softmax_overflow",),
       planted="GRU classifier, NLL of log(softmax) written by hand, Adam lr 1.0: a probability underflows to 0",
       fix="Adam lr 3e-3 (the hand-written log(softmax) stays: nothing underflows at a sane lr)")
def gru_log_of_softmax(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3 if fixed else 1.0)
    probe = attach(model)
    for step, (x, y) in zip(range(240), batches(Xtr, Ytr, 64, seed)):
        logp = torch.log(torch.softmax(model(x), dim=1))   # -inf where softmax underflows
        loss = F.nll_loss(logp, y)
        probe.observe(loss, targets=y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


def positive_sqrt(x: torch.Tensor, fixed: bool = False) -> torch.Tensor:
    """sqrt where positive, else 0, via torch.where: the forward is finite, but the untaken
    branch sqrt(negative) = NaN still gets gradient 0 * NaN = NaN. ``fixed``: the 'double
    where', which hands the sqrt only positive values."""
    inner = torch.where(x > 0, x, torch.ones_like(x)) if fixed else x
    return torch.where(x > 0, torch.sqrt(inner), torch.zeros_like(x))


class SafeSqrt(nn.Module):
    """:func:`positive_sqrt` as an activation layer."""

    def __init__(self, fixed: bool = False):
        super().__init__()
        self.fixed = fixed

    def forward(self, x):
        return positive_sqrt(x, self.fixed)


@fault("nonfinite_gradients", onset=0, model="mlp", fast=True, allow=NONFINITE,
       planted="activation torch.where(x > 0, sqrt(x), 0): finite forward, NaN gradient (the where trap)",
       fix="the 'double where': sqrt only ever sees positive values, so no NaN reaches the gradient")
def mlp_where_sqrt(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = nn.Sequential(nn.Linear(64, 64), SafeSqrt(fixed), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class HandNorm(nn.Module):
    """A hand-written batch normalisation with the epsilon outside the square root."""

    def forward(self, x):
        mu = x.mean(0, keepdim=True)
        sd = torch.sqrt(((x - mu) ** 2).mean(0, keepdim=True))   # d sqrt(v)/dv = inf at v = 0
        return (x - mu) / (sd + 1e-5)


@fault("nonfinite_gradients", onset=150, model="mlp", fast=True, allow=NONFINITE,
       planted="hand-written batch norm sqrt(var)+eps; from step 150 the loader repeats one sample per batch",
       fix="the sampler fixed: batches stay varied (the eps outside the sqrt stays)")
def mlp_handnorm_duplicate_batch(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = nn.Sequential(nn.Linear(64, 64), HandNorm(), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(240), batches(Xtr, Ytr, 64, seed)):
        if step >= 150 and not fixed:        # the bug: a sampler that repeats the first index
            x, y = x[:1].expand_as(x).clone(), y[:1].expand_as(y).clone()
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class PowerNormCNN(SmallCNN):
    """Power-normalised embedding: sqrt of the positive part of a linear projection of the
    conv features, written with torch.where (:func:`positive_sqrt`)."""

    def __init__(self, fixed: bool = False):
        super().__init__()
        self.proj = nn.Linear(512, 64)
        self.head = nn.Linear(64, 10)
        self.fixed = fixed

    def forward(self, x):
        return self.head(positive_sqrt(self.proj(self.features(x).flatten(1)), self.fixed))


@fault("nonfinite_gradients", onset=0, model="cnn", allow=NONFINITE,
       planted="power-normalised CNN embedding via torch.where(z > 0, sqrt(z), 0)",
       fix="the 'double where': sqrt only ever sees positive values, so no NaN reaches the gradient")
def cnn_power_norm(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = PowerNormCNN(fixed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("nonfinite_inputs", onset=120, model="mlp", fast=True, allow=NONFINITE,
       planted="from step 120 batches come from a shard where missing pixels are NaN",
       fix="the shard cleaned: missing pixels imputed with 0, the standardised mean")
def mlp_nan_shard(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    bad = Xtr.clone()
    bad[torch.rand(bad.shape, generator=torch.Generator().manual_seed(seed)) < 0.01] = float("nan")
    if fixed:                              # the shard cleaned: missing pixels get the (standardised) mean
        bad = bad.nan_to_num(0.0)
    model = mlp([64, 64, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    clean, dirty = batches(Xtr, Ytr, 64, seed), batches(bad, Ytr, 64, seed + 1)
    for step in range(200):
        x, y = next(clean) if step < 120 else next(dirty)
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("nonfinite_inputs", onset=90, model="cnn", allow=NONFINITE,
       planted="per-image standardisation (x - mean) / std; blank images appear from step 90: 0/0",
       fix="the per-image std clamped at 1e-6: a blank image standardises to zeros")
def cnn_blank_image_standardise(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images(normalize=False)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(180), batches(Xtr, Ytr, 32, seed)):
        if step >= 90:
            x = x.clone(); x[:2] = 0.0                      # padding images from a new source
        std = x.std((1, 2, 3), keepdim=True)
        x = (x - x.mean((1, 2, 3), keepdim=True)) / (std.clamp_min(1e-6) if fixed else std)
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("nonfinite_inputs", onset=100, model="gru", fast=True, allow=NONFINITE,
       planted="sensor rates computed as delta / dt; from step 100 some readings repeat a timestamp (dt = 0)",
       fix="a repeated timestamp gives rate 0: torch.where(dt > 0, x / dt, 0)")
def gru_rate_division(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    g = torch.Generator().manual_seed(seed)
    for step, (x, y) in zip(range(180), batches(Xtr, Ytr, 64, seed)):
        dt = torch.ones(x.shape[0], 8, 1)
        if step >= 100:
            dt[torch.rand(dt.shape, generator=g) < 0.02] = 0.0
        x = torch.where(dt > 0, x / dt, 0.0) if fixed else x / dt   # inf (or nan) where dt == 0
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


def _clamped_ce(logits, y):
    """A 'safe' cross-entropy: NaN probabilities zeroed and clamped to FLT_MIN before the log."""
    p = torch.softmax(logits, 1).nan_to_num(0.0).clamp_min(FLT_MIN)
    return -torch.log(p.gather(1, y[:, None])).mean()


@fault("softmax_overflow", onset=60, model="mlp", fast=True,
       allow=NONFINITE + ("zero_gradients",),  # the clamp at FLT_MIN has zero gradient once pinned
       planted="'NaN-safe' cross-entropy (nan_to_num + clamp to FLT_MIN) with lr 20: loss pins at 87.3365",
       fix="no 2000x lr jump at step 60 (the 'NaN-safe' cross-entropy stays)")
def mlp_nan_safe_ce_pinned(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda_jump(60, 1.0 if fixed else 2000.0))
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 64, seed)):
        loss = _clamped_ce(model(x), y)
        probe.observe(loss, targets=y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe


class CosineClassifier(nn.Module):
    """Cosine-similarity head with a scale: NormFace uses s ~ 16-64; s = 1000 saturates softmax."""

    def __init__(self, body: nn.Module, dim: int, classes: int = 10, scale: float = 1000.0):
        super().__init__()
        self.body, self.scale = body, scale
        self.w = nn.Parameter(torch.randn(classes, dim) * 0.1)

    def forward(self, x):
        f = F.normalize(self.body(x), dim=1)
        return self.scale * f @ F.normalize(self.w, dim=1).T


@fault("softmax_overflow", onset=0, model="cnn", fast=True, allow=("loss_divergence", "exploding_gradients"),
       planted="cosine-classifier head with scale 1000 (meant ~30): logits far beyond exp's fp32 range",
       fix="cosine-classifier scale 30")
def cnn_cosine_scale(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    body = nn.Sequential(SmallCNN().features, nn.Flatten(), nn.Linear(512, 32))
    model = CosineClassifier(body, 32, scale=30.0 if fixed else 1000.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class TemperatureGRU(GRUClassifier):
    """Logits divided by a temperature (0.001 is a 'sharpening' meant as 1000)."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@fault("softmax_overflow", onset=0, model="gru", allow=("loss_divergence", "exploding_gradients"),
       planted="logits divided by temperature 1e-3 (1000x too sharp)",
       fix="temperature 1 (no sharpening)")
def gru_temperature(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = TemperatureGRU(temperature=1.0 if fixed else 1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# Loss stuck at chance
# ======================================================================================
@fault("chance_level_loss", onset=WARMUP, model="mlp", fast=True,
       planted="nn.Dropout(p=1.0) on the input (meant 0.1): the network never sees a pixel",
       fix="nn.Dropout(p=0.1), as meant")
def mlp_dropout_one(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = nn.Sequential(nn.Dropout(0.1 if fixed else 1.0), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("chance_level_loss", onset=WARMUP, model="mlp-binary",
       planted="binary even/odd task whose labels were shuffled apart from the images (a bad join)",
       fix="the labels stay joined to their images")
def bce_labels_detached_from_inputs(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    y = (Ytr % 2).float()
    if not fixed:                          # the bad join: labels shuffled apart from their images
        y = y[torch.randperm(len(Ytr), generator=torch.Generator().manual_seed(seed))]
    model = mlp([64, 32, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    loss_fn = nn.BCEWithLogitsLoss()
    probe = attach(model)
    for step, (x, t) in zip(range(150), batches(Xtr, y[:, None], 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("chance_level_loss", onset=WARMUP, model="cnn", fast=True,
       planted="images divided by 255 twice (raw 0..16 pixels become ~1e-4): SGD learns nothing",
       fix="the pixels divided once, by their range (16 for these digits): inputs 0..1")
def cnn_double_scaled_inputs(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images(normalize=False)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        x = x / 16.0 if fixed else x / 255.0 / 255.0
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# Gradients
# ======================================================================================
@fault("exploding_gradients", onset=80, model="regression", fast=True,
       allow=NONFINITE,
       planted="tanh MLP regression; a warm-up schedule overshoots to 40x the lr at step 80",
       fix="the warm-up ends at the base lr (no 40x overshoot at step 80)")
def regression_warmup_overshoot(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(2048, seed)
    model = mlp([4, 64, 64, 1], act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda_jump(80, 1.0 if fixed else 40.0))
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(200), batches(X, y, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe


class RNNRegressor(nn.Module):
    """A vanilla tanh RNN over a sequence, linear read-out of the last state."""

    def __init__(self, hidden: int = 32, features: int = 1):
        super().__init__()
        self.rnn = nn.RNN(features, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


@fault("exploding_gradients", onset=0, model="rnn", fast=True, allow=NONFINITE,
       planted="vanilla tanh RNN on 40-step sequences, SGD lr 0.1 + momentum, no gradient clipping",
       fix="clip_grad_norm_(model.parameters(), 1.0) before each step")
def rnn_no_clipping(seed, fixed: bool = False):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1024, 40, 1, generator=g)
    y = X[:, -10:, 0].sum(1, keepdim=True) / 3
    model = RNNRegressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(150), batches(X, y, 32, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward()
        if fixed:
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    probe.detach()
    return probe


class MatrixFactorization(nn.Module):
    """Ratings as user . item + biases (a recommender)."""

    def __init__(self, users: int = 300, items: int = 200, dim: int = 16):
        super().__init__()
        self.user, self.item = nn.Embedding(users, dim), nn.Embedding(items, dim)
        self.user_bias, self.item_bias = nn.Embedding(users, 1), nn.Embedding(items, 1)

    def forward(self, ui):
        u, i = ui[:, 0], ui[:, 1]
        return (self.user(u) * self.item(i)).sum(1, keepdim=True) + self.user_bias(u) + self.item_bias(i)


def ratings(seed: int, n: int = 8000):
    g = torch.Generator().manual_seed(seed)
    U, I = torch.randn(300, 4, generator=g), torch.randn(200, 4, generator=g)
    ui = torch.stack([torch.randint(0, 300, (n,), generator=g), torch.randint(0, 200, (n,), generator=g)], 1)
    r = ((U[ui[:, 0]] * I[ui[:, 1]]).sum(1) + 3.0).clamp(1, 5)[:, None]
    return ui, r


@fault("exploding_gradients", onset=0, model="embeddings", fast=True, allow=NONFINITE,
       planted="matrix factorisation on 1..5 ratings, SGD lr 1.0 + momentum: the embeddings feed back and blow up",
       fix="SGD lr 0.05 (momentum 0.9 stays)")
def mf_embeddings_lr_high(seed, fixed: bool = False):
    torch.manual_seed(seed)
    ui, r = ratings(seed)
    model = MatrixFactorization()
    opt = torch.optim.SGD(model.parameters(), lr=0.05 if fixed else 1.0, momentum=0.9)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(150), batches(ui, r, 128, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("learning_rate_too_high", onset=0, model="cnn", fast=True, allow=NONFINITE,
       planted="CNN with SGD lr 0.5 and momentum 0.9 (about 50x too high)",
       fix="SGD lr 0.01 (momentum 0.9 stays)")
def cnn_sgd_lr_far_too_high(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01 if fixed else 0.5, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("vanishing_gradients", onset=0, model="mlp", fast=True,
       planted="10 sigmoid layers, default init, Adam: each layer scales the backward signal by <= 1/4",
       fix="ReLU instead of sigmoid in the 10 hidden layers")
def mlp_deep_sigmoid(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64] + [64] * 10 + [10], act=nn.ReLU if fixed else nn.Sigmoid)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class NarrowDeepCNN(nn.Module):
    """``depth`` 8-channel conv layers, no normalisation."""

    def __init__(self, act: type[nn.Module], depth: int = 8):
        super().__init__()
        layers = [nn.Conv2d(1, 8, 3, padding=1), act()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(8, 8, 3, padding=1), act()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(8 * 64, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@fault("vanishing_gradients", onset=0, model="cnn",
       planted="8 conv layers with sigmoid activations and no normalisation, Adam",
       fix="ReLU instead of sigmoid in the 8 conv layers")
def cnn_deep_sigmoid(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = NarrowDeepCNN(act=nn.ReLU if fixed else nn.Sigmoid)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("bad_initialization", onset=0, model="mlp",
       planted="12 tanh layers initialised with std 0.05 (Glorot would be ~0.125): the signal shrinks each layer",
       fix="init std 0.125 (Glorot for 64 -> 64)")
def mlp_deep_tanh_small_init(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64] + [64] * 12 + [10], act=nn.Tanh)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.125 if fixed else 0.05); nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("frozen_parameters", onset=0, model="mlp", fast=True,
       planted="the optimizer is built, then the head is replaced: the new head is not in the optimizer",
       fix="the optimizer is built after the head is replaced")
def mlp_head_replaced_after_optimizer(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 64, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model[4] = nn.Linear(64, 10)          # "re-initialise the classifier" after building opt
    if fixed:                             # the fix: build the optimizer once the model is final
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(100), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class DetachedCNN(SmallCNN):
    """A .detach() left in the forward from debugging: no gradient reaches the conv layers."""

    def forward(self, x):
        return self.head(self.features(x).flatten(1).detach())


@fault("frozen_parameters", onset=0, model="cnn", fast=True,
       planted="a leftover .detach() between the conv features and the head",
       fix="no .detach() in the forward")
def cnn_detached_features(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN() if fixed else DetachedCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model, optimizer=opt)
    for step, (x, y) in zip(range(100), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("frozen_parameters", onset=0, model="gru", fast=True,
       planted="optimizer built from model.head.parameters() only (copied from a linear-probe script)",
       fix="the optimizer gets model.parameters()")
def gru_optimizer_only_head(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = GRUClassifier()
    opt = torch.optim.Adam((model if fixed else model.head).parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(100), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# Activations
# ======================================================================================
@fault("dead_relu", onset=100, model="mlp", fast=True, allow=("loss_divergence",),
       planted="ReLU MLP; a mis-set warm restart runs 10 steps at 100x the lr from step 100",
       fix="the warm restart at step 100 restarts at the base lr (no 100x burst)")
def mlp_lr_burst_kills_relus(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 128, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    burst = 1.0 if fixed else 100.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: burst if 100 <= s < 110 else 1.0)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(240), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe


@fault("dead_relu", onset=0, model="mlp", fast=True,
       planted="biases initialised to -5 'to start sparse': almost every unit is off for every input",
       fix="biases initialised to 0")
def mlp_negative_bias_init(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 128, 128, 10])
    for m in model[:-1]:
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 0.0 if fixed else -5.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("dead_relu", onset=0, model="cnn", allow=("loss_divergence", "exploding_gradients"),
       planted="CNN trained with Adam at lr 0.05 (50x the usual): channels die in the first steps",
       fix="Adam lr 1e-3")
def cnn_adam_lr_high_dead_channels(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if fixed else 0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("saturated_activations", onset=0, model="mlp", fast=True,
       planted="tanh MLP with weights drawn from N(0, 1) (8x Glorot): pre-activations of size ~8",
       fix="Glorot (xavier_normal_) init")
def mlp_tanh_unit_normal_init(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 128, 128, 10], act=nn.Tanh)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight) if fixed else nn.init.normal_(m.weight, std=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("saturated_activations", onset=0, model="mlp", fast=True,
       planted="sigmoid hidden layers on raw pixel sums: inputs 0..16 feed a sigmoid MLP with init gain 4",
       fix="inputs standardised (the init gain 4 stays)")
def mlp_sigmoid_raw_pixels(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits(normalize=fixed)
    model = mlp([64, 64, 64, 10], act=nn.Sigmoid)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("saturated_activations", onset=0, model="cnn",
       planted="tanh CNN whose conv weights were set with nn.init.normal_(w) (std 1: the default)",
       fix="Glorot (xavier_normal_) init for the conv weights")
def cnn_tanh_default_normal_init(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN(act=nn.Tanh)
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight) if fixed else nn.init.normal_(m.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("vanishing_gradients", onset=0, model="regression", fast=True,
       planted="MSE regression through 9 sigmoid layers (default init), Adam",
       fix="ReLU instead of sigmoid in the 9 hidden layers")
def regression_deep_sigmoid(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(2048, seed)
    model = mlp([4] + [64] * 9 + [1], act=nn.ReLU if fixed else nn.Sigmoid)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(150), batches(X, y, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# Loss curves
# ======================================================================================
@fault("loss_plateau", onset=stalled_from, model="regression",
       planted="a linear model fitted to a non-linear target: it stops improving far above zero",
       fix="an MLP (4-64-64-1) instead of a linear model")
def regression_linear_underfit(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(4096, seed)
    model = mlp([4, 64, 64, 1]) if fixed else nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(300), batches(X, y, 256, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("loss_plateau", onset=stalled_from, model="mlp", fast=True,
       planted="a 2-unit tanh bottleneck in a digits classifier: train and validation stall together",
       fix="a 64-unit hidden layer instead of 2")
def mlp_two_unit_bottleneck(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digits()
    width = 64 if fixed else 2
    model = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(400), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@fault("loss_plateau", onset=stalled_from, model="gru",
       planted="GRU with hidden size 2 on the digit rows: too little capacity, the loss stalls high",
       fix="GRU hidden size 48 instead of 2")
def gru_hidden_too_small(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = GRUClassifier(hidden=48 if fixed else 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(800), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("loss_divergence", onset=120, model="mlp", fast=True, allow=NONFINITE + ("softmax_overflow",),
       planted="Adam lr set to 0.1 at step 120 by a scheduler meant to decay (100x jump)",
       fix="the scheduler decays the lr 10x at step 120, as meant")
def mlp_adam_lr_jump(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda_jump(120, 0.1 if fixed else 100.0))
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(240), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe


@fault("loss_divergence", onset=0, model="regression", fast=True, allow=NONFINITE,
       planted="log-likelihood sign bug: ll = -mse; ll.backward() climbs the loss instead of descending",
       fix="backward() on the negative log-likelihood")
def regression_gradient_ascent(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(2048, seed)
    model = mlp([4, 32, 1], act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(200), batches(X, y, 64, seed)):
        log_likelihood = -loss_fn(model(x), t)
        objective = -log_likelihood if fixed else log_likelihood   # minimise the negative log-likelihood
        opt.zero_grad(); objective.backward(); opt.step()
    probe.detach()
    return probe


@fault("loss_divergence", onset=loss_min_step, model="gru", allow=NONFINITE,
       planted="LambdaLR(lambda s: 1.03 ** s) meant as a slow decay (0.995 ** s): the lr grows 3% a step",
       fix="LambdaLR(lambda s: 0.995 ** s), as meant")
def gru_lr_growing(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (0.995 if fixed else 1.03) ** s)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(240), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe


@fault("loss_spike", onset=150, model="mlp", fast=True,
       planted="one batch at step 150 comes from an un-normalised shard (inputs 100x)",
       fix="the un-normalised batch left out")
def mlp_unscaled_batch(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 64, seed)):
        if step == 150 and not fixed:
            x = x * 100.0
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("loss_spike", onset=120, model="cnn",
       planted="one batch at step 120 with labels shifted by one (an off-by-one in a new label file)",
       fix="the batch keeps its correct labels")
def cnn_shifted_label_batch(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(180), batches(Xtr, Ytr, 64, seed)):
        if step == 120 and not fixed:
            y = (y + 1) % 10
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("loss_spike", onset=150, model="regression", fast=True, allow=("loss_divergence",),
       planted="one batch at step 150 with targets in centimetres instead of metres (x100)",
       fix="the batch's targets in metres like the others")
def regression_units_batch(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(2048, seed)
    model = mlp([4, 64, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(200), batches(X, y, 64, seed)):
        if step == 150 and not fixed:
            t = t * 100.0
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


def _alternating(X, Y, group, batch_size, seed):
    """Batches that alternate between the two groups (a sampler that interleaves shards)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.nonzero(group)[:, 0], torch.nonzero(~group)[:, 0]
    while True:
        for idx in (a, b):
            pick = idx[torch.randint(len(idx), (batch_size,), generator=g)]
            yield X[pick], Y[pick]


@fault("loss_oscillation", onset=WARMUP, model="mlp", fast=True,
       planted="batch size 4 with plain SGD at lr 1.0 (a setting for batch 256): every step overshoots",
       fix="lr scaled to the batch: 1.0 * 4 / 256")
def mlp_tiny_batch_high_lr(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 10], act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1.0 * 4 / 256 if fixed else 1.0)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 4, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("loss_oscillation", onset=WARMUP, model="gru", fast=True,
       planted="GRU, batch size 4, SGD lr 1.0",
       fix="SGD lr 0.1")
def gru_tiny_batch_high_lr(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = GRUClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1 if fixed else 1.0)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 4, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("loss_oscillation", onset=WARMUP, model="cnn", allow=("loss_divergence",),
       planted="tanh CNN, batch size 2, SGD lr 0.2",
       fix="SGD lr 0.01")
def cnn_batch_of_two(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN(act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01 if fixed else 0.2)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 2, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# Learning rate and regularisation
# ======================================================================================
@fault("learning_rate_too_high", onset=0, model="mlp", fast=True, allow=NONFINITE + ("softmax_overflow",),
       planted="Adam with lr 0.1 (100x the usual 1e-3): weights inflate, logits can leave fp32's exp range",
       fix="Adam lr 1e-3")
def mlp_adam_lr_0p1(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 128, 64, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if fixed else 0.1)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("learning_rate_too_high", onset=WARMUP, model="transformer", fast=True, allow=NONFINITE + ("loss_plateau",),
       planted="small transformer trained with AdamW at lr 0.05 and no warm-up: each step moves the weights "
               "by far more than a healthy rate, and the loss bounces between 0.8 and 1.0 (on one thread, "
               "seed 0, it is still below the slower fix's at step 150, so the curve alone does not condemn it)",
       fix="AdamW lr 1e-3")
def transformer_adamw_lr_high(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3 if fixed else 0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("learning_rate_too_low", onset=WARMUP, model="mlp", fast=True,
       planted="plain SGD with lr 1e-5 (meant 1e-1)",
       fix="SGD lr 1e-1, as meant")
def mlp_sgd_lr_1e5(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=1e-1 if fixed else 1e-5)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("learning_rate_too_low", onset=WARMUP, model="cnn",
       planted="Adam with lr 1e-7 (a typo for 1e-3)",
       fix="Adam lr 1e-3, as meant")
def cnn_adam_lr_1e7(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if fixed else 1e-7)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("learning_rate_too_low", onset=40, model="gru", fast=True,
       planted="StepLR(step_size=40, gamma=1e-4): meant to halve the lr every 40 steps, got 10000x less at step 40",
       fix="StepLR gamma 0.5, as meant")
def gru_steplr_gamma_typo(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = GRUClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=0.5 if fixed else 1e-4)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe


@fault("over_regularization", onset=stalled_from, model="mlp", fast=True,
       planted="SGD weight_decay=0.5 (meant 5e-4): the weights are pulled to zero faster than the data can fit",
       fix="weight_decay=5e-4, as meant")
def mlp_weight_decay_typo(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4 if fixed else 0.5)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("over_regularization", onset=stalled_from, model="cnn",
       planted="AdamW weight_decay=30 (meant 0.3): 3% of every weight removed per step",
       fix="weight_decay=0.3, as meant")
def cnn_adamw_decay_huge(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.3 if fixed else 30.0)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("over_regularization", onset=stalled_from, model="regression", fast=True,
       planted="hand-written L2 penalty with lambda 1.0 (meant 1e-4) added to an MSE regression",
       fix="L2 lambda 1e-4, as meant")
def regression_manual_l2(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(2048, seed)
    model = mlp([4, 64, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(200), batches(X, y, 64, seed)):
        mse = loss_fn(model(x), t)
        loss = mse + (1e-4 if fixed else 1.0) * sum((p ** 2).sum() for p in model.parameters())
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# Validation: the train/val table
# ======================================================================================
@fault("overfitting", onset=val_min_step, model="mlp", fast=True,
       planted="a 512-wide MLP trained on 60 samples, validated on 397",
       fix="the whole 1400-image training set")
def mlp_tiny_train_set(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digits()
    if not fixed:
        Xtr, Ytr = Xtr[:60], Ytr[:60]
    model = mlp([64, 512, 512, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(300), batches(Xtr, Ytr, 20, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 10 == 9:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@fault("overfitting", onset=val_min_step, model="cnn",
       planted="CNN on 150 training images with 30% wrong labels: it memorises the noise",
       fix="the whole training set with its clean labels (no noisy 150-image subset)")
def cnn_noisy_small_train(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digit_images()
    if not fixed:                          # a 150-image subset whose labels are 30% wrong
        Xtr, Ytr = Xtr[:150], Ytr[:150].clone()
        g = torch.Generator().manual_seed(seed)
        flip = torch.rand(150, generator=g) < 0.3
        Ytr[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    model = SmallCNN(channels=32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(400), batches(Xtr, Ytr, 30, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@fault("overfitting", onset=val_min_step, model="regression", fast=True,
       planted="a 128-wide MLP fitted to 16 noisy points; validation loss via probe.observe(val_loss=...)",
       fix="400 training points instead of 16")
def regression_few_points(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(516, seed, noise=0.5)
    n_train = 400 if fixed else 16
    Xtr, ytr, Xva, yva = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    model = mlp([4, 128, 128, 1])
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(300), batches(Xtr, ytr, 8, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 10 == 9:
            with torch.no_grad():
                probe.observe(val_loss=F.mse_loss(model(Xva), yva))
    probe.detach()
    return probe


@fault("validation_anomaly", onset=val_stalled_from, model="mlp",
       planted="nn.Dropout(0.9) on the input, ported from TF1 where 0.9 was keep_prob: train sees 10% of each image",
       fix="nn.Dropout(0.1): 0.9 keep-probability is 0.1 drop-probability")
def mlp_dropout_keep_prob_confusion(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digits()
    model = nn.Sequential(nn.Dropout(0.1 if fixed else 0.9), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(300), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, loss_fn, Xva, Yva)
    probe.detach()
    return probe


@fault("validation_anomaly", onset=val_stalled_from, model="regression", fast=True,
       planted="an 'augmentation' that adds noise of std 5 to the training targets instead of the inputs",
       fix="no noise added to the targets")
def regression_target_noise_augmentation(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(4096, seed)
    Xtr, ytr, Xva, yva = X[:3584], y[:3584], X[3584:], y[3584:]
    model = mlp([4, 64, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(300), batches(Xtr, ytr, 64, seed)):
        if not fixed:
            t = t + 5.0 * torch.randn_like(t)
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, loss_fn, Xva, yva)
    probe.detach()
    return probe


@fault("validation_anomaly", onset=val_stalled_from, model="gru", fast=True,
       planted="label smoothing 0.9 on the training loss only (meant 0.1): train loss cannot move, val falls",
       fix="label smoothing 0.1, as meant")
def gru_label_smoothing_typo(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digit_rows()
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    train_loss, val_loss = nn.CrossEntropyLoss(label_smoothing=0.1 if fixed else 0.9), nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(300), batches(Xtr, Ytr, 64, seed)):
        loss = train_loss(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 20 == 19:
            evaluate(model, val_loss, Xva, Yva)
    probe.detach()
    return probe


# ======================================================================================
# Data
# ======================================================================================
def _sorted_by(X, Y, key):
    order = torch.argsort(key, stable=True)
    return X[order], Y[order]


# Sorted data makes the loss climb each time a new class or slice arrives (the model forgets
# the previous one): loss_divergence on these runs is a symptom of the order, so allowed;
# so are logits pushed past fp32's exp range by hundreds of steps of one class.
@fault("unshuffled_data", onset=0, model="mlp", fast=True, allow=("loss_divergence", "softmax_overflow"),
       planted="data sorted by label and read without shuffling (DataLoader(shuffle=False))",
       fix="shuffled every epoch")
def mlp_sorted_labels(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    Xs, Ys = _sorted_by(Xtr, Ytr, Ytr)
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xs, Ys, 64, seed, shuffle=fixed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("unshuffled_data", onset=0, model="cnn-binary", allow=("loss_divergence",),
       planted="binary 'is even' BCE task, images stored class by class and read without shuffling",
       fix="shuffled every epoch")
def cnn_binary_sorted(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    t = (Ytr % 2 == 0).float()[:, None]
    Xs, ts = _sorted_by(Xtr, t, t[:, 0])
    model = SmallCNN(classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xs, ts, 32, seed, shuffle=fixed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("unshuffled_data", onset=0, model="mlp-binary", fast=True,
       planted="a 'balanced' sampler that alternates an all-positive and an all-negative batch",
       fix="an ordinary shuffled loader: every batch mixes both classes")
def bce_alternating_pos_neg_batches(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    t = (Ytr % 2).float()[:, None]
    model = mlp([64, 32, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.BCEWithLogitsLoss()
    probe = attach(model)
    loader = batches(Xtr, t, 32, seed) if fixed else _alternating(Xtr, t, Ytr % 2 == 1, 32, seed)
    for step, (x, y) in zip(range(150), loader):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("unshuffled_data", onset=0, model="regression", fast=True, allow=("loss_divergence",),
       planted="regression rows stored sorted by target (a time-ordered export), read in order",
       fix="shuffled every epoch")
def regression_sorted_by_target(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(4096, seed)
    Xs, ys = _sorted_by(X, y, y[:, 0])
    model = mlp([4, 64, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(150), batches(Xs, ys, 64, seed, shuffle=fixed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("unshuffled_data", onset=0, model="gru", allow=("loss_divergence",),
       planted="sequence classifier over class-sorted sequences, no shuffling",
       fix="shuffled every epoch")
def gru_sorted_labels(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    Xs, Ys = _sorted_by(Xtr, Ytr, Ytr)
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xs, Ys, 32, seed, shuffle=fixed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("unnormalized_inputs", onset=0, model="cnn", fast=True,
       planted="8-bit images fed as 0..255 floats (the / 255 was forgotten)",
       fix="pixels divided by 255")
def cnn_raw_255_pixels(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images(normalize=False, scale=255.0 / 16.0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr / 255.0 if fixed else Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("unnormalized_inputs", onset=0, model="regression", fast=True, allow=NONFINITE,
       planted="tabular regression on raw physical units (year ~2000, area ~150 m2, price ~3e5)",
       fix="each feature standardised (mean 0, std 1)")
def regression_physical_units(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(2048, seed)
    raw = X * torch.tensor([10.0, 50.0, 1e5, 1.0]) + torch.tensor([2000.0, 150.0, 3e5, 0.0])
    if fixed:
        raw = (raw - raw.mean(0)) / raw.std(0)
    model = mlp([4, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(120), batches(raw, y, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("unnormalized_inputs", onset=0, model="gru",
       planted="sensor sequences in Kelvin (~300 +- 20) fed to a GRU without standardisation",
       fix="the readings standardised (mean 0, std 1)")
def gru_kelvin_sensors(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    kelvin = 300.0 + 20.0 * Xtr
    inputs = (kelvin - kelvin.mean()) / kelvin.std() if fixed else kelvin
    for step, (x, y) in zip(range(120), batches(inputs, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("label_problem", onset=0, model="mlp-binary", fast=True, allow=("loss_divergence",),
       planted="BCEWithLogitsLoss with SVM-style -1/+1 labels: the loss is unbounded below",
       fix="0/1 labels")
def bce_plus_minus_one_labels(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    t = torch.where(Ytr % 2 == 0, 1.0, 0.0 if fixed else -1.0)[:, None]
    model = mlp([64, 32, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr, t, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class TinySegmenter(nn.Module):
    """Per-pixel logits from a 3-layer fully convolutional net."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(8, 1, 1))

    def forward(self, x):
        return self.net(x)


@fault("label_problem", onset=0, model="cnn-segmentation", fast=True, allow=("loss_divergence",),
       planted="segmentation masks loaded from 8-bit PNGs as 0/255 and fed to BCEWithLogitsLoss",
       fix="masks divided by 255: 0/1")
def cnn_mask_0_255(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, _, _, _ = digit_images()
    raw, _, _, _ = digit_images(normalize=False)
    masks = (raw > 8).float() * (1.0 if fixed else 255.0)   # 8-bit PNG masks: should have been / 255
    model = TinySegmenter()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    probe = attach(model)
    for step, (x, m) in zip(range(120), batches(Xtr, masks, 64, seed)):
        loss = loss_fn(model(x), m)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("label_problem", onset=0, model="mlp", fast=True,
       planted="labels read from the wrong column: every target is class 0",
       fix="the label column")
def mlp_constant_labels(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    labels = Ytr if fixed else torch.zeros_like(Ytr)
    model = mlp([64, 64, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr, labels, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("double_softmax", onset=0, model="mlp", fast=True,
       planted="nn.Softmax at the end of the model and nn.CrossEntropyLoss (which applies log-softmax itself)",
       fix="no nn.Softmax at the end: CrossEntropyLoss gets logits")
def mlp_softmax_then_ce(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 10], out_act=None if fixed else nn.Softmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class SoftmaxCNN(SmallCNN):
    def forward(self, x):
        return torch.softmax(super().forward(x), dim=1)


@fault("double_softmax", onset=0, model="cnn",
       planted="CNN whose forward returns torch.softmax(logits), trained with nn.CrossEntropyLoss",
       fix="forward returns the logits")
def cnn_functional_softmax_ce(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN() if fixed else SoftmaxCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class SoftmaxGRU(GRUClassifier):
    def forward(self, x):
        return F.softmax(super().forward(x), dim=-1)


@fault("double_softmax", onset=0, model="gru", fast=True,
       planted="GRU returning probabilities, loss F.cross_entropy handed over with probe.observe (loss kind unknown)",
       fix="forward returns the logits")
def gru_softmax_functional_ce(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_rows()
    model = GRUClassifier() if fixed else SoftmaxGRU()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 64, seed)):
        loss = F.cross_entropy(model(x), y)
        probe.observe(loss, targets=y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# Initialisation and BatchNorm
# ======================================================================================
@fault("bad_initialization", onset=0, model="mlp", fast=True, allow=NONFINITE + ("softmax_overflow",),
       planted="8 ReLU layers with weights from nn.init.normal_ (std 1, He would be ~0.18): x8 per layer",
       fix="He (kaiming_normal_) init")
def mlp_deep_relu_unit_normal(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64] + [64] * 8 + [10])
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight) if fixed else nn.init.normal_(m.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(100), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class DeepCNN(nn.Module):
    def __init__(self, depth: int = 6, c: int = 16):
        super().__init__()
        layers = [nn.Conv2d(1, c, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * 64, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@fault("bad_initialization", onset=0, model="cnn", fast=True,
       planted="6 conv layers initialised with std 0.01 (a value copied from a 2012 recipe): the signal dies out",
       fix="He (kaiming_normal_) init for the conv weights")
def cnn_deep_tiny_init(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = DeepCNN()
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight) if fixed else nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(100), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("frozen_batchnorm", onset=0, model="cnn", fast=True,
       planted="BatchNorm layers put in eval() after model.train() (a fine-tuning recipe) while training from scratch",
       fix="BatchNorm left in train mode")
def cnn_bn_frozen_from_scratch(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN(batchnorm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not fixed:
            m.eval()                                     # "freeze BN statistics"
    probe = attach(model)
    for step, (x, y) in zip(range(120), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


class BNMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                  nn.Linear(128, 128), nn.BatchNorm1d(128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.body(x))


@fault("frozen_batchnorm", onset=40, model="mlp",
       planted="validation at step 40 calls model.eval() and training never calls model.train() again",
       fix="model.train() after the validation")
def mlp_forgot_train_after_validation(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, Xva, Yva = digits()
    model = BNMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    model.train()
    for step, (x, y) in zip(range(160), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step == 39:
            model.eval()
            with torch.no_grad():
                loss_fn(model(Xva), Yva)
            if fixed:
                model.train()
    probe.detach()
    return probe


@fault("frozen_batchnorm", onset=0, model="cnn", fast=True,
       planted="only the backbone's BatchNorm layers frozen via model.features.eval() (a detection recipe)",
       fix="the backbone left in train mode")
def cnn_backbone_eval(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN(batchnorm=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    model.train()
    if not fixed:
        model.features.eval()
    for step, (x, y) in zip(range(120), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# converged: a long healthy run that finishes learning (info, and no warning)
# ======================================================================================
@fault("converged", onset=flat_from, model="mlp", fast=True, silent=True,
       planted="(none) a digits MLP trained with Adam until the training loss is ~0")
def mlp_trained_to_the_end(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(600), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("converged", onset=flat_from, model="regression", fast=True, silent=True,
       planted="(none) a smooth regression trained with Adam and a cosine schedule down to its noise floor")
def regression_trained_to_noise_floor(seed):
    torch.manual_seed(seed)
    X, y = wave_regression(4096, seed, noise=0.05)
    model = mlp([4, 64, 64, 1], act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=800)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(800), batches(X, y, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe


@fault("converged", onset=flat_from, model="cnn", silent=True,
       planted="(none) a BatchNorm CNN trained with SGD+momentum and step decay until it fits")
def cnn_trained_to_the_end(seed):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN(batchnorm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=200, gamma=0.3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(500), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    probe.detach()
    return probe
