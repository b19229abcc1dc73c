"""Pure numpy building blocks of the MNIST protocols (docs/protocols.md)."""

from __future__ import annotations

import numpy as np


def bernoulli(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    """n independent {0, 1} draws with P(1) = p, as int32."""
    return (rng.random(n) < p).astype(np.int32)


def noisy_binary_labels(rng: np.random.Generator, digits: np.ndarray,
                        noise: float = 0.25) -> np.ndarray:
    """y = (digit < 5), flipped with probability `noise` (IRM / DomainBed), int32."""
    return (digits < 5).astype(np.int32) ^ bernoulli(rng, noise, len(digits))


def colorize(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
             flip: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-channel images [n, h, w, 2] in [0, 1] colored by label, and their gray twin.

    color = label XOR Bernoulli(flip); the channel (1 - color) is zeroed, so channel
    `color` keeps the digit. The gray twin keeps both channels (the "gray test").
    """
    colors = labels ^ bernoulli(rng, flip, len(labels))
    gray = np.repeat(images[..., None].astype(np.float32) / np.float32(255), 2, axis=-1)
    keep = np.stack([colors == 0, colors == 1], axis=-1)[:, None, None, :]
    return gray * keep, gray


def subsample(images: np.ndarray) -> np.ndarray:
    """2x subsampling, 28x28 -> 14x14 (IRM's images[:, ::2, ::2])."""
    return images[:, ::2, ::2]


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotates [n, h, w] images counter-clockwise about their centre, bilinear, zero fill.

    Bilinear like DomainBed's RotatedMNIST (torchvision on PIL images); the result is
    rounded back to uint8 as PIL does, so angle 0 returns the images unchanged.
    """
    n, h, w = images.shape
    theta = np.deg2rad(degrees)
    cos, sin = np.cos(theta), np.sin(theta)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows, cols = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    # Inverse map: the output pixel (x, y) samples the source at the point rotated back.
    src_x = cos * cols - sin * rows + cx
    src_y = sin * cols + cos * rows + cy
    src_x = np.round(src_x, 9)  # exact grid points stay exact (e.g. 90 degrees)
    src_y = np.round(src_y, 9)
    x0, y0 = np.floor(src_x).astype(int), np.floor(src_y).astype(int)
    fx, fy = src_x - x0, src_y - y0
    source = images.astype(np.float32)
    out = np.zeros((n, h, w), np.float32)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            weight = np.where(inside, wy * wx, 0.0).astype(np.float32)
            out += source[:, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)] * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
