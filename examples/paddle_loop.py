"""lossprobe with Paddle: a dygraph loop and ``paddle.Model.fit``, healthy and faulty.

Run it (CPU, a few seconds)::

    .venv/bin/python examples/paddle_loop.py            # prints each run's health and findings
    .venv/bin/python examples/paddle_loop.py --report   # also writes paddle-*.html reports

1. The dygraph loop needs one extra line, ``probe.observe(loss, targets=y)``: Paddle has no
   global layer hook, so a loss computed outside the model is handed over explicitly.
   Losses observed under ``net.eval()`` / ``paddle.no_grad()`` are validation losses.
2. ``paddle.Model.fit`` needs nothing beyond ``lossprobe.attach(model)``: the loss given to
   ``prepare()`` and the ``eval_data`` validation loss are captured by the probe itself.

The faulty runs plant a classic mistake: a first-layer bias so negative that every ReLU unit
is dead (``dead_relu``), and a learning rate far too high for an MSE regression
(``exploding_gradients``).
"""
from __future__ import annotations

import sys

import numpy as np
import paddle
from paddle import nn
from sklearn.datasets import load_digits

import lossprobe


def digits():
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return (x[order] / 16.0).astype("float32"), y[order].astype("int64")


def mlp(dead: bool = False) -> nn.Layer:
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    if dead:  # the planted fault: no input can lift the first layer above zero
        net[0].bias.set_value(paddle.full([64], -20.0, dtype="float32"))
    return net


def dygraph_loop(dead: bool, report: bool) -> lossprobe.Probe:
    """A plain loop: backward, step, clear_grad, plus one observe() line."""
    paddle.seed(0)
    x, y = digits()
    net = mlp(dead)
    opt = paddle.optimizer.Adam(learning_rate=1e-3, parameters=net.parameters())
    loss_fn = nn.CrossEntropyLoss()
    xv, yv = paddle.to_tensor(x[1400:]), paddle.to_tensor(y[1400:])
    with lossprobe.attach(net, optimizer=opt, sinks=[]) as probe:  # sinks=["console", "mlflow", "wandb"]
        for epoch in range(4):
            for i in range(0, 1400, 64):
                xb, yb = paddle.to_tensor(x[i:i + 64]), paddle.to_tensor(y[i:i + 64])
                loss = loss_fn(net(xb), yb)
                loss.backward()
                opt.step()
                opt.clear_grad()
                probe.observe(loss, targets=yb)        # the one extra line
            net.eval()
            with paddle.no_grad():
                probe.observe(loss_fn(net(xv), yv))   # eval mode: recorded as validation loss
            net.train()
    if report:
        probe.save_report(f"paddle-dygraph-{'dead' if dead else 'healthy'}.html")
    return probe


class Arrays(paddle.io.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __len__(self):
        return len(self.x)


def model_fit(exploding: bool, report: bool) -> lossprobe.Probe:
    """The high-level API: attach to the paddle.Model, nothing else changes."""
    paddle.seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((384, 16)).astype("float32")
    y = (x @ rng.standard_normal((16, 1)) + 0.1 * rng.standard_normal((384, 1))).astype("float32")
    net = nn.Sequential(nn.Linear(16, 1))
    model = paddle.Model(net)
    lr = 1.2 if exploding else 0.05  # above 2 / (largest curvature) every step overshoots further
    model.prepare(paddle.optimizer.SGD(learning_rate=lr, parameters=net.parameters()), nn.MSELoss())
    with lossprobe.attach(model, sinks=[]) as probe:
        model.fit(Arrays(x[:256], y[:256]), eval_data=Arrays(x[256:], y[256:]), batch_size=32,
                  epochs=6, verbose=0)
    if report:
        probe.save_report(f"paddle-fit-{'exploding' if exploding else 'healthy'}.html")
    return probe


def show(title: str, probe: lossprobe.Probe) -> None:
    print(f"{title:<32} health={probe.health:<8} steps={probe.history.n_steps}")
    for f in probe.findings:
        print(f"    {f.severity:<8} {f.code:<22} from step {f.step}: {f.message}")


if __name__ == "__main__":
    report = "--report" in sys.argv
    show("dygraph loop, healthy", dygraph_loop(dead=False, report=report))
    show("dygraph loop, dead first layer", dygraph_loop(dead=True, report=report))
    show("Model.fit, healthy", model_fit(exploding=False, report=report))
    show("Model.fit, learning rate 1.2", model_fit(exploding=True, report=report))
