"""Set-up checks in Paddle: a loss that broadcasts its input against its targets (predictions
squeezed to (B,) against (B, 1) targets) is a label_problem; the same loop with equal shapes
learns and stays silent."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

import lossprobe

paddle.set_device("cpu")


class _Squeeze(nn.Layer):
    """The slip: a (B, 1) regression output flattened to (B,) "to match" the labels."""

    def forward(self, x):
        return x.squeeze(-1)


def _train(squeeze: bool):
    """``paddle.Model.fit`` with an MSELoss (the loss layer Paddle's high-level API calls; a
    dygraph loop's own loss call is not seen before backward)."""
    paddle.seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 8)).astype("float32")
    y = (np.sin(x @ np.linspace(1, -1, 8)) + 0.05 * rng.standard_normal(1024)).astype("float32")[:, None]
    layers = [nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)] + ([_Squeeze()] if squeeze else [])
    net = nn.Sequential(*layers)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Adam(learning_rate=3e-3, parameters=net.parameters()), nn.MSELoss())
    probe = lossprobe.attach(model, sinks=[])
    data = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
    model.fit(data, batch_size=64, epochs=9, shuffle=True, verbose=0)
    probe.detach()
    return probe


@pytest.mark.parametrize("squeeze", [True, False])
def test_a_broadcasting_loss_is_a_label_problem_and_equal_shapes_are_silent(squeeze):
    probe = _train(squeeze)
    found = {f.code: f for f in probe.findings if f.severity != "info"}
    if squeeze:
        assert "label_problem" in found
        assert "(64,) against (64, 1)" in found["label_problem"].evidence["broadcast"]
    else:
        loss = probe.history.series("loss")
        assert np.nanmedian(loss[-20:]) < 0.7 * np.nanmedian(loss[:10])   # it learns
        assert not found, {c: f.evidence for c, f in found.items()}
