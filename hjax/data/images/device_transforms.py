"""DomainBed's image transforms in JAX, per example, for the accelerator.

Input: uint8 canvases ``[..., C, C, 3]`` with each image's ``(h, w)`` beside it
(:mod:`hjax.data.images.decode`). Output: float32 ``[..., S, S, 3]``, ImageNet-normalised.

Train, in torchvision's order (DomainBed's ``data_augmentation=True``)::

    RandomResizedCrop(S, scale=(0.7, 1.0), ratio=(3/4, 4/3))   # bilinear
    RandomHorizontalFlip(0.5)
    ColorJitter(0.3, 0.3, 0.3, 0.3)                            # the four in a random order
    RandomGrayscale(0.1)
    Normalize(ImageNet mean, std)

Eval: Resize((S, S)), bilinear, then the same normalisation.

Semantics (tested against :mod:`hjax.data.images.pil_transforms`, the PIL reference):

- The crop follows torchvision's ``RandomResizedCrop.get_params``: 10 attempts drawn at once,
  the first that fits is used, else the central crop of the clamped aspect ratio; its box is
  cut and resized in one ``jax.image.scale_and_translate`` (triangle filter, antialiased: PIL's
  bilinear ``resize(box=...)``). The filter reads past the box, so pixels outside ``(h, w)``
  are replaced by the nearest edge pixel first (a gather, on the device).
- Colour ops follow the definitions torchvision's PIL path uses (``ImageEnhance``): brightness
  blends with black, contrast with the mean of the grey image, saturation with the grey image,
  each clipped to [0, 1]; grey is ITU-R 601-2 luma (PIL's ``convert("L")``). Those three keep
  floats where PIL truncates each blend to uint8 (about half a grey level lower per blend):
  a difference of rounding, not of distribution.
- Hue follows torchvision's PIL ``adjust_hue`` exactly, not its float tensor path: the image
  goes to its nearest 8-bit levels, through PIL's 8-bit HSV (``convert("HSV")``: V = max,
  S and H truncated to bytes), the hue byte is shifted by ``uint8(factor * 255)`` with
  wrap-around, and PIL's HSV -> RGB rounding brings it back, as integer arithmetic on the
  device. Equal to PIL's bytes for every one of the 2^24 colours (both conversions checked
  exhaustively against Pillow); at factor +-0.3 a float HSV shift differs from it by 0.1 to
  0.8 grey levels on average and up to 14 on saturated pixels.
- Flip after the resize (every later op is per pixel or, for contrast, flip-invariant).

Why hand-written rather than dm-pix: of DomainBed's transforms dm-pix has flip, hue and
grey conversion; its brightness is additive and its contrast is per channel (TensorFlow's
definitions, not the multiplicative blends of PIL/torchvision), it has no resized crop and no
random order, and its hue is a float HSV shift, not PIL's 8-bit one. What it would supply (a
flip, a grey dot product) is a few lines here, so it does not earn a dependency.

Randomness: :func:`example_keys` derives example ``(e, i)``'s key of step ``t`` as
``fold_in(fold_in(fold_in(key(seed), t), e), i)``, so the batch of step t depends on
(seed, t) only, as the host sampling does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.7, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.3
GRAYSCALE_P = 0.1
FLIP_P = 0.5
CROP_ATTEMPTS = 10
# ITU-R 601-2 luma, PIL's convert("L").
LUMA = (0.299, 0.587, 0.114)


class AugmentParams(NamedTuple):
    """One example's random draws (leading axes for many examples)."""
    box: jax.Array          # int32 [4]: top, left, height, width of the crop
    flip: jax.Array         # bool
    order: jax.Array        # int32 [4]: brightness 0, contrast 1, saturation 2, hue 3
    factors: jax.Array      # float32 [4]: brightness, contrast, saturation, hue
    grayscale: jax.Array    # bool


