"""DomainBed's transforms on the device (hjax.data.images.device_transforms) against their
definitions and the PIL reference (hjax.data.images.pil_transforms): the distributions of the
random draws over many keys, each colour op against PIL's ImageEnhance / convert, the crop
and resize against PIL's resize(box=...), and whole examples with the same draws."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from hjax.data.images import device_transforms as D
from hjax.data.images import pil_transforms as T
from hjax.data.images.decode import canvas_size, decode_canvas, fit_size

N_DRAWS = 4000


def _photo(h=48, w=56, seed=0) -> np.ndarray:
    """A smooth colour field plus noise: every colour op changes it visibly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a = rng.uniform(0, 255, (3, 3))
    img = a[:, 0, None, None] * xx + a[:, 1, None, None] * yy + a[:, 2, None, None] * xx * yy
    img = img.transpose(1, 2, 0) / 1.5 + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def draws():
    keys = jax.random.split(jax.random.key(0), N_DRAWS)
    return jax.vmap(lambda k: D.draw_params(k, jnp.asarray([300, 240])))(keys)


def test_crop_area_fraction_and_aspect_ratio_match_the_reference_distribution(draws):
    box = np.asarray(draws.box)
    top, left, h, w = box.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 300).all() and (left + w <= 240).all()
    frac, log_ratio = h * w / (300 * 240), np.log(w / h)
    rng = np.random.default_rng(1)
    ref = np.asarray([T.random_resized_crop_params(300, 240, rng) for _ in range(N_DRAWS)])
    ref_frac, ref_log_ratio = ref[:, 2] * ref[:, 3] / (300 * 240), np.log(ref[:, 3] / ref[:, 2])
    assert frac.min() > 0.69 and frac.max() <= 1.0
    assert log_ratio.min() > math.log(3 / 4) - 0.01 and log_ratio.max() < math.log(4 / 3) + 0.01
    qs = np.linspace(0.05, 0.95, 10)
    # Quantiles of 4000 draws each: sampling error ~0.01.
    np.testing.assert_allclose(np.quantile(frac, qs), np.quantile(ref_frac, qs), atol=0.02)
    np.testing.assert_allclose(np.quantile(log_ratio, qs), np.quantile(ref_log_ratio, qs),
                               atol=0.035)
    # Positions uniform over what fits: the mean offset is half the slack.
    np.testing.assert_allclose(np.mean(top / np.maximum(300 - h, 1)), 0.5, atol=0.03)


@pytest.mark.parametrize("hw", [(10, 1000), (1000, 10), (40, 200)])
def test_crop_falls_back_to_the_reference_center_crop(hw):
    got = np.asarray(D.crop_box(jax.random.key(3), *hw))
    want = T.random_resized_crop_params(*hw, np.random.default_rng(0))
    assert tuple(got) == want


def test_flip_grayscale_rates_and_jitter_ranges(draws):
    n = N_DRAWS
    sd = lambda p: 4 * math.sqrt(p * (1 - p) / n)  # noqa: E731  (4 standard errors)
    assert abs(np.mean(draws.flip) - 0.5) < sd(0.5)
    assert abs(np.mean(draws.grayscale) - 0.1) < sd(0.1)
    f = np.asarray(draws.factors)
    for k in range(3):                                   # brightness, contrast, saturation
        assert 0.7 <= f[:, k].min() < 0.71 and 1.29 < f[:, k].max() <= 1.3
        assert abs(f[:, k].mean() - 1.0) < 0.01
        assert abs(f[:, k].std() - 0.6 / math.sqrt(12)) < 0.01        # uniform's spread
    assert -0.3 <= f[:, 3].min() < -0.29 and 0.29 < f[:, 3].max() <= 0.3
    assert abs(f[:, 3].mean()) < 0.01


def test_jitter_order_is_a_uniform_random_permutation(draws):
    orders = np.asarray(draws.order)
    assert (np.sort(orders, axis=1) == np.arange(4)).all()
    counts = {p: 0 for p in itertools.permutations(range(4))}
    for row in orders:
        counts[tuple(row)] += 1
    expected = N_DRAWS / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 60            # 23 degrees of freedom: P(chi2 > 60) < 1e-4


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(x, "RGB")


def _levels(x) -> np.ndarray:
    return np.asarray(x, np.float64) * 255.0


@pytest.mark.parametrize("factor", [0.7, 1.0, 1.3])
def test_brightness_contrast_saturation_match_pil_image_enhance(factor):
    img = _photo()
    x = jnp.asarray(img, jnp.float32) / 255
    for fn, enhancer in ((D.adjust_brightness, ImageEnhance.Brightness),
                         (D.adjust_contrast, ImageEnhance.Contrast),
                         (D.adjust_saturation, ImageEnhance.Color)):
        want = np.asarray(enhancer(_pil(img)).enhance(factor), np.float64)
        got = _levels(fn(x, factor))
        # PIL rounds its result (and, for contrast, the grey mean) to integers.
        assert np.abs(got - want).max() <= 1.6, fn.__name__
        assert np.abs(got - want).mean() < 0.6, fn.__name__


