"""Faulty scripts whose mistake is in the set-up (the model's head, the loss, the loop), with
the codes that name it: the checks that read the model and loss as well as the curves.

Same conventions as :mod:`zoo.faults`: each script is what a user could plausibly have
written, bug included.
"""
from __future__ import annotations

import torch
from torch import nn

from . import fault
from .common import SmallCNN, attach, batches, digit_images, digits, mlp, wave_regression

BINARY = ("chance_level_loss", "loss_plateau")


def _even_odd(y: torch.Tensor) -> torch.Tensor:
    return (y % 2).float()[:, None]


# ======================================================================================
# zero_gradients
# ======================================================================================
@fault("output_activation_mismatch", "zero_gradients", onset=0, model="mlp-binary", fast=True,
       planted="a one-unit output with nn.Softmax before BCELoss: the output is always exactly 1",
       fix="nn.Sigmoid on the one unit")
def mlp_one_unit_softmax_bce(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    head = nn.Sigmoid() if fixed else nn.Softmax(dim=1)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1), head)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCELoss()
    probe = attach(model)
    for step, (x, y) in zip(range(60), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), _even_odd(y))
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("zero_gradients", onset=0, model="mlp-binary", fast=True,
       planted="predictions rounded to 0/1 before an MSE loss: round() has zero gradient everywhere",
       fix="the loss on the sigmoid outputs themselves (round only to report accuracy)")
def mlp_rounded_predictions_mse(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, y) in zip(range(60), batches(Xtr, Ytr, 64, seed)):
        pred = torch.sigmoid(model(x))
        if not fixed:
            pred = torch.round(pred)                     # "the labels are 0/1, so round the output"
        loss = loss_fn(pred, _even_odd(y))
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("zero_gradients", onset=0, model="mlp",
       planted="a padding mask inverted (y == PAD instead of y != PAD): every sample's loss is masked out",
       fix="mask = (y != PAD)")
def mlp_inverted_padding_mask(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    PAD = -100
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    probe = attach(model)
    for step, (x, y) in zip(range(60), batches(Xtr, Ytr, 64, seed)):
        per_sample = loss_fn(model(x), y)
        mask = ((y != PAD) if fixed else (y == PAD)).float()   # meant: y != PAD
        loss = (per_sample * mask).sum() / mask.sum().clamp_min(1.0)
        probe.observe(loss, targets=y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# output_activation_mismatch
# ======================================================================================
@fault("output_activation_mismatch", onset=0, model="mlp-binary", fast=True,
       planted="nn.Sigmoid() kept at the end of the model while the loss is BCEWithLogitsLoss",
       fix="no final nn.Sigmoid: the loss applies it")
def mlp_sigmoid_before_bce_with_logits(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1), *([] if fixed else [nn.Sigmoid()]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), _even_odd(y))
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("output_activation_mismatch", onset=0, model="mlp", fast=True,
       allow=("loss_divergence", "exploding_gradients", "softmax_overflow"),  # an unbounded loss: logits grow without end
       planted="NLLLoss on the raw outputs (the log_softmax forgotten): the loss falls without bound",
       fix="nn.LogSoftmax(dim=1) as the model's last layer")
def mlp_nll_on_raw_logits(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 10], out_act=nn.LogSoftmax(dim=1) if fixed else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.NLLLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# excessive_dropout
# ======================================================================================
@fault("excessive_dropout", onset=0, model="mlp", fast=True,
       planted="nn.Dropout(0.9) after each hidden layer: a TF1 keep_prob of 0.9 passed as torch's drop rate",
       fix="nn.Dropout(1 - keep_prob)")
def mlp_keep_prob_as_drop_rate(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    keep_prob = 0.9
    p = 1 - keep_prob if fixed else keep_prob
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(p),
                          nn.Linear(64, 64), nn.ReLU(), nn.Dropout(p), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(200), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# stale_gradients
# ======================================================================================
@fault("stale_gradients", onset=1, model="mlp", fast=True,
       allow=("loss_divergence", "exploding_gradients", "nan_loss", "nonfinite_gradients", "softmax_overflow"),
       planted="optimizer.zero_grad() missing from an SGD loop: every step adds all earlier gradients again",
       fix="opt.zero_grad() before loss.backward()")
def mlp_sgd_without_zero_grad(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        if fixed:
            opt.zero_grad()
        loss.backward(); opt.step()
    probe.detach()
    return probe


@fault("stale_gradients", onset=1, model="cnn",
       planted="zero_grad() missing under Adam: its normalised steps hide the growing gradient, the loss still falls",
       fix="opt.zero_grad() before loss.backward()")
def cnn_adam_without_zero_grad(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digit_images()
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        if fixed:
            opt.zero_grad()
        loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# unscaled_targets
# ======================================================================================
@fault("unscaled_targets", onset=0, model="regression", fast=True,
       allow=("loss_divergence", "exploding_gradients"),
       planted="house-price-like targets in raw units (~2e5) fed to an MLP with MSE and Adam",
       fix="targets standardised (and predictions scaled back)")
def regression_raw_price_targets(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(2048, seed)
    price = 2e5 + 5e4 * y                       # what the data file holds
    target = (price - price.mean()) / price.std() if fixed else price
    model = mlp([4, 32, 32, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    for step, (x, t) in zip(range(150), batches(X, target, 64, seed)):
        loss = loss_fn(model(x), t)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# label_problem: shapes that broadcast in the loss
# ======================================================================================
@fault("label_problem", onset=0, model="regression", fast=True, allow=("loss_plateau",),
       planted="predictions squeezed to (B,) against targets of shape (B, 1): MSELoss broadcasts them "
               "to (B, B), comparing every prediction with every target (torch only warns)",
       fix="predictions and targets of the same shape (no squeeze)")
def regression_squeezed_predictions(seed, fixed: bool = False):
    torch.manual_seed(seed)
    X, y = wave_regression(2048, seed)          # y: (n, 1)
    model = mlp([4, 32, 32, 1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.MSELoss()
    probe = attach(model)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # torch's broadcast warning: easy to miss in a log
        for step, (x, t) in zip(range(150), batches(X, y, 64, seed)):
            pred = model(x) if fixed else model(x).squeeze()
            loss = loss_fn(pred, t)
            opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


# ======================================================================================
# frozen_parameters: layers the module does not register
# ======================================================================================
class _ListMLP(nn.Module):
    """Hidden layers kept in a plain Python list: model.parameters() sees only the head."""

    def __init__(self, registered: bool):
        super().__init__()
        hidden = [nn.Linear(64, 64), nn.Linear(64, 64)]
        self.hidden = nn.ModuleList(hidden) if registered else hidden
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


@fault("frozen_parameters", onset=0, model="mlp", fast=True, allow=("loss_plateau",),
       planted="hidden layers kept in a Python list instead of nn.ModuleList: the optimizer, built from "
               "model.parameters(), never sees them and they keep their random weights",
       fix="nn.ModuleList")
def mlp_layers_in_python_list(seed, fixed: bool = False):
    torch.manual_seed(seed)
    Xtr, Ytr, _, _ = digits()
    model = _ListMLP(registered=fixed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = attach(model)
    for step, (x, y) in zip(range(150), batches(Xtr, Ytr, 64, seed)):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe
