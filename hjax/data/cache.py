"""The on-disk MNIST cache: one .npz, written atomically, trusted only after checking.

A cache that fails to open or whose content digest differs from the expected one is
treated as absent (the caller reports and rebuilds it), never used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from hjax.data.schema import Mnist, canonical, digest

CACHE_NAME = "mnist.npz"
ENV_VAR = "HJAX_DATA_DIR"


class CorruptCacheError(RuntimeError):
    """The cache file exists but cannot be used."""


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: `override`, else $HJAX_DATA_DIR, else ~/.cache/hjax."""
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "hjax").expanduser()


def cache_path(override: str | os.PathLike | None = None) -> Path:
    return data_dir(override) / CACHE_NAME


def read(path: Path, expected_sha256: str) -> Mnist:
    """Reads and verifies the cache at `path`.

    Raises FileNotFoundError if absent and CorruptCacheError if it is unreadable,
    malformed or its content digest is not `expected_sha256`.
    """
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            mnist = canonical(Mnist(*(npz[field] for field in Mnist._fields)))
    except Exception as e:  # any failure to read means the file cannot be trusted
        raise CorruptCacheError(_npz_problem(e)) from e    # callers name the file
    found = digest(mnist)
    if found != expected_sha256:
        raise CorruptCacheError(f"content sha256 {found[:12]}... is not the expected "
                                f"{expected_sha256[:12]}...")
    return mnist


def _npz_problem(e: BaseException) -> str:
    """Why the cache could not be read, in a few words. Bytes that are neither a zip nor an
    .npy header make numpy guess "pickled data" and advise loading it unsafely: wrong advice
    for a damaged cache, so it is never passed on."""
    if isinstance(e, ValueError) and "pickle" in str(e):
        return "neither a zip archive nor a numpy array"
    if isinstance(e, EOFError):
        return "empty or cut short"
    if isinstance(e, KeyError):
        return f"no array {e.args[0]!r}" if e.args else "an array is missing"
    return " ".join(f"{type(e).__name__}: {e}".split())[:160]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write(path: Path, mnist: Mnist) -> Path:
    """Writes `mnist` to `path` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **mnist._asdict())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