def test_color_ops_against_their_closed_forms():
    x = jnp.asarray(_photo(8, 8, seed=2), jnp.float32) / 255
    np.testing.assert_allclose(D.adjust_brightness(x, 1.2), np.clip(1.2 * x, 0, 1), atol=1e-6)
    grey = x @ jnp.asarray([0.299, 0.587, 0.114])
    np.testing.assert_allclose(D.adjust_saturation(x, 0.0),
                               np.repeat(np.asarray(grey)[..., None], 3, -1), atol=1e-6)
    np.testing.assert_allclose(D.adjust_contrast(x, 0.0),
                               np.full(x.shape, float(grey.mean())), atol=1e-6)
    red = jnp.asarray([[[1.0, 0.0, 0.0]]])
    # A third of a turn is 85 hue bytes: red to green exactly.
    np.testing.assert_array_equal(D.adjust_hue(red, 1 / 3), [[[0.0, 1.0, 0.0]]])


def _hue_test_image() -> np.ndarray:
    """uint8 [N, 64, 3]: random colours, every colour of chroma 255 (max 255, min 0), every
    grey, and colours of chroma 85 and 170: the only chromas where a hue can be an exact
    multiple of 1/255, which is where PIL's float hue rounds below the exact byte."""
    rng = np.random.default_rng(7)
    parts = [rng.integers(0, 256, (2048, 3))]
    for chroma in (255, 170, 85):
        lo = rng.integers(0, 256 - chroma, chroma + 1)
        mid = np.arange(chroma + 1)
        for order in itertools.permutations(range(3)):
            px = np.stack([lo + chroma, lo + mid, lo], axis=-1)
            parts.append(px[:, order])
    parts.append(np.repeat(np.arange(256)[:, None], 3, axis=1))
    pixels = np.concatenate(parts)
    pixels = np.concatenate([pixels, pixels[: -len(pixels) % 64]])
    return pixels.reshape(-1, 64, 3).astype(np.uint8)


def _bytes(x) -> np.ndarray:
    return np.rint(np.asarray(x, np.float64) * 255.0)


@pytest.fixture(scope="module")
def hue_image():
    return _hue_test_image()


def test_hsv_conversions_equal_pil_convert(hue_image):
    want = np.asarray(_pil(hue_image).convert("HSV"))
    got = np.asarray(jax.jit(D.rgb_to_hsv_levels)(jnp.asarray(hue_image, jnp.int32)))
    np.testing.assert_array_equal(got, want)
    hsv = np.random.default_rng(8).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    hsv[:4, :, 0] = np.arange(256).reshape(4, 64)          # every hue byte, saturated
    hsv[:4, :, 1:] = 255
    want = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    got = np.asarray(jax.jit(D.hsv_to_rgb_levels)(jnp.asarray(hsv, jnp.int32)))
    np.testing.assert_array_equal(got, want)


def test_hue_shift_is_torchvisions_uint8_of_factor_times_255():
    k = np.arange(-127, 128) / 255
    near = np.float32(k)
    factors = np.concatenate([near, np.nextafter(near, np.float32(-1)),
                              np.nextafter(near, np.float32(1))])
    factors = factors[np.abs(factors) <= 0.5]
    got = np.asarray(jax.vmap(D.hue_shift_levels)(jnp.asarray(factors)))
    # numpy's uint8 cast on x86: truncate toward zero, then modulo 256.
    want = np.asarray([int(float(f) * 255) % 256 for f in factors])
    np.testing.assert_array_equal(got, want)


def test_hue_equals_the_pil_reference_exactly(hue_image):
    x = jnp.asarray(hue_image, jnp.float32) / 255
    hue = jax.jit(D.adjust_hue)
    factors = [-0.5, -0.3, -0.1, 0.0, 0.07, 0.3, 0.5]
    factors += list(np.random.default_rng(9).uniform(-0.5, 0.5, 5))
    for factor in np.float32(factors):
        want = np.asarray(T.adjust_hue(_pil(hue_image), float(factor)), np.float64)
        np.testing.assert_array_equal(_bytes(hue(x, factor)), want, err_msg=str(factor))


def test_grayscale_matches_pil_convert_l():
    img = _photo(seed=5)
    want = np.asarray(_pil(img).convert("L"), np.float64)
    got = _levels(D.grayscale(jnp.asarray(img, jnp.float32) / 255))[..., 0]
    assert np.abs(got - want).max() <= 1.0


@pytest.mark.parametrize("box", [(0, 0, 48, 56), (5, 7, 30, 41), (10, 0, 38, 20),
                                 (0, 20, 48, 36)])
