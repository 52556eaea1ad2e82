"""Paddle tests run in a pytest process of their own (TensorFlow then Paddle in one process
segfaults): ``.venv/bin/python -m pytest tests/paddle -q``."""
import os
import sys

import pytest

# one intra-op thread: small models on 2 cores run faster and deterministically
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

if "tensorflow" in sys.modules:  # pragma: no cover - a wrong invocation, not a test failure mode
    raise RuntimeError("tests/paddle must run in their own process: TensorFlow is already imported "
                       "here and importing Paddle after it segfaults. Run: pytest tests/paddle")


@pytest.fixture(autouse=True)
def _one_thread():
    """Overrides the suite-wide fixture of the same name, which sets torch's threads: the Paddle
    process has no reason to import torch."""
    yield
