"""Datasets as NumPy arrays with a documented layout, normalisation and fixed split.

Offline by design: scikit-learn's 8x8 digits ship inside the package, so nothing is
downloaded.

Layout: images are ``float32`` arrays of shape ``(N, H, W, C)`` (channels last, the
Flax convention); labels are ``int32`` arrays of shape ``(N,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """A train/test split. ``x_*`` are ``float32 (N, H, W, C)``, ``y_*`` are ``int32 (N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x_{part} and y_{part} disagree on the number of examples")


def load_digits(test_size: int = 497, seed: int = 0) -> Split:
    """scikit-learn's 1,797 handwritten digits, 8x8x1, pixel values divided by 16 into [0, 1].

    The split is a fixed permutation drawn from ``numpy.random.default_rng(seed)``: the
    last ``test_size`` examples of it are the test set (1,300 / 497 by default).
    """
    from sklearn.datasets import load_digits as _sk_digits

    n_total = 1797
    if not 0 < test_size < n_total:
        raise ValueError(f"test_size must lie in (0, {n_total}), got {test_size}")
    bunch = _sk_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[..., None]
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:-test_size], order[-test_size:]
    return Split(x[train], y[train], x[test], y[test], num_classes=10, name="digits")
