"""Foundation codes on real PyTorch runs: each fires on its planted fault, and a healthy
run of the same model stays silent."""
import math

import pytest
import torch
from torch import nn

import lossprobe
from torch_helpers import X, Y, cnn, codes, mlp, train

FLT_MIN = 1.17549435e-38


class SqrtInLoss(nn.CrossEntropyLoss):
    """A loss with sqrt(0) in it: finite forward, NaN gradient (d sqrt / dx = inf at 0)."""

    def forward(self, out, y):
        return super().forward(out, y) + torch.sqrt((out * 0).sum().clamp_min(0))


class CaffeSoftmaxLoss(nn.CrossEntropyLoss):
    """log(softmax) clamped at FLT_MIN, as Caffe does: the 87.3365 pin when logits overflow."""

    def forward(self, out, y):
        p = torch.softmax(out, -1).gather(1, y[:, None]).clamp_min(FLT_MIN)
        return -torch.log(p).mean()


class BrokenAfter(nn.CrossEntropyLoss):
    """A loss that becomes NaN from step ``at`` on (log of a negative number in the user's loss)."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, out, y):
        self.calls += 1
        loss = super().forward(out, y)
        return loss + torch.log(torch.tensor(-1.0)) if self.calls > self.at else loss


def _scaled_last(model, factor):
    with torch.no_grad():
        model[-1].weight.mul_(factor)
    return model


def _biases(model, value):
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear) and m is not model[-1]:
                m.bias.fill_(value)
    return model


def _random_labels(y, step):
    return torch.randint(0, 10, y.shape, generator=torch.Generator().manual_seed(step))


FAULTS = {
    "nan_loss": lambda: train(mlp(), loss_fn=BrokenAfter(40)),
    "nonfinite_gradients": lambda: train(mlp(), loss_fn=SqrtInLoss()),
    "nonfinite_inputs": lambda: train(mlp(), x_fn=lambda x, s: x.index_fill(0, torch.tensor([3]), float("nan")) if s == 60 else x),
    "softmax_overflow": lambda: train(_scaled_last(mlp(), 1e4), lr=1e-4),
    "softmax_overflow/87.3365": lambda: train(_scaled_last(mlp(), 1e4), lr=1e-4, loss_fn=CaffeSoftmaxLoss()),
    "chance_level_loss": lambda: train(mlp(), y_fn=_random_labels, steps=200),
    # a linear regression on raw 0..16 pixels with SGD past its stability limit: the classic
    # exponential blow-up that ends in NaN
    "exploding_gradients": lambda: train(nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 1)), opt="sgd", lr=2e-3,
                                         loss_fn=nn.MSELoss(), x_fn=lambda x, s: x * 16,
                                         y_fn=lambda y, s: y.float()[:, None], steps=60),
    "vanishing_gradients": lambda: train(mlp(depth=10, act=nn.Sigmoid), opt="sgd", lr=0.01, steps=80),
    "dead_relu": lambda: train(_biases(mlp(), -5.0), steps=80),
    # raw 0..255 pixels straight into sigmoid units
    "saturated_activations": lambda: train(mlp(act=nn.Sigmoid), x_fn=lambda x, s: x * 255, opt="sgd", lr=1e-3, steps=80),
    "frozen_parameters": lambda: _train_partial_optimizer(),
    # a schedule that decays the learning rate 10000x at step 40 (Adam): the loss freezes mid-way
    "loss_plateau": lambda: train(mlp(), lr=1e-3, steps=200, schedule=lambda s: 1e-3 if s < 40 else 1e-7),
    # a sign bug: gradient ascent on the loss
    "loss_divergence": lambda: train(mlp(), opt="sgd", lr=0.1, ascent=True, steps=150),
}


def _scaled_all(model, factor):
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(factor)
    return model


def _train_partial_optimizer():
    model = mlp()
    opt = torch.optim.Adam(list(model[2].parameters()) + list(model[4].parameters()), lr=1e-3)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[])
    loss_fn = nn.CrossEntropyLoss()
    for step in range(60):
        idx = torch.arange(step * 16, step * 16 + 64) % 1400
        loss = loss_fn(model(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.detach()
    return probe


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_planted_fault_is_diagnosed(name):
    code = name.split("/")[0]
    probe = FAULTS[name]()
    found = codes(probe)
    assert code in found, f"{code} not found; got {[(f.code, f.evidence) for f in probe.findings]}"
    f = next(f for f in probe.findings if f.code == code)
    assert f.evidence and f.causes and f.fixes and f.message
    assert probe.health in ("warning", "critical")


def test_nonfinite_gradients_names_first_layer():
    probe = FAULTS["nonfinite_gradients"]()
    f = next(f for f in probe.findings if f.code == "nonfinite_gradients")
    assert f.evidence["first_layer"] == "0.weight"


def test_softmax_pin_evidence_is_87_3365():
    probe = FAULTS["softmax_overflow/87.3365"]()
    f = next(f for f in probe.findings if f.code == "softmax_overflow")
    assert f.evidence.get("expected_pin") == pytest.approx(-math.log(FLT_MIN), abs=1e-3) or \
        f.evidence.get("max_abs_logit", 0) >= 88


HEALTHY = {
    "mlp-adam": lambda: train(mlp(), steps=250, val_every=50),
    "mlp-functional-loss": lambda: train(mlp(), steps=200, functional=True),
    "mlp-sgd": lambda: train(mlp(), opt="sgd", lr=0.05, steps=250),
    "cnn-adam": lambda: train(cnn(), images=True, steps=150, val_every=50),
    "deep-tanh": lambda: train(mlp(depth=4, act=nn.Tanh), steps=200),
    "mlp-no-optimizer-given": lambda: train(mlp(), steps=150, give_optimizer=False),
}


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_run_is_silent(name):
    probe = HEALTHY[name]()
    bad = [(f.code, f.step, f.evidence) for f in probe.findings if f.severity != "info"]
    assert probe.health == "healthy", bad
    assert probe.history.n_steps > 100
