"""A dataset decoded once: uint8 canvases in a memory-mapped ``.npy``, checked against its tree.

For the datasets whose canvases fit in memory (PACS ~2 GB at the 256 px canvas of 224 px
training, VLCS, OfficeHome, TerraIncognita ~4.9 GB; pacs_mini), decoding every file at every
step is wasted work: :func:`open_or_build` decodes each image once
(:func:`hjax.data.images.decode.decode_into`, in worker processes, with a progress bar) into

    <data_dir>/hjax_decoded/<DIR>-<canvas>px/images.npy    uint8 [N, C, C, 3]
                                            hw.npy        int32 [N, 2]
                                            manifest.json

and later runs memory-map it. Row i is the i-th image of the dataset's scan order (domains,
then classes, then file names, sorted: :func:`hjax.data.images.datasets.scan_image_folder`).

Trust: ``manifest.json`` is written last (atomically) and records the format version, the
canvas, the image count, both files' exact byte sizes and a digest of the source tree (every
file's path relative to the dataset folder, size and modification time, in scan order). A
cache is used only when all of these match the tree as scanned now and the files on disk;
otherwise (files added, removed, replaced or touched, a truncated or missing ``.npy``, a
different canvas) it is rebuilt. A file that does not decode stops the build with
:class:`~hjax.data.images.registry.ImageDecodeError` naming it, and nothing is written (the
partial arrays are temporary files, removed). DomainNet (~115 GB decoded) is not cached: it
streams from its files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from hjax.data.images.decode import decode_into
from hjax.data.images.registry import ImageDatasetError

log = logging.getLogger("hjax.data")

VERSION = 1
FOLDER = "hjax_decoded"
CACHED_DATASETS = ("pacs", "vlcs", "office_home", "terra_incognita", "pacs_mini")
_CHUNK = 64


class DecodedImages(NamedTuple):
    """A verified cache: ``images`` [N, C, C, 3] uint8 and ``hw`` [N, 2] (memory maps)."""
    folder: Path
    images: np.ndarray
    hw: np.ndarray

    @property
    def canvas(self) -> int:
        return int(self.images.shape[1])


def cache_folder(data_dir: str | os.PathLike, dataset_dir: str, canvas: int) -> Path:
    return Path(data_dir) / FOLDER / f"{dataset_dir}-{canvas}px"


def tree_digest(root: str | os.PathLike, paths: Sequence[str]) -> str:
    """sha256 over (path relative to ``root``, size, mtime in ns) of ``paths``, in order."""
    h = hashlib.sha256()
    root = os.path.abspath(root)
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _npy_bytes(shape, dtype) -> int:
    """Exact size of an .npy file of ``shape`` and ``dtype`` as np.save writes it."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(shape)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize


def _expected(count: int, canvas: int) -> dict:
    return {"images.npy": _npy_bytes((count, canvas, canvas, 3), np.uint8),
            "hw.npy": _npy_bytes((count, 2), np.int32)}


