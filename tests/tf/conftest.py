"""TensorFlow tests run in their own pytest process (TensorFlow then Paddle in one process
segfaults): ``python -m pytest tests/tf -q``."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Small models on 2 cores: one intra-op thread is faster and keeps runs deterministic.
# (Must be set before TensorFlow runs its first op.)
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
# Two logical CPU devices, for the MirroredStrategy tests (ops without a strategy use the first).
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(autouse=True)
def _one_thread():
    """Overrides the torch thread fixture of tests/conftest.py: no torch import in this process."""
    yield
