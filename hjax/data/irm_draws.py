"""IRM-protocol ColoredMNIST as draws (indices, labels, colors), the images built on the device.

``protocols.colored_mnist`` / ``colored_mnist_label_shift`` materialize every environment's
float images on the host: about a second a restart, most of it gathering, converting and
masking 70,000 images. The random draws themselves (one shuffle and two Bernoulli vectors
per environment) take milliseconds. :func:`draw_irm` makes exactly the same draws from the
same ``SeedSequence`` streams, in the same order, and keeps only their result: which MNIST
training image each example is, its label and its color. :func:`materialize` then builds
the images of many restarts at once in one jitted gather on the device from MNIST's uint8
images, put there once. Same seed, same images and labels as ``make_environments``
(tests/test_data_environments.py checks it against the host builders).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hjax.data import protocols
from hjax.data.protocols import IRM_FLIPS, LABEL_NOISE, label_shift_indices

DATASETS = ("colored_mnist", "colored_mnist_label_shift")


class EnvDraw(NamedTuple):
    """One environment: MNIST training-image indices, labels, colors, and whether it is the
    gray twin (both channels kept, colors unused)."""
    index: np.ndarray
    labels: np.ndarray
    colors: np.ndarray
    gray: bool


def _env_draw(rng: np.random.Generator, index: np.ndarray, digits: np.ndarray, flip: float,
              gray: bool = False) -> EnvDraw:
    # protocols._irm_env's order of draws: the label noise (noisy_binary_labels), then the
    # color flips (colorize), each one rng.random(n) < p.
    n = len(digits)
    labels = (digits < 5).astype(np.int32) ^ (rng.random(n) < LABEL_NOISE).astype(np.int32)
    colors = labels ^ (rng.random(n) < flip).astype(np.int32)
    return EnvDraw(index.astype(np.int32), labels, colors, gray)


def draw_irm(train_labels: np.ndarray, dataset: str, seed: int,
             split: str = "intended") -> list[EnvDraw]:
    """The draws of ``make_environments(dataset, seed, split=...)``: [train 0, train 1, test,
    gray test], indices into MNIST's training images (``train_labels`` are their digits)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    shuffle, seeds = protocols._streams(int(seed), 4)
    n_fit = len(train_labels) * 5 // 6
    perm = shuffle.permutation(n_fit)                 # as protocols._irm_holdout
    digits = np.asarray(train_labels)
    if dataset == "colored_mnist":
        parts = [perm[::2], perm[1::2]]
    else:
        idx0, idx1 = label_shift_indices(digits[:n_fit][perm], split)
        parts = [perm[idx0], perm[idx1]]
    test = np.arange(n_fit, len(digits))
    draws = [_env_draw(seeds[e], parts[e], digits[parts[e]], IRM_FLIPS[e]) for e in (0, 1)]
    draws.append(_env_draw(seeds[2], test, digits[test], IRM_FLIPS[2]))
    draws.append(_env_draw(seeds[3], test, digits[test], IRM_FLIPS[2], gray=True))
    return draws


class StackedDraws(NamedTuple):
    """Draws of R restarts x E environments padded to n: index, labels, colors [R, E, n]
    (int32), weights [R, E, n] (1/size on real examples, 0 on padding), gray [E] (bool)."""
    index: np.ndarray
    labels: np.ndarray
    colors: np.ndarray
    weights: np.ndarray
    gray: np.ndarray


def stack_draws(restarts: Sequence[Sequence[EnvDraw]], envs: Sequence[int],
                multiple: int = 1) -> StackedDraws:
    """Environments ``envs`` of every restart, padded to one size n (a multiple of
    ``multiple``); the weights are those of ``hjax.protocols.irm_cmnist.train.stack_domains``."""
    n = max(len(d[e].index) for d in restarts for e in envs)
    n = -(-n // multiple) * multiple
    shape = (len(restarts), len(envs), n)
    index, labels, colors = (np.zeros(shape, np.int32) for _ in range(3))
    weights = np.zeros(shape, np.float32)
    for r, draws in enumerate(restarts):
        for i, e in enumerate(envs):
            d = draws[e]
            k = len(d.index)
            index[r, i, :k], labels[r, i, :k], colors[r, i, :k] = d.index, d.labels, d.colors
            weights[r, i, :k] = 1.0 / k
    gray = np.array([restarts[0][e].gray for e in envs])
    return StackedDraws(index, labels, colors, weights, gray)


def device_images(train_images: np.ndarray) -> jax.Array:
    """MNIST's uint8 training images subsampled to 14x14 (IRM's [:, ::2, ::2]), on the
    device once; :func:`materialize` gathers from it."""
    return jnp.asarray(np.ascontiguousarray(np.asarray(train_images)[:, ::2, ::2]))


_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)


@jax.jit
def materialize(images_u8: jax.Array, index, colors, weights, gray) -> jax.Array:
    """Images [..., n, 14, 14, 2] of stacked draws: the digit in channel ``color`` (both
    channels for a gray environment), float32 in [0, 1], zero on padding (weight 0).
    ``gray`` broadcasts against ``index[..., 0]`` (one flag per environment)."""
    # uint8 / 255 as numpy rounds it (transforms.colorize): through a 256-entry table made by
    # numpy, since XLA turns a division by a constant into a multiplication by its reciprocal
    # (off by one ulp for about a third of the pixels).
    x = jnp.asarray(_TO_UNIT)[images_u8[index]]
    gray = jnp.asarray(gray)[..., None]
    keep0 = ((colors == 0) | gray) & (weights > 0)
    keep1 = ((colors == 1) | gray) & (weights > 0)
    keep = jnp.stack([keep0, keep1], axis=-1)[..., None, None, :]
    return x[..., None] * keep


def environments_from_draws(images_u8: jax.Array, draws: Sequence[EnvDraw], names=None
                            ) -> list[protocols.Environment]:
    """Host Environments of one restart's draws (the reference builders' output; tests)."""
    names = names or [f"train_{IRM_FLIPS[0]}", f"train_{IRM_FLIPS[1]}", f"test_{IRM_FLIPS[2]}",
                      "gray_test"]
    out = []
    for name, d in zip(names, draws):
        w = np.ones(len(d.index), np.float32)
        x = materialize(images_u8, d.index, d.colors, w, np.asarray(d.gray))
        out.append(protocols.Environment(name, np.asarray(x), d.labels))
    return out
