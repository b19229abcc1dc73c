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
  each clipped to [0, 1]; grey is ITU-R 601-2 luma (PIL's ``convert("L")``); hue shifts the
  HSV hue by the factor (torchvision's tensor path, which ``dm_pix.adjust_hue`` also follows).
  Values stay float between ops: PIL rounds to uint8 after each, so the two paths differ by
  rounding (about one grey level), not in distribution.
- Flip after the resize (every later op is per pixel or, for contrast, flip-invariant).

Why hand-written rather than dm-pix: of DomainBed's transforms dm-pix has flip, hue and
grey conversion; its brightness is additive and its contrast is per channel (TensorFlow's
definitions, not the multiplicative blends of PIL/torchvision), it has no resized crop and no
random order. What it would supply (a flip, a grey dot product, an HSV shift) is a few lines
here, tested against PIL, so it does not earn a dependency.

Randomness: :func:`example_keys` derives example ``(e, i)``'s key of step ``t`` as
``fold_in(fold_in(fold_in(key(seed), t), e), i)``, so the batch of step t depends on
(seed, t) only, as the host sampling does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

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


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> HSV in [0, 1] (torchvision's ``_rgb2hsv``)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = jnp.max(x, axis=-1), jnp.min(x, axis=-1)
    grey = maxc == minc
    delta = maxc - minc
    s = delta / jnp.where(grey, 1.0, maxc)
    d = jnp.where(grey, 1.0, delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(grey, 0.0, h)
    h = jnp.mod(h / 6.0 + 1.0, 1.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
    """[..., 3] HSV in [0, 1] -> RGB (torchvision's ``_hsv2rgb``)."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(jnp.int32) % 6
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    choices = [jnp.stack(c, axis=-1) for c in
               ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    return jnp.select([(i == k)[..., None] for k in range(6)], choices)


def adjust_hue(x: jax.Array, factor) -> jax.Array:
    """Shift the HSV hue by ``factor`` (in turns, |factor| <= 0.5)."""
    hsv = rgb_to_hsv(x)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + factor, 1.0))
    return hsv_to_rgb(hsv)


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
