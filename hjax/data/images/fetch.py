"""Fetch PACS, VLCS, OfficeHome, TerraIncognita or DomainNet into ``<data_dir>/<DIR>``.

The steps, each of which can fail without leaving a folder that looks complete:

1. the archives: taken from ``--from_archive`` (a file, or a folder holding them by name),
   or already in ``<data_dir>/downloads/`` from an earlier run, or downloaded there
   (:mod:`hjax.data.download`: resumed, retried, from the mirror if one is set);
2. extraction into ``<data_dir>/.<DIR>.partial-*``, a temporary folder beside the target
   (:mod:`hjax.data.archives`: unsafe members refused), with DomainBed's renames, its
   DomainNet duplicates left out, TerraIncognita built from its annotations
   (:mod:`hjax.data.images.terra_incognita`);
3. verification (:mod:`hjax.data.images.verify`): counts against the published ones,
   every header readable; then the manifest, written last;
4. the rename of the temporary folder onto ``<data_dir>/<DIR>`` (with ``force``, the old
   folder is replaced only now). Downloaded archives are then deleted unless kept.

A folder already in place is kept as it is: one hjax fetched (it has a manifest) or one from
DomainBed's script (it has none; it is never written to).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from hjax.data import archives
from hjax.data.download import (FetchError, Progress, Source, check_digest, download,
                                file_lock, source_url)
from hjax.data.images import sources as sources_
from hjax.data.images import terra_incognita
from hjax.data.images.published_counts import PUBLISHED, Published
from hjax.data.images.registry import IMAGE_DATASETS
from hjax.data.images.verify import (TreeMismatchError, read_manifest, verify_tree,
                                     write_manifest)

log = logging.getLogger("hjax.data")
DOWNLOADS = "downloads"
FETCHABLE = tuple(sources_.SOURCES)


def manual_route(name: str, source: Source) -> str:
    where = f" ({source.url})" if source.url else ""
    return (f"get {source.file}{where} another way (a lab copy, a browser) and run "
            f"`python -m hjax.cli.fetch_data --dataset={name} --from_archive=PATH`, or set "
            f"--mirror / $HJAX_MIRROR")


def _given_archive(source: Source, from_archive: Path, single: bool) -> Path:
    path = from_archive / source.file if from_archive.is_dir() else from_archive
    if from_archive.is_file() and not (single or from_archive.name == source.file):
        raise FetchError(f"--from_archive={from_archive}: this dataset needs several archives "
                         f"({source.file} among them); give the folder that holds them")
    if not path.is_file():
        raise FetchError(f"--from_archive={from_archive}: no {source.file} there")
    check_digest(path, source)
    return path


def obtain(name: str, source: Source, data_dir: Path, *, mirror: str | None = None,
           from_archive: Path | None = None, single: bool = True,
           progress: Progress | None = None, retries: int | None = None
           ) -> tuple[Path, bool]:
    """(the archive's path, whether it was downloaded here). FetchError: one line with the
    URL, the reason and the manual route."""
    if from_archive is not None:
        return _given_archive(source, Path(from_archive).expanduser(), single), False
    dest = data_dir / DOWNLOADS / source.file
    url = source_url(source, mirror)
    try:
        if dest.is_file():
            log.info("%s: using %s from an earlier run", name, dest)
            check_digest(dest, source)
        else:
            log.info("%s: downloading %s into %s", name, url, dest.parent)
            download(source, dest, url=url, progress=progress, retries=retries, log=log.info)
    except FetchError as e:
        raise FetchError(f"{name}: {e}; {manual_route(name, source)}") from None
    return dest, True


def _build(name: str, tree: Path, paths: list[Path], src: sources_.DatasetSource,
           on_file: Callable[[int], None]) -> tuple[int, list[str]]:
    if src.build == "terra_incognita":
        return terra_incognita.build(paths[0], paths[1], tree, on_file)
    duplicates = sources_.domain_net_duplicates() if name == "domain_net" else frozenset()
    written, removed = 0, set()
    for source, path in zip(src.archives, paths):
        rename = sources_.member_rename(name, source, duplicates, removed)
        written += archives.extract(path, tree, rename, lambda n, base=written: on_file(base + n))
    if duplicates:
        log.info("domain_net: left out %d images on DomainBed's list of %d duplicates",
                 len(removed), len(duplicates))
    return written, []


def _every(seconds: float, name: str) -> Callable[[int], None]:
    """A count of images written, logged at most every ``seconds`` (DomainNet's 586,575 and
    TerraIncognita's image tarball take minutes)."""
    last = [time.monotonic()]

    def on_file(n: int) -> None:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            log.info("%s: %d images written so far", name, n)
    return on_file


def _install(tmp: Path, target: Path) -> None:
    """Renames ``tmp`` onto ``target``; an old ``target`` is moved aside first, deleted last."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch_dataset(name: str, data_dir: str | os.PathLike, *, mirror: str | None = None,
                  from_archive: str | os.PathLike | None = None, force: bool = False,
                  strict_counts: bool = True, keep_archives: bool = False,
                  progress: Progress | None = None, retries: int | None = None,
                  published: Published | None = None) -> Path:
    """Fetches, extracts, verifies and installs dataset ``name``; returns its folder.

    Raises FetchError (download, archive; the archive that failed is named, with the manual
    route) or TreeMismatchError (what differs from the published counts; with
    ``strict_counts=False`` that is logged and the tree installed, its manifest saying so)."""
    if name not in sources_.SOURCES:
        raise FetchError(f"no source for dataset {name!r}; fetchable: {', '.join(FETCHABLE)}")
    info, src = IMAGE_DATASETS[name], sources_.SOURCES[name]
    data_dir = Path(data_dir).expanduser()
    target = data_dir / info.dir
    if target.is_dir() and not force:
        return _kept(name, target)
    data_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(data_dir / f".{info.dir}", log.info):
        if target.is_dir() and not force:       # fetched by another process meanwhile
            return _kept(name, target)
        _fetch(name, info, src, data_dir, target, mirror, from_archive, strict_counts,
               keep_archives, progress, retries, published or PUBLISHED[name])
    return target


def _kept(name: str, target: Path) -> Path:
    manifest = read_manifest(target)
    if manifest:
        log.info("%s: %s already fetched and verified (%s images)", name, target,
                 f"{manifest.get('images', 0):,}")
    else:
        log.info("%s: %s exists (not fetched by hjax); kept as it is (--force replaces it)",
                 name, target)
    return target


def _fetch(name, info, src, data_dir, target, mirror, from_archive, strict_counts,
           keep_archives, progress, retries, published) -> None:
    single = len(src.archives) == 1
    obtained = [obtain(name, s, data_dir, mirror=mirror, from_archive=from_archive,
                       single=single, progress=progress, retries=retries) for s in src.archives]
    paths = [p for p, _ in obtained]
    tmp = Path(tempfile.mkdtemp(prefix=f".{info.dir}.partial-", dir=data_dir))
    try:
        t0 = time.monotonic()
        size = sum(p.stat().st_size for p in paths)
        log.info("%s: extracting %s (%.1f MB)", name, ", ".join(p.name for p in paths),
                 size / 1e6)
        try:
            written, problems = _build(name, tmp, paths, src, _every(10.0, name))
        except archives.ArchiveError as e:
            for path, downloaded in obtained:    # damaged: fetched afresh next time
                if downloaded:
                    path.unlink(missing_ok=True)
            raise FetchError(f"{name}: {e}; {manual_route(name, src.archives[0])}") from None
        t1 = time.monotonic()
        log.info("%s: %d images written in %.1f s (%.1f MB/s of archive, %.0f images/s)",
                 name, written, t1 - t0, size / 1e6 / max(t1 - t0, 1e-9),
                 written / max(t1 - t0, 1e-9))
        try:
            counts, digest, diffs = verify_tree(tmp, name, published, problems, strict_counts)
        except TreeMismatchError as e:
            kept = ", ".join(str(p) for p, d in obtained if d)
            where = f" (the archives stay in {kept}: delete them to download again)" if kept \
                else ""
            raise TreeMismatchError(f"{e}; --nostrict_counts installs it anyway{where}"
                                    ) from None
        t2 = time.monotonic()
        total = sum(sum(c.values()) for c in counts.values())
        log.info("%s: verified %d images (every header read) in %.1f s (%.0f images/s)%s",
                 name, total, t2 - t1, total / max(t2 - t1, 1e-9),
                 f"; differs from the published counts: {'; '.join(diffs[:6])}" if diffs
                 else "; counts match the published ones")
        write_manifest(tmp, name, counts, digest,
                       [{"file": p.name, "url": source_url(s, mirror) if d else str(p),
                         "sha256": check_digest(p, s), "bytes": p.stat().st_size}
                        for s, (p, d) in zip(src.archives, obtained)], diffs)
        os.chmod(tmp, 0o755)
        _install(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archives:
        for path, downloaded in obtained:
            if downloaded:
                path.unlink(missing_ok=True)
    log.info("%s: ready in %s", name, target)
