"""Test helper: a DomainBed-layout folder ``root/<domain>/<class>/<image>`` of generated images."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image


def make_image(path: Path, color, size=(40, 30), fmt: str | None = None, rng=None) -> Path:
    """A ``size`` (width, height) RGB image of ``color`` plus mild noise, saved to ``path``."""
    w, h = size
    pixels = np.empty((h, w, 3), np.uint8)
    pixels[:] = np.asarray(color, np.uint8)
    if rng is not None:
        noise = rng.integers(-20, 21, (h, w, 3))
        pixels = np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, format=fmt)
    return path


def class_color(class_index: int) -> tuple[int, int, int]:
    """A distinct color per class, so a decoded image reveals its label."""
    return ((40 * class_index + 20) % 256, (90 * class_index + 60) % 256,
            (150 * class_index + 100) % 256)


def make_tree(root: Path, domains: Sequence[str] = ("art", "photo", "sketch"),
              classes: Sequence[str] = ("cat", "dog"), per_class: int = 3,
              missing: Mapping[str, Sequence[str]] | None = None, size=(40, 30),
              seed: int = 0) -> Path:
    """JPEGs: ``per_class`` per (domain, class), class ``c`` colored ``class_color(c)``;
    ``missing[domain]`` names class folders left out of that domain."""
    rng = np.random.default_rng(seed)
    missing = missing or {}
    for d in domains:
        for ci, c in enumerate(sorted(classes)):
            if c in missing.get(d, ()):
                continue
            for k in range(per_class):
                make_image(Path(root) / d / c / f"img_{k:03d}.jpg", class_color(ci), size,
                           rng=rng)
    return Path(root)


def make_pacs_tree(data_dir: Path, per_class: int = 1) -> Path:
    """``data_dir`` holding a PACS-layout tree (its domains and classes), one image per
    (domain, class) by default; returns ``data_dir``."""
    from hjax.data.images import IMAGE_DATASETS
    info = IMAGE_DATASETS["pacs"]
    make_tree(Path(data_dir) / info.dir, domains=info.domains, classes=info.classes,
              per_class=per_class)
    return Path(data_dir)