def crop_box(key: jax.Array, height, width, scale=CROP_SCALE, ratio=CROP_RATIO) -> jax.Array:
    """int32 [top, left, h, w] of torchvision's RandomResizedCrop.get_params on a
    ``height x width`` image (traced sizes allowed)."""
    k_area, k_ratio, k_pos = jax.random.split(key, 3)
    height = jnp.asarray(height, jnp.int32)
    width = jnp.asarray(width, jnp.int32)
    area = (height * width).astype(jnp.float32)
    target = area * jax.random.uniform(k_area, (CROP_ATTEMPTS,), minval=scale[0],
                                       maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (CROP_ATTEMPTS,),
                                        minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
    # jnp.round rounds half to even, as Python's round() in torchvision.
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits)
    found = jnp.any(fits)
    # Fallback: the central crop, aspect ratio clamped to the allowed range.
    in_ratio = width.astype(jnp.float32) / height.astype(jnp.float32)
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fb_w = jnp.where(narrow, width, jnp.where(
        wide, jnp.round(height * max(ratio)).astype(jnp.int32), width))
    fb_h = jnp.where(narrow, jnp.round(width / min(ratio)).astype(jnp.int32), height)
    ch = jnp.where(found, h[first], fb_h)
    cw = jnp.where(found, w[first], fb_w)
    u = jax.random.uniform(k_pos, (2,))
    # randint(0, n + 1) as floor(u (n + 1)), clamped against float rounding at u -> 1.
    top = jnp.minimum(jnp.floor(u[0] * (height - ch + 1)).astype(jnp.int32), height - ch)
    left = jnp.minimum(jnp.floor(u[1] * (width - cw + 1)).astype(jnp.int32), width - cw)
    top = jnp.where(found, top, (height - ch) // 2)
    left = jnp.where(found, left, (width - cw) // 2)
    return jnp.stack([top, left, ch, cw]).astype(jnp.int32)


def draw_params(key: jax.Array, hw: jax.Array, jitter: float = JITTER,
                grayscale_p: float = GRAYSCALE_P, flip_p: float = FLIP_P) -> AugmentParams:
    """All random draws of one training example on an image of size ``hw = (h, w)``."""
    k_crop, k_flip, k_order, k_factor, k_gray = jax.random.split(key, 5)
    lo = jnp.asarray([max(0.0, 1 - jitter)] * 3 + [-jitter], jnp.float32)
    hi = jnp.asarray([1 + jitter] * 3 + [jitter], jnp.float32)
    return AugmentParams(
        box=crop_box(k_crop, hw[0], hw[1]),
        flip=jax.random.uniform(k_flip) < flip_p,
        order=jax.random.permutation(k_order, 4).astype(jnp.int32),
        factors=jax.random.uniform(k_factor, (4,), minval=lo, maxval=hi),
        grayscale=jax.random.uniform(k_gray) < grayscale_p)


def edge_extend(canvas: jax.Array, hw: jax.Array) -> jax.Array:
    """float32 [C, C, 3]: the canvas with every pixel outside ``(h, w)`` replaced by the
    nearest pixel inside (the resampling filter reads past a box touching the edge)."""
    c = canvas.shape[0]
    rows = jnp.minimum(jnp.arange(c), hw[0] - 1)
    cols = jnp.minimum(jnp.arange(canvas.shape[1]), hw[1] - 1)
    return canvas[rows][:, cols].astype(jnp.float32)


def resize_box(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
    """The ``box = (top, left, h, w)`` of ``image`` [H, W, 3] resized to [size, size, 3]:
    PIL's ``resize((size, size), BILINEAR, box=...)`` (antialiased when shrinking)."""
    top, left, h, w = (box[i].astype(jnp.float32) for i in range(4))
    scale = jnp.stack([size / h, size / w])
    translation = jnp.stack([-top * size / h, -left * size / w])
    return jax.image.scale_and_translate(image, (size, size, image.shape[-1]), (0, 1), scale,
                                         translation, method="linear", antialias=True)


def grayscale(x: jax.Array) -> jax.Array:
    """[..., 3] -> [..., 1]: ITU-R 601-2 luma."""
    return (x @ jnp.asarray(LUMA, x.dtype))[..., None]


def adjust_brightness(x: jax.Array, factor) -> jax.Array:
    """ImageEnhance.Brightness: blend with black. ``x`` in [0, 1]."""
    return jnp.clip(x * factor, 0.0, 1.0)


def adjust_contrast(x: jax.Array, factor) -> jax.Array:
    """ImageEnhance.Contrast: blend with the mean of the grey image (one scalar)."""
    mean = jnp.mean(grayscale(x))
    return jnp.clip(factor * x + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(x: jax.Array, factor) -> jax.Array:
    """ImageEnhance.Color: blend with the grey image."""
    return jnp.clip(factor * x + (1.0 - factor) * grayscale(x), 0.0, 1.0)


def _pil_hue_rounds_down() -> np.ndarray:
    """bool [256]: for which hues ``k / 255`` (exact) PIL's hue byte is ``k - 1``, not ``k``.

    PIL computes the hue in float and double and truncates ``h * 255``; only where the exact
    value is an integer does its rounding error show. That error depends only on the hue (the
    ratios it divides are the same for every pixel of that hue), and every such hue is reached
    by a pixel with max 255 and min 0: evaluate PIL's arithmetic on those 1536 pixels here.
    """
    mid, top, zero = np.arange(256), np.full(256, 255), np.zeros(256, np.int64)
    orders = ((top, mid, zero), (top, zero, mid), (mid, top, zero), (zero, top, mid),
              (zero, mid, top), (mid, zero, top))
    r, g, b = (np.concatenate(c) for c in zip(*orders))
    f32, f64 = np.float32, np.float64
    rc, gc, bc = ((255 - c).astype(f32) / f32(255) for c in (r, g, b))
    # float where PIL's C has floats, double where its literals make the sums double.
    h = np.where(r == 255, bc - gc, np.where(
        g == 255, (2.0 + rc.astype(f64) - bc.astype(f64)).astype(f32),
        (4.0 + gc.astype(f64) - rc.astype(f64)).astype(f32)))
    h = np.fmod(h.astype(f64) / 6.0 + 1.0, 1.0).astype(f32)
    byte = np.floor(h.astype(f64) * 255.0)
    sixths = np.where(r == 255, g - b, np.where(g == 255, 510 + b - r, 1020 + r - g)) % 1530
    exact = sixths % 6 == 0                  # the hue sixths / 1530 is k / 255
    rounds_down = np.zeros(256, bool)
    rounds_down[sixths[exact] // 6] = byte[exact] < sixths[exact] // 6
    return rounds_down


_HUE_ROUNDS_DOWN = _pil_hue_rounds_down()


def to_levels(x: jax.Array) -> jax.Array:
    """[0, 1] floats -> int32 levels 0..255, the nearest (exact for ``uint8 / 255``)."""
    return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.int32)


def _floor_div(a: jax.Array, b) -> jax.Array:
    """``a // b`` for int32 ``a >= 0``, ``b >= 1``, ``a / b < 2^23``: the float quotient is
    off by at most one, which the remainder corrects (integer division does not vectorise
    on CPUs: this is about 1.3x faster there)."""
    q = jnp.floor(a.astype(jnp.float32) / jnp.asarray(b, jnp.float32)).astype(jnp.int32)
    r = a - q * b
    return q + (r >= b).astype(jnp.int32) - (r < 0).astype(jnp.int32)


def rgb_to_hsv_levels(rgb: jax.Array) -> jax.Array:
    """int32 [..., 3] RGB levels -> HSV bytes, PIL's ``convert("HSV")`` exactly.

    PIL keeps V = max, truncates S = 255 (max - min) / max and H = 255 hue (in turns); those
    are integer divisions here, less one where PIL's float hue falls just short of an
    integer (:func:`_pil_hue_rounds_down`). Grey pixels get H = S = 0.
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.maximum(r, jnp.maximum(g, b))
    chroma = v - jnp.minimum(r, jnp.minimum(g, b))
    grey = chroma == 0
    s = jnp.where(grey, 0, _floor_div(255 * chroma, jnp.maximum(v, 1)))
    # The hue in units of chroma / 6 turns, in PIL's order of cases (ties go to red, green).
    turn = 6 * jnp.maximum(chroma, 1)
    sixths = jnp.where(r == v, g - b, jnp.where(g == v, 2 * chroma + b - r,
                                                  4 * chroma + r - g))
    sixths = jnp.where(sixths < 0, sixths + turn, sixths)
    h = _floor_div(255 * sixths, turn)
    exact = 255 * sixths == h * turn
    h = h - (exact & jnp.asarray(_HUE_ROUNDS_DOWN)[h]).astype(h.dtype)
    return jnp.stack([jnp.where(grey, 0, h), s, v], axis=-1)


def _round_level(v: jax.Array, s: jax.Array, n: jax.Array) -> jax.Array:
    """PIL's ``round(v (1 - (s / 255) (n / 255)))``, as integers: the exact value is never
    a half (its denominator 65025 is odd), and on all 2^24 HSV triples PIL's float
    evaluation lands on the same side of the half as the exact value."""
    return _floor_div(2 * v * (65025 - s * n) + 65025, 130050)


def hsv_to_rgb_levels(hsv: jax.Array) -> jax.Array:
    """int32 [..., 3] HSV bytes -> RGB levels, PIL's ``convert("RGB")`` from HSV exactly:
    sector ``i = floor(6 h / 255)``, remainder ``f = 6 h / 255 - i``, each channel one of
    ``v``, ``p = v (1 - s)``, ``q = v (1 - s f)``, ``t = v (1 - s (1 - f))`` rounded."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = _floor_div(6 * h, 255)
    rest = 6 * h - 255 * sector              # 255 f
    p = _round_level(v, s, jnp.full_like(h, 255))
    q = _round_level(v, s, rest)
    t = _round_level(v, s, 255 - rest)
    cases = [sector % 6 == k for k in range(6)]
    channels = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    return jnp.stack([jnp.select(cases, [c[j] for c in channels]) for j in range(3)], -1)


def hue_shift_levels(factor) -> jax.Array:
    """int32: torchvision's hue byte shift ``uint8(factor * 255)``, the product truncated
    toward zero, modulo 256 (numpy's cast on x86). The float32 product truncates as the
    exact one would: near ``k / 255`` it never rounds onto ``k`` (checked for every float32
    within 3000 ulps of each ``k / 255``; farther ones are too far from ``k``)."""
    return jnp.trunc(jnp.asarray(factor, jnp.float32) * 255.0).astype(jnp.int32) % 256


def adjust_hue(x: jax.Array, factor) -> jax.Array:
    """torchvision's PIL ``adjust_hue``: ``x`` in [0, 1] to the nearest 8-bit levels, PIL's
    8-bit HSV, the hue byte shifted by :func:`hue_shift_levels` with wrap-around, back to
    RGB levels, returned as ``levels / 255``."""
    hsv = rgb_to_hsv_levels(to_levels(x))
    hsv = hsv.at[..., 0].set((hsv[..., 0] + hue_shift_levels(factor)) % 256)
    return hsv_to_rgb_levels(hsv).astype(jnp.float32) / 255.0


def color_jitter(x: jax.Array, order: jax.Array, factors: jax.Array) -> jax.Array:
    """The four jitters in ``order`` (brightness 0, contrast 1, saturation 2, hue 3)."""
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for slot in range(4):
        k = order[slot]
        # Under vmap a switch runs every branch and selects; these are elementwise and cheap.
        x = jax.lax.switch(k, [lambda x, f, op=op: op(x, f) for op in ops], x, factors[k])
    return x


def normalize(x: jax.Array) -> jax.Array:
    """[0, 1] RGB -> (x - ImageNet mean) / std."""
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def apply_train(params: AugmentParams, canvas: jax.Array, hw: jax.Array, size: int
                ) -> jax.Array:
    """One example's training transform with the given draws -> float32 [size, size, 3]."""
    x = resize_box(edge_extend(canvas, hw), params.box, size) / 255.0
    x = jnp.clip(x, 0.0, 1.0)
    x = jnp.where(params.flip, x[:, ::-1], x)
    x = color_jitter(x, params.order, params.factors)
    x = jnp.where(params.grayscale, jnp.broadcast_to(grayscale(x), x.shape), x)
    return normalize(x)


def train_transform(key: jax.Array, canvas: jax.Array, hw: jax.Array, size: int) -> jax.Array:
    """DomainBed's training augmentation of one canvas -> float32 [size, size, 3]."""
    return apply_train(draw_params(key, hw), canvas, hw, size)


def eval_transform(canvas: jax.Array, hw: jax.Array, size: int) -> jax.Array:
    """DomainBed's eval transform: resize (h, w) to (size, size), normalise."""
    box = jnp.stack([0, 0, hw[0], hw[1]]).astype(jnp.int32)
    return normalize(jnp.clip(resize_box(edge_extend(canvas, hw), box, size) / 255.0, 0, 1))


def example_keys(seed: int | jax.Array, step, shape: tuple[int, int]) -> jax.Array:
    """Keys [E, B] of step ``step``: ``fold_in(fold_in(fold_in(key(seed), step), e), i)``."""
    is_key = jnp.issubdtype(jnp.asarray(seed).dtype, jax.dtypes.prng_key)
    base = seed if is_key else jax.random.key(seed)
    step_key = jax.random.fold_in(base, step)
    e_keys = jax.vmap(lambda e: jax.random.fold_in(step_key, e))(jnp.arange(shape[0]))
    return jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(
        jnp.arange(shape[1])))(e_keys)


def augment_batch(seed, step, canvases: jax.Array, hw: jax.Array, size: int) -> jax.Array:
    """Training batch [E, B, C, C, 3] uint8 (+ hw [E, B, 2]) -> float32 [E, B, S, S, 3]."""
    keys = example_keys(seed, step, canvases.shape[:2])
    fn = jax.vmap(jax.vmap(lambda k, c, s: train_transform(k, c, s, size)))
    return fn(keys, canvases, hw)


def eval_batch(canvases: jax.Array, hw: jax.Array, size: int) -> jax.Array:
    """Eval batch [N, C, C, 3] uint8 (+ hw [N, 2]) -> float32 [N, S, S, 3]."""
    return jax.vmap(lambda c, s: eval_transform(c, s, size))(canvases, hw)
