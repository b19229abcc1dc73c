"""A fetched image tree checked against the published counts, and its manifest.

:func:`verify_tree` scans ``<root>/<domain>/<class>/<image>`` (every header opened with PIL,
as the folder scan does) and compares what it finds with :mod:`published_counts`: missing
domain or class folders, unreadable images, the total against the accepted totals, and the
per-domain / per-class counts where they are pinned. Any difference raises
:class:`TreeMismatchError` naming what differs (first few, then how many more).

The manifest, ``<root>/hjax_manifest.json``, is written last (atomically, into the
temporary folder before it is renamed into place): the dataset, where each archive came
from and its sha256, the counts found, whether they matched, and ``digest``, a sha256 over
every image's relative path and size (see :func:`image_digest`). A folder without one was
not fetched by hjax (a DomainBed download, say) and is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from hjax.data.images.datasets import scan_image_folder
from hjax.data.images.published_counts import Published
from hjax.data.images.registry import IMAGE_DATASETS, ImageDatasetError

MANIFEST_NAME = "hjax_manifest.json"
MANIFEST_VERSION = 1
_SHOWN = 6


class TreeMismatchError(ImageDatasetError):
    """The tree differs from the published dataset (what differs, in one line)."""


def image_digest(root: Path, paths: Sequence[str]) -> str:
    """sha256 over the sorted ``<relative path>\\t<size>`` lines of ``paths``."""
    lines = sorted(f"{os.path.relpath(p, root)}\t{os.path.getsize(p)}" for p in paths)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _differences(counts: dict, classes: Sequence[str], total: int, published: Published,
                 corrupt: list[str], root: Path) -> list[str]:
    diffs = []
    if corrupt:
        diffs.append(f"{len(corrupt)} unreadable image(s), e.g. "
                     f"{', '.join(os.path.relpath(p, root) for p in corrupt[:3])}")
    if published.every_class_everywhere:
        for d, per in counts.items():
            missing = [c for c in classes if per.get(c, 0) == 0]
            if missing:
                diffs.append(f"{d} has no {', '.join(missing[:3])} images"
                             f"{f' (+{len(missing) - 3} classes)' if len(missing) > 3 else ''}")
    if total not in published.totals:
        want = " or ".join(f"{t:,}" for t in published.totals)
        diffs.append(f"{total:,} images in all, published {want}")
    if published.num_classes is not None and len(classes) != published.num_classes:
        diffs.append(f"{len(classes)} classes, published {published.num_classes}")
    # A total of a known version is checked against that version's domains (if pinned);
    # any other total against the first pinned version, to show where it differs.
    if total in published.totals:
        per_domain = published.per_domain.get(total, {})
    else:
        per_domain = next(iter(published.per_domain.values()), {})
    for d, n in per_domain.items():
        found = sum(counts.get(d, {}).values())
        if found != n:
            diffs.append(f"{d} {found:,} images, published {n:,}")
    for d, per in (published.per_class or {}).items():
        for c, n in per.items():
            found = counts.get(d, {}).get(c, 0)
            if found != n:
                diffs.append(f"{d}/{c} {found:,}, published {n:,}")
    return diffs


def verify_tree(root: str | os.PathLike, name: str, published: Published,
                extra: Sequence[str] = (), strict: bool = True
                ) -> tuple[dict[str, dict[str, int]], str, list[str]]:
    """({domain: {class: images}}, image digest, differences) of the tree at ``root``.

    Raises TreeMismatchError listing the differences (``extra``: ones the build found, e.g.
    annotated images absent from an archive) unless ``strict`` is False."""
    info = IMAGE_DATASETS[name]
    root = Path(root)
    try:
        ds = scan_image_folder(root, classes=info.classes, domains=info.domains,
                               verify=True, name=name)
    except ImageDatasetError as e:
        raise TreeMismatchError(f"{name}: the extracted tree differs from the published "
                                f"dataset: {e}") from None
    counts = {}
    for d in ds.domains:
        per = np.bincount(d.labels, minlength=ds.num_classes)
        counts[d.name] = {c: int(n) for c, n in zip(ds.classes, per) if n}
    total = len(ds)
    diffs = list(extra) + _differences(counts, ds.classes, total, published,
                                       list(ds.skipped), root)
    if diffs and strict:
        more = f" (+{len(diffs) - _SHOWN} more)" if len(diffs) > _SHOWN else ""
        raise TreeMismatchError(f"{name}: the extracted tree differs from the published "
                                f"dataset ({published.source}): "
                                f"{'; '.join(diffs[:_SHOWN])}{more}")
    paths = [p for d in ds.domains for p in d.paths]
    return counts, image_digest(root, paths), diffs


def write_manifest(root: Path, name: str, counts: dict, digest: str, archives: list[dict],
                   differences: list[str]) -> Path:
    """Writes ``root/hjax_manifest.json`` atomically (a temporary file renamed)."""
    manifest = {"version": MANIFEST_VERSION, "dataset": name, "folder": IMAGE_DATASETS[name].dir,
                "archives": archives, "images": sum(sum(c.values()) for c in counts.values()),
                "counts": counts, "matches_published": not differences,
                "differences": differences, "digest": digest}
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", dir=root)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, root / MANIFEST_NAME)
    return root / MANIFEST_NAME


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of a tree hjax fetched, or None (none, or unreadable)."""
    try:
        manifest = json.loads((Path(root) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "digest" in manifest else None
