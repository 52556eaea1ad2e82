"""TensorFlow distribution strategies for the Keras backend: one probe state per replica.

Under ``tf.distribute.MirroredStrategy`` (and ``MultiWorkerMirroredStrategy``) Keras runs
the compiled training step once per replica. The probe's ring buffer and step counter
are then sync-on-read variables (``synchronization=ON_READ``): every replica writes its
own copy inside the step, no replica waits for another, and nothing is exchanged per step.
At flush the host reads every local replica's ring in the one device->host copy and
combines the rows of each step into one record, each statistic as
:data:`lossprobe.capture.spec.RANK_COMBINE` declares it (loss: mean; batch size and
non-finite counts: sum; maxima: max; LOCAL statistics: the first replica's).

Gradient norms are read *after* the all-reduce that Keras' optimizer runs before applying
them (the optimizer's ``_all_reduce_sum_gradients``): the reduced gradient is the
gradient of the global batch's loss and is the same on every replica, so its norm needs
no combining. The gradients each replica computes before the all-reduce are partial sums
(each is the gradient of 1/N of the loss on 1/N of the batch); a combination of their
norms is not the global gradient's norm, so they are never recorded.

Keras scales each replica's loss by 1/N before differentiating (N replicas in sync, so
that the summed gradients are those of the mean loss); the recorded loss is multiplied
back by N, as Keras' own loss metric does, before the replicas' losses are averaged.

Example::

    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = build_model()
        model.compile(optimizer="adam", loss=loss)
    probe = lossprobe.attach(model)          # finds model.distribute_strategy itself
    model.fit(dataset, epochs=3)
    probe.detach()

With the default (no) strategy every call here is a plain single-device one.

``MultiWorkerMirroredStrategy``: the chief (task "chief", else worker 0) is rank 0 and
the only publisher; the others keep no sink. There is no cross-worker exchange: each
worker combines its own replicas, so its loss and batch size are those of its shard,
while gradient norms (read after the all-reduce) are global. With one worker this is
exact. (Two local workers could not be tried end to end: on TF 2.21 / Keras 3.15,
``model.fit`` under a two-worker strategy fails before the first step, without lossprobe,
in Keras' ``_maybe_symbolic_build``: ``strategy.reduce("MEAN", batch)`` raises
"Attempt to convert a value (PerReplica:...) with an unsupported type".)

Keras adds regularisation losses unscaled by 1/N; the recorded loss of a model with
regularisers is then Keras' own (``fit``'s ``loss`` log), which counts them N times.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import tensorflow as tf


class Replicas:
    """The distribution strategy a Keras model trains under, as the probe needs it."""

    def __init__(self, strategy: Any):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.in_sync = int(getattr(self.strategy, "num_replicas_in_sync", 1) or 1)
        self.rank, self.world = worker_rank(self.strategy)

    @classmethod
    def of(cls, model: Any) -> "Replicas":
        return cls(getattr(model, "distribute_strategy", None))

    @property
    def distributed(self) -> bool:
        """More than one replica takes part in each step (here or on other workers)."""
        return self.in_sync > 1

    def can_create_state(self) -> bool:
        """Variables can be made now: not while a replica's step is being traced."""
        ctx = tf.distribute.get_replica_context()   # None: in the strategy's cross-replica context
        return not self.distributed or ctx is None or ctx.strategy is not self.strategy

    def state_var(self, initial: Callable[[], tf.Tensor], name: str) -> tf.Variable:
        """A probe variable with one copy per replica (a plain variable without a strategy),
        made outside any function being traced; ``initial()`` gives its value.
        A read inside a replica's step reads that replica's copy, a read outside it the first
        replica's; an ``assign`` outside the step sets every copy."""
        with tf.init_scope(), self.strategy.scope():
            return tf.Variable(initial(), trainable=False, name=name,
                               synchronization=tf.VariableSynchronization.ON_READ,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def copies(self, var: tf.Variable) -> tuple:
        """The per-replica copies of a probe variable on this worker (one without a strategy)."""
        return tuple(self.strategy.experimental_local_results(var))

    def local(self, var: tf.Variable) -> tf.Variable:
        """This replica's own copy (for writes sync-on-read variables do not offer, such as
        ``scatter_update``), while a replica's step is being traced; else ``var``'s first copy."""
        parts = self.copies(var)
        ctx = tf.distribute.get_replica_context()
        if len(parts) == 1 or ctx is None:
            return parts[0]
        rid = tf.get_static_value(ctx.replica_id_in_sync_group)
        if rid is None:
            raise NotImplementedError("the replica id is not known while tracing (not a mirrored strategy)")
        # worker-major replica ids: every worker of a MultiWorkerMirroredStrategy has as many replicas
        return parts[int(rid) % len(parts)]

    def unscale_loss(self, loss: tf.Tensor) -> tf.Tensor:
        """A replica's loss as its batch's mean loss (Keras divides it by the replicas in sync)."""
        return loss * float(self.in_sync) if self.distributed else loss


def worker_rank(strategy: Any) -> tuple[int, int]:
    """(this worker's rank, number of workers): (0, 1) for a single-process strategy. The
    chief (task "chief", else worker 0) is rank 0, so that only it publishes."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or not task_type:
        return _tf_config_rank()
    try:
        cluster = resolver.cluster_spec().as_dict()
    except Exception:
        return _tf_config_rank()
    return _rank_in(cluster, str(task_type), int(getattr(resolver, "task_id", 0) or 0))


def _tf_config_rank() -> tuple[int, int]:
    """(rank, workers) from ``TF_CONFIG`` (the multi-worker launcher's environment)."""
    try:
        conf = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
        task = conf.get("task") or {}
        return _rank_in(conf.get("cluster") or {}, str(task.get("type", "")), int(task.get("index", 0)))
    except (ValueError, TypeError, AttributeError):
        return 0, 1


def _rank_in(cluster: dict, task_type: str, task_id: int) -> tuple[int, int]:
    chiefs = len(cluster.get("chief", []) or [])
    workers = len(cluster.get("worker", []) or [])
    world = max(1, chiefs + workers)
    if task_type == "chief":
        return 0, world
    if task_type == "worker":
        return chiefs + task_id, world
    return 0, 1   # evaluator / parameter server / none: not a training worker
