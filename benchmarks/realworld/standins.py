"""Offline stand-ins for data sets that corpus programs download (no internet at run time).

A program that read MNIST through ``input_data.read_data_sets`` or ``mnist.load_data()`` reads
this instead; the runner puts the repository root on ``PYTHONPATH``::

    from benchmarks.realworld.standins import mnist
    (x_train, y_train), (x_test, y_test) = mnist(n_train=55000)   # (n, 784) in [0, 1], one-hot

The images are scikit-learn's 8x8 digits, upsampled to 24x24 (3x3 blocks) and placed at a
random offset in a 28x28 frame, so there are as many distinct training images as the original
program drew batches from; pixel values are in [0, 1] as ``input_data`` gives them, scaled so
the mean pixel is MNIST's (0.1307): the gradient scale a learning rate meets is MNIST's.
"""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

MNIST_MEAN_PIXEL = 0.1307   # mean pixel of the MNIST training images, in [0, 1]


def mnist(n_train: int = 55000, n_test: int = 10000, seed: int = 0,
          one_hot: bool = True) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """MNIST-shaped digits: ``(x_train, y_train), (x_test, y_test)``, x as (n, 784) float32.

    Test images come from digits the training images never use (the last 297 of the 1797).
    """
    digits = load_digits()
    rng = np.random.default_rng(seed)
    big = np.kron(digits.images, np.ones((3, 3), dtype=np.float64)) / 16.0   # (1797, 24, 24)
    big *= MNIST_MEAN_PIXEL / (big.mean() * (24 * 24) / (28 * 28))

    def draw(pool: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.choice(pool, size=n)
        dy, dx = rng.integers(0, 5, size=(2, n))
        frames = np.zeros((n, 28, 28), dtype=np.float32)
        for i, (k, oy, ox) in enumerate(zip(pick, dy, dx)):
            frames[i, oy:oy + 24, ox:ox + 24] = big[k]
        labels = digits.target[pick]
        return frames.reshape(n, 784), (np.eye(10, dtype=np.float32)[labels] if one_hot else labels)

    train_pool, test_pool = np.arange(1500), np.arange(1500, len(digits.target))
    return draw(train_pool, n_train), draw(test_pool, n_test)