def test_crop_and_resize_match_pil_resize_with_a_box(box):
    img = _photo()
    canvas = np.zeros((64, 64, 3), np.uint8)
    canvas[:48, :56] = img                             # the rest stays zero: must not leak
    top, left, h, w = box
    for size in (24, 40):
        want = np.asarray(_pil(img).resize((size, size), Image.BILINEAR,
                                           box=(left, top, left + w, top + h)), np.float64)
        got = np.asarray(D.resize_box(D.edge_extend(jnp.asarray(canvas), jnp.asarray([48, 56])),
                                      jnp.asarray(box), size))
        # PIL filters in 8-bit fixed point, rounds, and at the image border renormalises its
        # filter where the device repeats edge pixels: within 3 grey levels, 0.4 on average.
        assert np.abs(got - want).max() <= 3.0, size
        assert np.abs(got - want).mean() < 0.4, size


def _pil_with_params(img: np.ndarray, p, size: int) -> np.ndarray:
    """The PIL reference's training transform, with the device's draws."""
    top, left, h, w = (int(v) for v in p.box)
    x = _pil(img).resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if bool(p.flip):
        x = x.transpose(Image.FLIP_LEFT_RIGHT)
    f = np.asarray(p.factors, np.float64)
    for k in np.asarray(p.order):
        if k == 0:
            x = ImageEnhance.Brightness(x).enhance(f[0])
        elif k == 1:
            x = ImageEnhance.Contrast(x).enhance(f[1])
        elif k == 2:
            x = ImageEnhance.Color(x).enhance(f[2])
        else:
            x = T.adjust_hue(x, f[3])
    if bool(p.grayscale):
        g = x.convert("L")
        x = Image.merge("RGB", (g, g, g))
    return T.normalize(x)


def test_whole_training_transform_matches_pil_with_the_same_draws():
    img = _photo(seed=6)
    canvas = np.zeros((64, 64, 3), np.uint8)
    canvas[:48, :56] = img
    hw = jnp.asarray([48, 56])
    fn = jax.jit(lambda k: (D.draw_params(k, hw), D.train_transform(k, jnp.asarray(canvas), hw,
                                                                    32)))
    seen_gray = seen_flip = 0
    for i in range(24):
        p, got = fn(jax.random.key(i))
        want = _pil_with_params(img, p, 32)
        # In normalised units one grey level is 1/(255 x 0.225) ~ 0.017; PIL rounds after
        # every op, the device does not.
        diff = np.abs(np.asarray(got) - want)
        assert diff.mean() < 0.05 and np.quantile(diff, 0.99) < 0.15, i
        seen_gray += bool(p.grayscale)
        seen_flip += bool(p.flip)
    assert seen_flip > 0


def test_eval_transform_matches_the_pil_reference():
    img = _photo()
    canvas = np.zeros((64, 64, 3), np.uint8)
    canvas[:48, :56] = img
    got = np.asarray(D.eval_transform(jnp.asarray(canvas), jnp.asarray([48, 56]), 32))
    want = T.eval_transform(_pil(img), 32)
    level = 1 / (255 * 0.224)                  # one grey level in normalised units
    assert np.abs(got - want).max() < 3 * level and np.abs(got - want).mean() < 0.4 * level


def test_batch_keys_depend_on_seed_step_domain_and_index_only():
    rng = np.random.default_rng(0)
    canvases = jnp.asarray(rng.integers(0, 256, (2, 3, 40, 40, 3)), jnp.uint8)
    hw = jnp.full((2, 3, 2), 36, jnp.int32)
    fn = jax.jit(D.augment_batch, static_argnums=4)
    a = fn(7, 5, canvases, hw, 16)
    np.testing.assert_array_equal(a, fn(7, 5, canvases, hw, 16))
    # Example (e, i) of a smaller batch of the same step is the same example.
    # (to float rounding: a different batch shape is a different compiled program)
    np.testing.assert_allclose(a[:1, :2], fn(7, 5, canvases[:1, :2], hw[:1, :2], 16),
                               atol=1e-5)
    assert not np.array_equal(a, fn(7, 6, canvases, hw, 16))
    assert not np.array_equal(a, fn(8, 5, canvases, hw, 16))
    assert not np.array_equal(a[0, 0], a[1, 0])


def test_decode_keeps_small_images_and_shrinks_large_ones_with_their_aspect(tmp_path):
    small = tmp_path / "small.png"
    _pil(_photo(30, 50)).save(small)
    canvas, hw = decode_canvas(str(small), 64)
    assert hw == (30, 50)
    np.testing.assert_array_equal(canvas[:30, :50], _photo(30, 50))
    assert not canvas[30:].any() and not canvas[:, 50:].any()
    big = tmp_path / "big.jpg"
    _pil(_photo(300, 400)).save(big, quality=95)
    canvas, hw = decode_canvas(str(big), 64)
    assert hw == fit_size(300, 400, 64) == (48, 64)
    want = np.asarray(Image.open(big).convert("RGB").resize((64, 48), Image.BILINEAR), float)
    assert np.abs(canvas[:48].astype(float) - want).mean() < 3   # JPEG draft, then resize
    assert canvas_size(224) == 256
