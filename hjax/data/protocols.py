"""The four MNIST protocols of docs/protocols.md, as pure functions of (mnist, seed).

Every protocol draws from one np.random.SeedSequence(seed): its first child shuffles,
child i + 1 draws the label noise and colors of environment i. Same seed, same data;
another seed redraws the shuffle and the noise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hjax.data.schema import Mnist
from hjax.data.transforms import colorize, noisy_binary_labels, rotate, subsample

LABEL_NOISE = 0.25
IRM_FLIPS = (0.2, 0.1, 0.9)            # train env 0, train env 1, test
DOMAINBED_FLIPS = (0.1, 0.2, 0.9)      # "+90%", "+80%", "-90%"
ROTATIONS = (0, 15, 30, 45, 60, 75)
LABEL_SHIFT_SPLITS = ("intended", "reference")


class Environment(NamedTuple):
    """One domain: float32 NHWC images in [0, 1] and int32 labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray


def _streams(seed: int, n_envs: int) -> tuple[np.random.Generator, list[np.random.Generator]]:
    shuffle, *envs = np.random.SeedSequence(seed).spawn(1 + n_envs)
    return np.random.default_rng(shuffle), [np.random.default_rng(s) for s in envs]


def _irm_holdout(mnist: Mnist, rng: np.random.Generator):
    """The IRM scripts' split of MNIST's training images: the first 5/6 (50,000 for MNIST)
    shuffled for the training environments, the last 1/6 (images 50,000-59,999) the test
    domain, in their original order and the same for every seed."""
    n_fit = len(mnist.train_labels) * 5 // 6
    perm = rng.permutation(n_fit)
    fit = (mnist.train_images[:n_fit][perm], mnist.train_labels[:n_fit][perm])
    return fit, (mnist.train_images[n_fit:], mnist.train_labels[n_fit:])


def _irm_env(name, rng, images, digits, flip) -> tuple[Environment, np.ndarray]:
    """IRM's make_environment; also returns the ungated (gray) images."""
    labels = noisy_binary_labels(rng, digits, LABEL_NOISE)
    colored, gray = colorize(rng, subsample(images), labels, flip)
    return Environment(name, colored, labels), gray


def _irm_envs(train_parts, test_part, seeds) -> list[Environment]:
    """Two training environments, the e=0.9 test domain and its gray twin.

    The gray twin is the same images with both channels kept, but, as in the Fishr and
    authors' scripts (a second make_environment call), with its own label-noise draw: its
    labels are flipped independently of the colored test domain's (stream 3)."""
    (x0, d0), (x1, d1) = train_parts
    x_test, d_test = test_part
    env0, _ = _irm_env(f"train_{IRM_FLIPS[0]}", seeds[0], x0, d0, IRM_FLIPS[0])
    env1, _ = _irm_env(f"train_{IRM_FLIPS[1]}", seeds[1], x1, d1, IRM_FLIPS[1])
    test, _ = _irm_env(f"test_{IRM_FLIPS[2]}", seeds[2], x_test, d_test, IRM_FLIPS[2])
    relabeled, gray = _irm_env("gray_test", seeds[3], x_test, d_test, IRM_FLIPS[2])
    return [env0, env1, test, Environment("gray_test", gray, relabeled.labels)]


def colored_mnist(mnist: Mnist, seed: int) -> list[Environment]:
    """IRM-protocol ColoredMNIST: [train e=0.2, train e=0.1, test e=0.9, gray test], 14x14x2.

    Uses MNIST's training split only: its first 5/6 (50,000), shuffled, split into
    train[::2] and train[1::2]; the last 1/6 (images 50,000-59,999, unshuffled) is the test
    domain in every restart, as in the IRM, Fishr and authors' scripts.
    """
    shuffle, seeds = _streams(seed, 4)
    (x, d), test = _irm_holdout(mnist, shuffle)
    return _irm_envs([(x[::2], d[::2]), (x[1::2], d[1::2])], test, seeds)


def label_shift_indices(digits: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (in order) of the two training environments of label-shift ColoredMNIST.

    "intended": env0 holds 97% of the digits < 5 and 3% of the digits >= 5, env1 the
    rest. "reference": the authors' script, which sizes both parts from the length of
    the mask rather than its sum: env0 = every digit < 5 plus the first 3% x n (1,500
    of 50,000) digits >= 5, env1 = the remaining digits >= 5.
    """
    if split not in LABEL_SHIFT_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(LABEL_SHIFT_SPLITS)}")
    low, high = np.flatnonzero(digits < 5), np.flatnonzero(digits >= 5)
    if split == "intended":
        n_low, n_high = int(0.97 * len(low)), int(0.03 * len(high))
    else:
        n_low, n_high = int(0.97 * len(digits)), int(0.03 * len(digits))
    env0 = np.sort(np.concatenate([low[:n_low], high[:n_high]]))
    env1 = np.sort(np.concatenate([low[n_low:], high[n_high:]]))
    return env0, env1


def colored_mnist_label_shift(mnist: Mnist, seed: int, split: str = "intended"
                              ) -> list[Environment]:
    """Label-shift ColoredMNIST: as colored_mnist, but env0/env1 split by digit class."""
    shuffle, seeds = _streams(seed, 4)
    (x, d), test = _irm_holdout(mnist, shuffle)
    idx0, idx1 = label_shift_indices(d, split)
    return _irm_envs([(x[idx0], d[idx0]), (x[idx1], d[idx1])], test, seeds)


def _pooled(mnist: Mnist, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All of MNIST (train then test), shuffled: DomainBed's MultipleEnvironmentMNIST."""
    images = np.concatenate([mnist.train_images, mnist.test_images])
    digits = np.concatenate([mnist.train_labels, mnist.test_labels])
    perm = rng.permutation(len(digits))
    return images[perm], digits[perm]


def domainbed_colored_mnist(mnist: Mnist, seed: int) -> list[Environment]:
    """DomainBed ColoredMNIST: envs "+90%", "+80%", "-90%" = pooled[i::3], 28x28x2."""
    shuffle, seeds = _streams(seed, 3)
    images, digits = _pooled(mnist, shuffle)
    envs = []
    for i, (name, flip) in enumerate(zip(("+90%", "+80%", "-90%"), DOMAINBED_FLIPS)):
        labels = noisy_binary_labels(seeds[i], digits[i::3], LABEL_NOISE)
        colored, _ = colorize(seeds[i], images[i::3], labels, flip)
        envs.append(Environment(name, colored, labels))
    return envs


def rotated_mnist(mnist: Mnist, seed: int) -> list[Environment]:
    """DomainBed RotatedMNIST: envs "0".."75" = pooled[i::6] rotated, 28x28x1, 10 classes."""
    shuffle, _ = _streams(seed, len(ROTATIONS))
    images, digits = _pooled(mnist, shuffle)
    n = len(ROTATIONS)
    return [Environment(str(angle),
                        rotate(images[i::n], angle)[..., None].astype(np.float32) / np.float32(255),
                        digits[i::n].astype(np.int32))
            for i, angle in enumerate(ROTATIONS)]