def load(folder: Path, digest: str, count: int, canvas: int) -> DecodedImages | None:
    """The cache in ``folder`` if it is complete and matches; None (with the reason logged)."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable manifest; rebuilding", folder)
        return None
    want = {"version": VERSION, "canvas": canvas, "count": count, "tree_digest": digest,
            "bytes": _expected(count, canvas)}
    stale = [k for k in want if manifest.get(k) != want[k]]
    if stale:
        log.warning("%s: %s changed since the cache was built; rebuilding", folder,
                    ", ".join(stale))
        return None
    for name, size in want["bytes"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            log.warning("%s: %s is missing or truncated; rebuilding", folder, name)
            return None
    images = np.load(folder / "images.npy", mmap_mode="r")
    hw = np.load(folder / "hw.npy", mmap_mode="r")
    if images.shape != (count, canvas, canvas, 3) or hw.shape != (count, 2):
        return None
    return DecodedImages(folder, images, hw)


def _decode_chunk(args) -> tuple[int, np.ndarray]:
    """Worker: decodes ``paths`` into rows ``start..`` of the temporary memory map."""
    images_path, start, paths = args
    images = np.load(images_path, mmap_mode="r+")
    hw = np.empty((len(paths), 2), np.int32)
    for k, p in enumerate(paths):
        hw[k] = decode_into(p, images[start + k])
    images.flush()
    return start, hw


def _progress(total: int, desc: str) -> Callable[[int], None]:
    """A tqdm bar when tqdm is installed and stderr is a terminal; else a log line per 10%."""
    try:
        import sys
        from tqdm import tqdm
        if sys.stderr.isatty():
            bar = tqdm(total=total, desc=desc, unit="img")

            def update(n):
                bar.update(n)
                if bar.n >= total:
                    bar.close()
            return update
    except ImportError:
        pass
    done = [0, 0]

    def update(n):
        done[0] += n
        tenth = 10 * done[0] // max(total, 1)
        if tenth > done[1]:
            done[1] = tenth
            log.info("%s: %d/%d images decoded", desc, done[0], total)
    return update


def build(folder: Path, paths: Sequence[str], digest: str, canvas: int, workers: int = 0,
          desc: str = "decoding") -> DecodedImages:
    """Decodes ``paths`` into a new cache in ``folder`` (replacing one there)."""
    folder.mkdir(parents=True, exist_ok=True)
    count = len(paths)
    tmp_images = Path(tempfile.mkstemp(prefix=".images.", suffix=".npy", dir=folder)[1])
    tmp_hw = Path(tempfile.mkstemp(prefix=".hw.", suffix=".npy", dir=folder)[1])
    try:
        images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8,
                                           shape=(count, canvas, canvas, 3))
        del images                                     # workers open it themselves
        hw = np.lib.format.open_memmap(tmp_hw, mode="w+", dtype=np.int32, shape=(count, 2))
        jobs = [(str(tmp_images), s, list(paths[s:s + _CHUNK]))
                for s in range(0, count, _CHUNK)]
        update = _progress(count, desc)
        if workers > 0:
            import multiprocessing
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers) as pool:
                for start, chunk_hw in pool.imap_unordered(_decode_chunk, jobs):
                    hw[start:start + len(chunk_hw)] = chunk_hw
                    update(len(chunk_hw))
        else:
            for job in jobs:
                start, chunk_hw = _decode_chunk(job)
                hw[start:start + len(chunk_hw)] = chunk_hw
                update(len(chunk_hw))
        hw.flush()
        del hw
        os.replace(tmp_images, folder / "images.npy")
        os.replace(tmp_hw, folder / "hw.npy")
    finally:
        for p in (tmp_images, tmp_hw):
            if p.exists():
                p.unlink()
    manifest = {"version": VERSION, "canvas": canvas, "count": count, "tree_digest": digest,
                "bytes": _expected(count, canvas)}
    # Written last, atomically: a manifest names only complete arrays.
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, folder / "manifest.json")
    cache = load(folder, digest, count, canvas)
    if cache is None:                                  # e.g. another process replaced it
        raise ImageDatasetError(f"{folder}: the decoded cache did not verify after building")
    return cache


def open_or_build(dataset, data_dir: str | os.PathLike, canvas: int, workers: int = 0
                  ) -> DecodedImages | None:
    """The verified cache of ``dataset`` (an ImageDataset of a CACHED_DATASETS name) at
    ``canvas``, built first when missing or stale; None for a dataset that streams, or when
    the data folder is not writable (logged: the job then decodes files as it goes)."""
    if dataset.name not in CACHED_DATASETS:
        return None
    paths = [p for d in dataset.domains for p in d.paths]
    digest = tree_digest(dataset.root, paths)
    folder = cache_folder(data_dir, dataset.root.name, canvas)
    cache = load(folder, digest, len(paths), canvas)
    if cache is not None:
        return cache
    log.info("%s: decoding %d images to %d px canvases into %s (once)", dataset.name,
             len(paths), canvas, folder)
    try:
        return build(folder, paths, digest, canvas, workers, desc=f"{dataset.name} decode")
    except PermissionError as e:
        log.warning("%s: cannot write the decoded cache (%s); decoding files as the job runs",
                    folder, e)
        return None
