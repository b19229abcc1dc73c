"""Zip and tar(.gz) archives read member by member, refusing members that would land outside
the target folder.

Every member's name is checked before anything of it is written, whether it is wanted or not:
an absolute path, a ``..`` that climbs out, a link (symbolic or hard) whose target lies out
of the target folder, or a device / FIFO member refuses the whole archive with one line
naming the member (:class:`UnsafeArchiveError`). Python's tarfile ``filter="data"`` does the
same for tars (PEP 706), but zipfile has no such filter, and one check for both formats gives
one wording. Tars are read as a stream (one pass, no index), so a multi-GB tarball of which a
few thousand members are wanted is read once and only those are written.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable, Iterator, NamedTuple

from hjax.data.download import FetchError


class ArchiveError(FetchError):
    """An archive that cannot be read (damaged, cut short, not a zip or tar)."""


class UnsafeArchiveError(ArchiveError):
    """A member that would be written outside the target folder (one line)."""


class Member(NamedTuple):
    path: str                     # checked relative path, "/"-separated, no "." or ".."
    kind: str                     # "file", "dir" or "link" (symbolic; hard links as "hardlink")
    link: str | None              # a link's target: relative to the member's folder for
                                  # symbolic links, to the archive root for hard links
    open: Callable[[], IO[bytes]] | None   # a file's bytes (valid while iterating)


def safe_path(name: str, archive: str) -> str:
    """``name`` as a relative "/"-path, or UnsafeArchiveError when it is absolute or climbs
    out of the folder it is extracted into."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: '..' leads out of "
                                 "the target folder")
    return "/".join(parts)


def _check_link(path: str, target: str, hard: bool, archive: str) -> None:
    joined = target if hard else posixpath.join(posixpath.dirname(path), target)
    norm = posixpath.normpath(joined.replace("\\", "/"))
    if target.startswith(("/", "\\")) or norm == ".." or norm.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: refusing member {path!r}: a link to "
                                 f"{target!r}, out of the target folder")


def _zip_members(z: zipfile.ZipFile, archive: str) -> Iterator[Member]:
    for info in z.infolist():
        path = safe_path(info.filename, archive)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = z.read(info).decode("utf-8", "replace")
            _check_link(path, target, False, archive)
            yield Member(path, "link", target, None)
        elif info.is_dir():
            yield Member(path, "dir", None, None)
        else:
            yield Member(path, "file", None, lambda info=info: z.open(info))


def _tar_members(t: tarfile.TarFile, archive: str) -> Iterator[Member]:
    for info in t:
        path = safe_path(info.name, archive)
        if info.issym() or info.islnk():
            _check_link(path, info.linkname, info.islnk(), archive)
            yield Member(path, "hardlink" if info.islnk() else "link", info.linkname, None)
        elif info.isdir():
            yield Member(path, "dir", None, None)
        elif info.isfile():
            yield Member(path, "file", None, lambda info=info: t.extractfile(info))
        else:
            raise UnsafeArchiveError(f"{archive}: refusing member {info.name!r}: a device "
                                     "or special file")


def members(archive: str | os.PathLike) -> Iterator[Member]:
    """Every member of a zip or tar(.gz, .bz2, .xz) archive, checked (see module doc)."""
    archive = Path(archive)
    name = archive.name
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                yield from _zip_members(z, name)
        else:
            with tarfile.open(archive, "r|*") as t:
                yield from _tar_members(t, name)
    except UnsafeArchiveError:
        raise
    except _DAMAGED as e:
        raise _damaged(name, e) from None


# What reading a damaged zip or tar(.gz) raises, listing it or reading a member's bytes.
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError)


def _damaged(archive: str, e: BaseException) -> ArchiveError:
    reason = " ".join(str(e).split()) or type(e).__name__
    return ArchiveError(f"{archive} is damaged or not a zip/tar archive ({reason})")


def _inside(root: Path, path: Path) -> bool:
    return os.path.commonpath([root, path]) == str(root)


def write_member(member: Member, root: Path, out: str, archive: str) -> None:
    """Writes ``member`` (a file or a link) at ``root/out``."""
    dest = root / out
    if not _inside(root, Path(os.path.abspath(dest))):
        raise UnsafeArchiveError(f"{archive}: refusing member {member.path!r}: it would land "
                                 "out of the target folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if member.kind == "file":
        with open(dest, "wb") as f:
            try:
                with member.open() as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            except _DAMAGED as e:
                if isinstance(e, OSError) and e.errno is not None:
                    raise                   # a write error (disk full), not the archive
                raise _damaged(archive, e) from None
    elif member.kind == "link":
        os.symlink(member.link, dest)
    elif member.kind == "hardlink":
        shutil.copyfile(root / member.link, dest)


def extract(archive: str | os.PathLike, root: str | os.PathLike,
            rename: Callable[[str], str | None], on_file: Callable[[int], None] | None = None
            ) -> int:
    """Writes the members ``rename`` maps to a path (None: skip) under ``root``; returns how
    many files were written. Every member is checked, skipped ones too."""
    root = Path(os.path.abspath(root))
    name = Path(archive).name
    written = 0
    for member in members(archive):
        out = rename(member.path)
        if out is None or member.kind == "dir":
            continue
        write_member(member, root, out, name)
        written += 1
        if on_file:
            on_file(written)
    return written
