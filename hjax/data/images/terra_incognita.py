"""TerraIncognita built from the Caltech Camera Traps (ECCV 2018) archives in one pass.

DomainBed's rule (``download_terra_incognita`` at b93c22a): the annotations of all five
files of ``eccv_18_annotation_files/`` (cis_test, cis_val, train, trans_test, trans_val)
are merged; an image of location 38, 43, 46 or 100 goes to
``location_<L>/<category>/<file_name>`` once for each of its annotations whose category is
one of the ten kept (bird, bobcat, cat, coyote, dog, empty, opossum, rabbit, raccoon,
squirrel), so an image annotated with two kept categories is in both class folders.

DomainBed extracts the whole image tarball and then, for every image, scans every
annotation (images x annotations). Here the annotations are indexed by image once, the
wanted file names are known before the image tarball is opened, and that tarball is read as
a stream once, writing only the wanted members: images + annotations.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Callable

from hjax.data import archives
from hjax.data.download import FetchError
from hjax.data.images.registry import IMAGE_DATASETS

LOCATIONS = ("38", "43", "46", "100")
CATEGORIES = IMAGE_DATASETS["terra_incognita"].classes
IMAGES_PREFIX = "eccv_18_all_images_sm/"
ANNOTATIONS_PREFIX = "eccv_18_annotation_files/"
ANNOTATION_FILES = ("cis_test_annotations.json", "cis_val_annotations.json",
                    "train_annotations.json", "trans_test_annotations.json",
                    "trans_val_annotations.json")


def read_annotations(archive: Path) -> dict[str, list]:
    """The five annotation files of ``archive`` merged (their lists concatenated)."""
    merged, found = defaultdict(list), set()
    for member in archives.members(archive):
        name = member.path[len(ANNOTATIONS_PREFIX):]
        if member.kind != "file" or not member.path.startswith(ANNOTATIONS_PREFIX) or \
                name not in ANNOTATION_FILES:
            continue
        with member.open() as f:
            try:
                data = json.load(f)
            except ValueError as e:
                raise FetchError(f"{archive.name}: {member.path} is not JSON ({e})") from None
        for key, value in data.items():
            if isinstance(value, list):
                merged[key].extend(value)
        found.add(name)
    missing = [n for n in ANNOTATION_FILES if n not in found]
    if missing:
        raise FetchError(f"{archive.name} lacks {ANNOTATIONS_PREFIX}{', '.join(missing)}")
    return merged


def plan(annotations: dict[str, list], archive_name: str = "annotations"
         ) -> dict[str, list[str]]:
    """{image file name: [destination relative paths]} (see the module doc)."""
    try:
        names = {c["id"]: c["name"] for c in annotations["categories"]}
        by_image = defaultdict(list)
        for a in annotations["annotations"]:
            category = names[a["category_id"]]
            if category in CATEGORIES and category not in by_image[a["image_id"]]:
                by_image[a["image_id"]].append(category)
        out = defaultdict(list)
        for image in annotations["images"]:
            location = str(image["location"])
            if location not in LOCATIONS:
                continue
            file_name = archives.safe_path(image["file_name"], archive_name)
            for category in by_image.get(image["id"], ()):
                dest = f"location_{location}/{category}/{Path(file_name).name}"
                if dest not in out[file_name]:
                    out[file_name].append(dest)
    except (KeyError, TypeError) as e:
        raise FetchError(f"{archive_name}: annotations lack a field ({e})") from None
    return dict(out)


def build(images: Path, annotations: Path, root: Path,
          on_file: Callable[[int], None] | None = None) -> tuple[int, list[str]]:
    """Writes the TerraIncognita tree under ``root``; returns (images written, problems)
    where problems name annotated images that the image archive lacks."""
    wanted = plan(read_annotations(annotations), annotations.name)
    root = Path(root)
    written, seen = 0, set()
    for member in archives.members(images):
        if member.kind != "file" or not member.path.startswith(IMAGES_PREFIX):
            continue
        dests = wanted.get(member.path[len(IMAGES_PREFIX):])
        if not dests or member.path in seen:
            continue
        seen.add(member.path)
        archives.write_member(member, root, dests[0], images.name)
        for other in dests[1:]:             # an image in two class folders
            (root / other).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / dests[0], root / other)
        written += len(dests)
        if on_file:
            on_file(written)
    absent = sorted(set(wanted) - {p[len(IMAGES_PREFIX):] for p in seen})
    problems = ([f"{len(absent)} annotated image(s) absent from {images.name}, e.g. "
                 f"{', '.join(absent[:3])}"] if absent else [])
    return written, problems
