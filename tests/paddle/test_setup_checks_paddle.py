"""Set-up checks in Paddle, each planted in a real training run and beside its corrected twin
(the same run with the one mistake fixed), which must learn and stay silent:

* ``label_problem``: an element-wise loss that broadcasts its input against its targets
  (predictions squeezed to (B,) against (B, 1) targets: every prediction compared with every
  target of the batch);
* ``output_activation_mismatch``: a softmax head fed to ``NLLLoss`` (which expects
  log-probabilities);
* ``excessive_dropout``: ``nn.Dropout(0.9)`` meant as a keep-probability;
* ``unscaled_targets``: regression targets in raw units (~2e5) under MSE;
* ``stale_gradients``: a dygraph loop that never calls ``clear_grad()``;
* ``zero_gradients``: predictions rounded before the loss.

The loss layer is seen when Paddle's high-level API calls it (``paddle.Model.fit``); a dygraph
loop's own loss call is seen only at ``backward()``, so the checks that read the loss layer run
under ``fit``.
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

import lossprobe

paddle.set_device("cpu")


def _regression(n=1024, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype("float32")
    y = (np.sin(x @ np.linspace(1, -1, d)) + 0.05 * rng.standard_normal(n)).astype("float32")[:, None]
    return x, y


def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.data / 16.0).astype("float32"), d.target.astype("int64")[:, None]


class _Squeeze(nn.Layer):
    """The slip: a (B, 1) regression output flattened to (B,) "to match" the labels."""

    def forward(self, x):
        return x.squeeze(-1)


class _Round(nn.Layer):
    """Rounded predictions ("the labels are 0/1"): round has zero gradient everywhere."""

    def forward(self, x):
        return paddle.round(x)


def fit(net: nn.Layer, x, y, loss, *, lr=3e-3, epochs=6, batch=64):
    paddle.seed(0)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Adam(learning_rate=lr, parameters=net.parameters()), loss)
    probe = lossprobe.attach(model, sinks=[])
    data = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
    model.fit(data, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
    probe.detach()
    return probe


def dygraph(net: nn.Layer, x, y, loss_fn, *, clear=True, lr=3e-3, steps=150, batch=64):
    paddle.seed(0)
    opt = paddle.optimizer.Adam(learning_rate=lr, parameters=net.parameters())
    probe = lossprobe.attach(net, optimizer=opt, sinks=[])
    rng = np.random.default_rng(0)
    for _ in range(steps):
        i = rng.integers(0, len(x), batch)
        loss = loss_fn(net(paddle.to_tensor(x[i])), paddle.to_tensor(y[i]))
        loss.backward()
        opt.step()
        if clear:
            opt.clear_grad()
    probe.detach()
    return probe


def broadcast(fixed):
    x, y = _regression()
    layers = [nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)] + ([] if fixed else [_Squeeze()])
    return fit(nn.Sequential(*layers), x, y, nn.MSELoss(), epochs=9)


def softmax_into_nll(fixed):
    x, y = _digits()
    head = nn.LogSoftmax() if fixed else nn.Softmax()
    return fit(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10), head), x, y, nn.NLLLoss())


def keep_prob_as_drop_rate(fixed):
    x, y = _digits()
    p = 0.1 if fixed else 0.9
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(p), nn.Linear(128, 128), nn.ReLU(),
                        nn.Dropout(p), nn.Linear(128, 10))
    return fit(net, x, y, nn.CrossEntropyLoss())


def raw_price_targets(fixed):
    x, y = _regression()
    price = 2e5 + 5e4 * y
    target = ((price - price.mean()) / price.std()).astype("float32") if fixed else price.astype("float32")
    return fit(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), x, target, nn.MSELoss(), epochs=9)


def no_clear_grad(fixed):
    x, y = _digits()
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return dygraph(net, x, y, nn.CrossEntropyLoss(), clear=fixed, lr=1e-3)


def rounded_predictions(fixed):
    x, y = _digits()
    odd = (y % 2).astype("float32")
    layers = [nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid()] + ([] if fixed else [_Round()])
    return fit(nn.Sequential(*layers), x, odd, nn.MSELoss())


PLANTS = {
    "label_problem": broadcast,
    "output_activation_mismatch": softmax_into_nll,
    "excessive_dropout": keep_prob_as_drop_rate,
    "unscaled_targets": raw_price_targets,
    "stale_gradients": no_clear_grad,
    "zero_gradients": rounded_predictions,
}


def alarms(probe) -> dict:
    return {f.code: f.evidence for f in probe.findings if f.severity != "info" and not f.resolved}


@pytest.mark.parametrize("code", sorted(PLANTS))
def test_planted_fault_is_named(code):
    probe = PLANTS[code](fixed=False)
    found = {f.code for f in probe.findings if f.severity != "info"}
    assert code in found, f"{code} not found: {[(f.code, f.severity, f.evidence) for f in probe.findings]}"


@pytest.mark.parametrize("code", sorted(PLANTS))
def test_corrected_twin_learns_and_stays_silent(code):
    probe = PLANTS[code](fixed=True)
    loss = probe.history.series("loss")
    loss = loss[np.isfinite(loss)]
    assert np.median(loss[-20:]) < 0.7 * np.median(loss[:10]), "the corrected twin does not learn"
    assert not alarms(probe), alarms(probe)
