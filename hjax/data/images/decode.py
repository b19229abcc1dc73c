"""The host's only work on an image: file -> RGB uint8 on a fixed square canvas.

An image is stored at the top-left of a ``canvas x canvas x 3`` uint8 array, its real size
``(h, w)`` beside it. Images that fit are kept at their own resolution (a 227 px PACS image
is only decoded and copied); larger ones are shrunk, aspect kept, so that their longer side
is ``canvas``: JPEGs first by PIL's ``draft`` (the decoder's own 1/2, 1/4, 1/8 DCT scaling,
which decodes fewer pixels), then by ``Image.resize`` (bilinear, antialiased) from the
smallest draft that still covers the canvas. The pixels outside ``(h, w)`` are left as they
are (zeros in a fresh array): the device transforms read only inside ``(h, w)``
(:mod:`hjax.data.images.device_transforms` repeats edge pixels there).

Because the aspect ratio is kept, a crop drawn on ``(h, w)`` has the area fraction and
aspect ratio it would have on the original image; only its resolution can be lower, for
images larger than the canvas. :func:`canvas_size` picks the default canvas for an output
size: 8/7 of it (256 for 224), the usual "resize 256, crop 224" margin.
"""

from __future__ import annotations

import numpy as np

from hjax.data.images.registry import ImageDecodeError


def canvas_size(image_size: int) -> int:
    """The default decode canvas for ``image_size`` outputs: ceil(8/7 x image_size)."""
    return -(-8 * int(image_size) // 7)


def _decode_error(path: str, e: Exception) -> ImageDecodeError:
    return ImageDecodeError(f"cannot decode image {path} ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]}); remove or replace the file")


def decode_rgb(path: str):
    """The image at ``path`` as an RGB PIL image, fully decoded; ImageDecodeError otherwise."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # any decode failure names the file, in one line
        raise _decode_error(path, e) from None


def fit_size(height: int, width: int, canvas: int) -> tuple[int, int]:
    """(h, w) of an image of ``(height, width)`` on ``canvas``: unchanged if it fits, else
    shrunk (aspect kept, rounded, at least 1) so that its longer side is ``canvas``."""
    if height <= canvas and width <= canvas:
        return height, width
    scale = canvas / max(height, width)
    return max(1, min(canvas, round(height * scale))), max(1, min(canvas, round(width * scale)))


def decode_into(path: str, out: np.ndarray) -> tuple[int, int]:
    """Decodes ``path`` into the top-left of ``out`` ([C, C, 3] uint8, e.g. a slice of a batch
    or of the cache's memory map); returns its ``(h, w)``. ImageDecodeError names a file that
    does not decode."""
    from PIL import Image
    canvas = out.shape[0]
    try:
        with Image.open(path) as im:
            h, w = fit_size(im.height, im.width, canvas)
            if (h, w) != (im.height, im.width) and im.format == "JPEG":
                # The decoder scales by 1/2^k, keeping both sides >= the request.
                im.draft("RGB", (w, h))
            im = im.convert("RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            out[:h, :w] = np.asarray(im)
    except Exception as e:  # any decode failure names the file, in one line
        raise _decode_error(path, e) from None
    return h, w


def decode_canvas(path: str, canvas: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 [canvas, canvas, 3] with the image top-left and zeros elsewhere, (h, w))."""
    out = np.zeros((canvas, canvas, 3), np.uint8)
    return out, decode_into(path, out)
