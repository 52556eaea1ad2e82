"""Keras ``model.fit`` under ``tf.distribute.MirroredStrategy`` on two logical CPU devices
(tests/tf/conftest.py splits the CPU before TensorFlow starts): one record per step made
from both replicas, the global gradient's norm, the fault named, the healthy twin silent.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
import keras
from sklearn.datasets import load_digits

import lossprobe
from lossprobe.backends.tf_dist import worker_rank

pytestmark = pytest.mark.tensorflow

_X, _Y = load_digits(return_X_y=True)
X, Y = (_X[:1024] / 16.0).astype("float32"), _Y[:1024].astype("int64")
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BATCH = 64   # the global batch: 32 per replica


@pytest.fixture(scope="module")
def strategy():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "tests/tf/conftest.py should have split the CPU in two"
    return tf.distribute.MirroredStrategy(devices)


def deep(act: str) -> keras.Model:
    """Ten hidden layers: with sigmoid the first layers' gradients vanish, with ReLU they do not."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(64, activation=act) for _ in range(10)]
                            + [keras.layers.Dense(10)])


def mirrored_fit(strategy, act: str, epochs: int) -> lossprobe.Probe:
    with strategy.scope():
        model = deep(act)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=CE)
    probe = lossprobe.attach(model, sinks=[])
    model.fit(X, Y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    probe.detach()
    return probe


def codes(probe) -> set[str]:
    return {f.code for f in probe.findings if f.severity in ("warning", "critical")}


def test_step0_records_the_global_batch_and_the_global_gradient(strategy):
    probe = mirrored_fit(strategy, "sigmoid", epochs=1)
    h = probe.history
    assert probe.backend.replicas.in_sync == 2 and h.n_steps == len(X) // BATCH
    # one host read per flush (and the last at fit's end), never one per step
    assert 1 <= probe.backend.n_host_reads <= h.n_steps // probe.config.flush_every + 1
    # the same weights on the same (unshuffled) first global batch, without the strategy
    reference = deep("sigmoid")
    with tf.GradientTape() as tape:
        loss = CE(Y[:BATCH], reference(X[:BATCH], training=True))
    grads = tape.gradient(loss, reference.trainable_variables)
    assert h.series("grad_norm")[0] == pytest.approx(float(tf.linalg.global_norm(grads)), rel=0.01)
    assert h.series("loss")[0] == pytest.approx(float(loss), rel=0.01)
    assert h.series("batch_size")[0] == BATCH            # both replicas' halves
    assert np.isfinite(h.series("grad_norm")).all() and np.isfinite(h.matrix("param_grad_norms")).all()
    assert np.isfinite(h.matrix("act_sat")[0]).all()    # step 0 is sampled: activations measured


def test_planted_fault_is_named_and_healthy_twin_is_silent(strategy):
    assert "vanishing_gradients" in codes(mirrored_fit(strategy, "sigmoid", epochs=3))
    healthy = mirrored_fit(strategy, "relu", epochs=3)
    assert codes(healthy) == set() and healthy.health == "healthy"
    loss = healthy.history.series("loss")
    assert np.mean(loss[-5:]) < 0.8 * math.log(10)        # the twin learns: well below chance


@pytest.mark.parametrize("cluster, task, rank", [
    ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 0}, 0),
    ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 1}, 1),
    ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, 0),
    ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, 1),
])
def test_only_the_chief_is_rank_0(monkeypatch, cluster, task, rank):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert worker_rank(tf.distribute.get_strategy()) == (rank, 2)
