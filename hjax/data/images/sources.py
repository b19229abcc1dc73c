"""Where DomainBed's image datasets come from and how each archive becomes its folder.

The URLs are those of DomainBed's ``domainbed/scripts/download.py`` at b93c22a. No archive
checksum is published (DomainBed checks none), so an archive is trusted through what is
extracted from it: the counts and headers that :mod:`hjax.data.images.verify` checks, and
its sha256, recorded in the dataset's manifest.

With a mirror (``--mirror`` / $HJAX_MIRROR) every archive is fetched from
``<mirror>/<file>``, ``file`` as named here (``PACS.zip``, ``clipart.zip``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from hjax.data.download import Source

_DRIVE = "https://drive.google.com/uc?export=download&id="
_DOMAIN_NET = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
_CCT = "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/"
DUPLICATES_FILE = Path(__file__).with_name("domain_net_duplicates.txt")


class DatasetSource(NamedTuple):
    archives: tuple[Source, ...]
    top: str | None        # the archive's top folder renamed to the dataset's (None: kept)
    build: str = "extract"  # "extract" (members renamed) or "terra_incognita"


_DOMAIN_NET_ZIPS = ("groundtruth/clipart.zip", "infograph.zip", "groundtruth/painting.zip",
                    "quickdraw.zip", "real.zip", "sketch.zip")

SOURCES: dict[str, DatasetSource] = {
    "vlcs": DatasetSource(
        (Source("VLCS.tar.gz", _DRIVE + "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8", drive=True),),
        "VLCS/"),
    "pacs": DatasetSource(
        (Source("PACS.zip", _DRIVE + "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", drive=True),),
        "kfold/"),
    "office_home": DatasetSource(
        (Source("office_home.zip", _DRIVE + "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC", drive=True),),
        "OfficeHomeDataset_10072016/"),
    "domain_net": DatasetSource(
        tuple(Source(p.rsplit("/", 1)[-1], _DOMAIN_NET + p) for p in _DOMAIN_NET_ZIPS), None),
    "terra_incognita": DatasetSource(
        (Source("eccv_18_all_images_sm.tar.gz", _CCT + "eccv_18_all_images_sm.tar.gz"),
         Source("eccv_18_annotations.tar.gz", _CCT + "eccv_18_annotations.tar.gz")),
        None, "terra_incognita"),
}


def domain_net_duplicates() -> frozenset[str]:
    """The 9,431 relative paths of DomainBed's ``domainbed/misc/domain_net_duplicates.txt``
    (b93c22a, MIT licence), shipped verbatim beside this module."""
    return frozenset(line.strip() for line in DUPLICATES_FILE.read_text().splitlines()
                     if line.strip())


def member_rename(name: str, source: Source, duplicates: frozenset[str] = frozenset(),
                  removed: set[str] | None = None) -> Callable[[str], str | None]:
    """The map of ``source``'s member paths onto the dataset folder (None: not kept).

    PACS, VLCS, OfficeHome: the archive's top folder becomes the dataset folder (members
    outside it, such as ``__MACOSX/``, are left out). DomainNet: ``<domain>/...`` of the zip
    named after the domain, less DomainBed's duplicates (added to ``removed``)."""
    top = SOURCES[name].top
    if top is not None:
        return lambda path: path[len(top):] if path.startswith(top) else None
    domain = source.file.removesuffix(".zip") + "/"

    def rename(path: str) -> str | None:
        if path in duplicates:
            if removed is not None:
                removed.add(path)
            return None
        return path if path.startswith(domain) else None
    return rename
