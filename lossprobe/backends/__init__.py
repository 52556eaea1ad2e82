"""Backend selection without importing any framework.

As in einops' backends, a framework is only consulted if the user already imported
it (it is in ``sys.modules``); ``attach`` never imports TensorFlow or Paddle to find
out what a model is (importing TensorFlow and then Paddle in one process segfaults).
"""
from __future__ import annotations

import sys
from typing import Any

SUPPORTED = "PyTorch torch.nn.Module, Keras/TensorFlow keras.Model, Paddle paddle.nn.Layer / paddle.Model"


def _is_torch(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _is_keras(model: Any) -> bool:
    for mod in ("keras", "tf_keras"):
        keras = sys.modules.get(mod)
        if keras is not None and hasattr(keras, "Model") and isinstance(model, keras.Model):
            return True
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            return isinstance(model, tf.keras.Model)
        except Exception:
            return False
    return False


def _is_paddle(model: Any) -> bool:
    paddle = sys.modules.get("paddle")
    if paddle is None:
        return False
    return isinstance(model, paddle.nn.Layer) or (hasattr(paddle, "Model") and isinstance(model, paddle.Model))


def backend_for(model: Any):
    """The backend class for ``model``; TypeError (naming the type) when none claims it."""
    if _is_torch(model):
        from .torch import TorchBackend
        return TorchBackend
    if _is_keras(model):
        from .tensorflow import KerasBackend
        return KerasBackend
    if _is_paddle(model):
        from .paddle import PaddleBackend
        return PaddleBackend
    raise TypeError(
        f"lossprobe.attach: cannot probe a {type(model).__module__}.{type(model).__qualname__}; "
        f"supported: {SUPPORTED}. (lossprobe looks only at frameworks you have already imported.)")
