"""DomainBed's image transforms in PIL + numpy (no torch), float32 HWC output.

Train (``data_augmentation=True``), in torchvision's order::

    RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(3/4, 4/3))   # bilinear
    RandomHorizontalFlip(p=0.5)
    ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.3)
    RandomGrayscale(p=0.1)
    ToTensor + Normalize(ImageNet mean, std)

Eval: Resize((size, size)) (bilinear) + the same normalisation.

Each random step follows torchvision's PIL code path (``transforms.py`` and
``functional_pil.py``): the crop's 10-attempt rule with the center-crop fallback, PIL's
ImageEnhance for brightness/contrast/saturation, a uint8 shift of the HSV hue channel, the
four jitters in a random order per call, grayscale via ``convert("L")`` copied to 3 channels.
The random numbers come only from the ``numpy.random.Generator`` passed in (so the draws, not
the distributions, differ from torch's).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

IMAGENET_MEAN = np.asarray((0.485, 0.456, 0.406), np.float32)
IMAGENET_STD = np.asarray((0.229, 0.224, 0.225), np.float32)
CROP_SCALE = (0.7, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.3
GRAYSCALE_P = 0.1
FLIP_P = 0.5


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of torchvision's RandomResizedCrop.get_params."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height                      # fallback: central crop
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        scale=CROP_SCALE, ratio=CROP_RATIO) -> Image.Image:
    top, left, h, w = random_resized_crop_params(img.height, img.width, rng, scale, ratio)
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def random_horizontal_flip(img: Image.Image, rng: np.random.Generator,
                           p: float = FLIP_P) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < p else img


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's PIL adjust_hue: shift the HSV hue byte by ``uint8(hue_factor * 255)``
    (numpy's cast on x86: the product truncated toward zero, modulo 256), wrapping."""
    if img.mode in ("L", "1", "I", "F"):
        return img
    h, s, v = img.convert("HSV").split()
    shift = np.uint8(int(hue_factor * 255) % 256)
    np_h = np.asarray(h, dtype=np.uint8) + shift          # wraps modulo 256
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert(img.mode)


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness: float = JITTER,
                 contrast: float = JITTER, saturation: float = JITTER,
                 hue: float = JITTER) -> Image.Image:
    """torchvision ColorJitter: a random order of the four, factors U[1-x, 1+x], hue U[-h, h]."""
    order = rng.permutation(4)
    b = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    c = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
    s = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
    h = rng.uniform(-hue, hue)
    for fn in order:
        if fn == 0:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif fn == 1:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif fn == 2:
            img = ImageEnhance.Color(img).enhance(s)
        else:
            img = adjust_hue(img, h)
    return img


def random_grayscale(img: Image.Image, rng: np.random.Generator,
                     p: float = GRAYSCALE_P) -> Image.Image:
    if rng.random() < p:
        gray = img.convert("L")
        return Image.merge("RGB", (gray, gray, gray))
    return img


_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize(img: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 RGB HWC -> float32 (x / 255 - mean) / std, as one multiply-add per value."""
    x = np.array(img, dtype=np.float32)            # always a new array: scaled in place
    x *= _SCALE
    x += _OFFSET
    return x


def train_transform(img: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """DomainBed's training augmentation of an RGB PIL image -> float32 [size, size, 3]."""
    img = random_resized_crop(img, size, rng)
    img = random_horizontal_flip(img, rng)
    img = color_jitter(img, rng)
    img = random_grayscale(img, rng)
    return normalize(img)


def eval_transform(img: Image.Image, size: int) -> np.ndarray:
    """DomainBed's evaluation transform: resize to (size, size), normalise -> float32 HWC."""
    return normalize(img.resize((size, size), Image.BILINEAR))
