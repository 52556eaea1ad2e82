"""One framework's run of the cross-backend contract: the same MLP, weights and batches.

``python tests/contract/record.py torch|tensorflow|paddle OUT.npz`` trains the model with
the probe attached and saves every StepRecord field (and the run's facts) to ``OUT.npz``;
``tests/test_contract.py`` runs the three in processes of their own and compares them. Only
the framework named is imported (TensorFlow then Paddle in one process segfaults).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

STEPS, BATCH, IN, HIDDEN, CLASSES = 24, 32, 8, 16, 4
LR = 0.1
CONFIG = dict(flush_every=8, activation_every=4, rules_every=8)


def weights() -> list[np.ndarray]:
    """Kernel (in, out) and bias of each of the three dense layers."""
    rng = np.random.default_rng(0)
    out = []
    for a, b in ((IN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)):
        out.append((rng.standard_normal((a, b)) / np.sqrt(a)).astype("float32"))
        out.append((0.1 * rng.standard_normal(b)).astype("float32"))
    return out


def batches() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((STEPS, BATCH, IN)).astype("float32") * 2.0 + 0.5
    y = (np.argmax(x[..., :CLASSES], -1) + rng.integers(0, 2, (STEPS, BATCH))) % CLASSES
    return x, y.astype("int64")


def run_torch(lossprobe):
    import torch
    from torch import nn
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
                          nn.Linear(HIDDEN, CLASSES))
    with torch.no_grad():
        for layer, (k, b) in zip([model[0], model[2], model[4]], zip(*[iter(weights())] * 2)):
            layer.weight.copy_(torch.from_numpy(k.T.copy()))
            layer.bias.copy_(torch.from_numpy(b))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    probe = lossprobe.attach(model, optimizer=opt, sinks=[], config=lossprobe.Config(**CONFIG))
    for x, y in zip(*batches()):
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad(); loss.backward(); opt.step()
    probe.detach()
    return probe


def run_tensorflow(lossprobe):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import keras
    tf.config.threading.set_intra_op_parallelism_threads(1)
    model = keras.Sequential([keras.Input((IN,)), keras.layers.Dense(HIDDEN, activation="relu"),
                              keras.layers.Dense(HIDDEN, activation="tanh"), keras.layers.Dense(CLASSES)])
    model.set_weights(weights())
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    probe = lossprobe.attach(model, sinks=[], config=lossprobe.Config(**CONFIG))
    x, y = batches()
    model.fit(x.reshape(-1, IN), y.reshape(-1), batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    probe.detach()
    return probe


def run_paddle(lossprobe):
    import paddle
    from paddle import nn
    paddle.set_device("cpu")
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
                          nn.Linear(HIDDEN, CLASSES))
    for layer, (k, b) in zip([model[0], model[2], model[4]], zip(*[iter(weights())] * 2)):
        layer.weight.set_value(k)
        layer.bias.set_value(b)
    opt = paddle.optimizer.SGD(parameters=model.parameters(), learning_rate=LR)
    loss_fn = nn.CrossEntropyLoss()
    probe = lossprobe.attach(model, optimizer=opt, sinks=[], config=lossprobe.Config(**CONFIG))
    for x, y in zip(*batches()):
        yt = paddle.to_tensor(y)
        loss = loss_fn(model(paddle.to_tensor(x)), yt)
        loss.backward(); opt.step(); opt.clear_grad()
        probe.observe(loss, targets=yt)       # a loss outside the model: its targets in one line
    probe.detach()
    return probe


def save(probe, path: str) -> None:
    from lossprobe.record import ACTIVATION_FIELDS, MASK_FIELDS, PARAM_FIELDS, SCALAR_FIELDS
    h = probe.history
    arrays = {"steps": h.steps()}
    arrays.update({f: h.series(f) for f in SCALAR_FIELDS})
    arrays.update({f: h.matrix(f) for f in PARAM_FIELDS + MASK_FIELDS + ACTIVATION_FIELDS})
    facts = dict(h.facts.to_dict(), kinds=list(probe.layout.kinds), n_params=len(probe.layout.params),
                 health=probe.health)
    np.savez(path, facts=json.dumps(facts), **arrays)


if __name__ == "__main__":
    framework, out = sys.argv[1], sys.argv[2]
    import lossprobe
    save({"torch": run_torch, "tensorflow": run_tensorflow, "paddle": run_paddle}[framework](lossprobe), out)
