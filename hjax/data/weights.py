"""torchvision's ImageNet ResNet weights fetched, checked and stored as .npz, without torch.

Sources: torchvision's ``resnet18-f37072fd.pth`` and ``resnet50-0676ba61.pth`` (torch hub's
rule: the file's sha256 starts with the hex after the last ``-``), and for ResNet-50 the same
weights as safetensors (the model hub's ``timm/resnet50.tv_in1k``, torchvision's key names,
sha256 pinned), reached through a mirror only: ``<mirror>/resnet50.tv_in1k.safetensors``.
With a mirror the ``.pth`` is tried first, then the safetensors copy.

A ``.pth`` is read by :mod:`hjax.data.torch_zip` (no torch, no pickled code); a safetensors
file by its header. The featurizer's tensors (``fc.*`` and ``num_batches_tracked`` dropped,
float32: what ``python -m hjax.cli.convert_weights`` writes) are stored atomically as
``<data_dir>/weights/<arch>-imagenet1k_v1.npz``, which ``--pretrained`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from hjax.data import cache
from hjax.data.download import (FetchError, Progress, Source, check_digest, download,
                                file_lock, mirror_from_env, source_url)
from hjax.data.torch_zip import TorchFileError, read_torch_zip
from hjax.errors import ConfigError

log = logging.getLogger("hjax.data")
WEIGHTS_DIR = "weights"
PRETRAINED_IMAGENET = "imagenet"
_TORCHVISION = "https://download.pytorch.org/models/"

WEIGHT_SOURCES: dict[str, tuple[Source, ...]] = {
    "resnet18": (Source("resnet18-f37072fd.pth", _TORCHVISION + "resnet18-f37072fd.pth",
                        sha256_prefix="f37072fd"),),
    "resnet50": (Source("resnet50-0676ba61.pth", _TORCHVISION + "resnet50-0676ba61.pth",
                        sha256_prefix="0676ba61"),
                 Source("resnet50.tv_in1k.safetensors", None,
                        sha256="5d061a3c593d795bfe682d9b152bafbcf550579873492def3515b46db1189888")),
}
WEIGHT_ARCHS = tuple(WEIGHT_SOURCES)


def weights_path(arch: str, data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).expanduser() / WEIGHTS_DIR / f"{arch}-imagenet1k_v1.npz"


def _safetensors_arrays(path: Path) -> dict[str, np.ndarray]:
    """F32 / I64 tensors of a safetensors file (what a torchvision state dict holds)."""
    dtypes = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[key] = np.frombuffer(raw[8 + n + begin:8 + n + end],
                                 dtypes[entry["dtype"]]).reshape(entry["shape"])
    return out


def featurizer_arrays(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state dict less ``fc.*`` and the BN counters, floats as float32."""
    return {k: np.asarray(v, np.float32) for k, v in state.items()
            if not (k.startswith("fc.") or k.endswith(".num_batches_tracked"))}


def read_weights_file(path: Path) -> dict[str, np.ndarray]:
    """A checked .pth or .safetensors file -> {torchvision key: array}."""
    if path.suffix == ".safetensors":
        try:
            return _safetensors_arrays(path)
        except (OSError, ValueError, KeyError, struct.error) as e:
            raise FetchError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        return read_torch_zip(path)
    except TorchFileError as e:
        raise FetchError(str(e)) from None


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_weights(arch: str, data_dir: str | os.PathLike, *, mirror: str | None = None,
                  from_archive: str | os.PathLike | None = None, force: bool = False,
                  progress: Progress | None = None, retries: int | None = None,
                  log_: Callable[[str], None] = log.info) -> Path:
    """The .npz of ``arch``'s ImageNet weights, fetched and checked first if missing.

    ``from_archive``: a .pth / .safetensors file the user has (checked against the same
    sha256). Raises FetchError with the URL, the reason and the manual route."""
    if arch not in WEIGHT_SOURCES:
        raise ConfigError(f"--weights={arch!r} is not valid; choose from: "
                          f"{', '.join(WEIGHT_ARCHS)}")
    out = weights_path(arch, data_dir)
    if out.is_file() and not force:
        log_(f"{arch}: ImageNet weights already in {out}")
        return out
    with file_lock(out, log_):
        if out.is_file() and not force:       # fetched by another process meanwhile
            return out
        return _fetch_weights(arch, out, data_dir, mirror, from_archive, progress, retries,
                              log_)


def _given_file(arch: str, given: Path) -> Path:
    """A weights file the user has, checked against the sha256 of the source it matches."""
    sources = WEIGHT_SOURCES[arch]
    match = [s for s in sources if s.file == given.name] or [
        s for s in sources if given.suffix == Path(s.file).suffix]
    if not match or not given.is_file():
        names = " or ".join(s.file for s in sources)
        raise FetchError(f"--from_archive={given}: give {names} (a file)")
    check_digest(given, match[0])
    return given


def _downloaded_file(arch: str, out: Path, downloads: Path, mirror, progress, retries,
                     log_) -> Path:
    """The first of ``arch``'s sources that downloads and checks (the mirror's, with one)."""
    sources = WEIGHT_SOURCES[arch]
    errors = []
    for source in (s for s in sources if source_url(s, mirror)):
        url = source_url(source, mirror)
        log_(f"{arch}: fetching torchvision's ImageNet weights from {url} into {out}")
        try:
            return download(source, downloads / source.file, url=url, progress=progress,
                            retries=retries, log=log_)
        except FetchError as e:
            errors.append(str(e))
    names = " or ".join(s.file for s in sources)
    raise FetchError(f"{arch} weights: {'; '.join(errors)}; get {names} another way and run "
                     f"`python -m hjax.cli.fetch_data --weights={arch} --from_archive=PATH`, "
                     f"or set --mirror / $HJAX_MIRROR")


def _fetch_weights(arch, out, data_dir, mirror, from_archive, progress, retries, log_) -> Path:
    if from_archive is not None:
        path = _given_file(arch, Path(from_archive).expanduser())
    else:
        downloads = Path(data_dir).expanduser() / "downloads"
        path = _downloaded_file(arch, out, downloads, mirror, progress, retries, log_)
    _save_npz(out, featurizer_arrays(read_weights_file(path)))
    if from_archive is None:
        path.unlink(missing_ok=True)
    log_(f"{arch}: ImageNet weights stored in {out}")
    return out


def resolve_pretrained(spec: str | None, arch: str, data_dir: str | os.PathLike | None,
                       log: Callable[[str], None]) -> str | None:
    """``--pretrained``'s value as a weights file: ``imagenet`` -> torchvision's ImageNet
    weights of ``arch`` (fetched into ``<data_dir>/weights/`` first when missing, saying so
    through ``log``; the mirror from $HJAX_MIRROR); any other value (a path, or None) is
    returned unchanged."""
    if spec != PRETRAINED_IMAGENET:
        return spec
    base = cache.data_dir(data_dir)
    if arch not in WEIGHT_SOURCES:
        raise ConfigError(f"--pretrained=imagenet: no ImageNet weights for --arch={arch}; "
                          f"known: {', '.join(WEIGHT_ARCHS)}")
    return str(fetch_weights(arch, base, mirror=mirror_from_env(None), log_=log))
