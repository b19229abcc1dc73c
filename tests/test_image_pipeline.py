"""DomainBed image transforms (PIL/numpy) and the grain input pipeline: shapes, normalisation,
augmentation statistics, determinism per (seed, step) across start_step and worker counts,
labels, and eval batches that cover every example once."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from hjax.data.images import pil_transforms as T
from hjax.data.images import ImageDecodeError, scan_image_folder
from hjax.data.images.pipeline import TrainBatch, decode, eval_batches, train_batches
from hjax.errors import ConfigError
from image_tree import class_color, make_image, make_tree

SIZE = 32


def _gradient(w=40, h=30) -> Image.Image:
    x = np.zeros((h, w, 3), np.uint8)
    x[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    x[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    x[..., 2] = 77
    return Image.fromarray(x, "RGB")


def test_eval_transform_resizes_and_normalises_a_constant_image():
    color = (200, 100, 50)
    out = T.eval_transform(Image.new("RGB", (40, 30), color), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32
    expected = (np.asarray(color, np.float32) / 255 - T.IMAGENET_MEAN) / T.IMAGENET_STD
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)


def test_train_transform_shape_and_determinism():
    img = _gradient()
    a = T.train_transform(img, SIZE, np.random.default_rng(5))
    b = T.train_transform(img, SIZE, np.random.default_rng(5))
    c = T.train_transform(img, SIZE, np.random.default_rng(6))
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_resized_crop_scale_and_ratio_statistics():
    rng = np.random.default_rng(0)
    h, w = 300, 300       # square: symmetric in log-ratio
    fracs, ratios = [], []
    for _ in range(2000):
        top, left, ch, cw = T.random_resized_crop_params(h, w, rng)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        fracs.append(ch * cw / (h * w))
        ratios.append(cw / ch)
    fracs, ratios = np.asarray(fracs), np.asarray(ratios)
    assert fracs.min() > 0.69 and fracs.max() <= 1.0
    assert ratios.min() > 0.74 and ratios.max() < 1.34
    assert fracs.min() < 0.71 and fracs.max() > 0.99  # the whole range is reached
    # Target area ~ U(0.7, 1.0) before the fit check; rejecting crops that do not fit skews
    # accepted crops towards smaller areas (torchvision does the same).
    assert 0.78 < fracs.mean() < 0.85
    assert abs(np.log(ratios).mean()) < 0.03         # log-ratio ~ U(log 3/4, log 4/3), symmetric


def test_random_resized_crop_falls_back_to_a_center_crop():
    # A 1000 x 10 strip admits no crop of ratio <= 4/3 and area >= 0.7: torchvision's fallback.
    assert T.random_resized_crop_params(10, 1000, np.random.default_rng(0)) == (0, 493, 10, 13)
    assert T.random_resized_crop_params(1000, 10, np.random.default_rng(0)) == (493, 0, 13, 10)


def test_flip_and_grayscale():
    img = _gradient()
    flipped = np.asarray(T.random_horizontal_flip(img, np.random.default_rng(0), p=1.0))
    np.testing.assert_array_equal(flipped, np.asarray(img)[:, ::-1])
    assert T.random_horizontal_flip(img, np.random.default_rng(0), p=0.0) is img
    gray = np.asarray(T.random_grayscale(img, np.random.default_rng(0), p=1.0))
    assert gray.shape == (30, 40, 3)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    rng = np.random.default_rng(1)
    n_gray = sum(np.array_equal(*np.asarray(T.random_grayscale(img, rng))[..., :2].transpose(2, 0, 1))
                 for _ in range(1000))
    assert 60 < n_gray < 140                         # p = 0.1


def test_color_jitter_brightness_and_hue():
    img = Image.new("RGB", (8, 8), (100, 120, 140))
    brighter = T.color_jitter(img, np.random.default_rng(0), brightness=0.3, contrast=0,
                              saturation=0, hue=0)
    factor = np.asarray(brighter, float).mean() / np.asarray(img, float).mean()
    assert 0.69 < factor < 1.31 and abs(factor - 1) > 1e-3
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    shifted = np.asarray(T.adjust_hue(red, 1 / 3))[0, 0]   # red + 120 degrees ~ green
    assert shifted[1] > 200 and shifted[0] < 60 and shifted[2] < 60


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = make_tree(tmp_path_factory.mktemp("img") / "ds", domains=("a", "b"),
                     classes=("cat", "dog", "emu"), per_class=2)
    return scan_image_folder(root)


def _take(it, n):
    with it:
        return [next(it) for _ in range(n)]


def test_train_batches_are_a_function_of_seed_and_step(tree):
    envs = tree.environments()
    kw = dict(batch_size=3, image_size=SIZE, seed=11)
    full = _take(train_batches(envs, workers=0, **kw), 4)
    resumed = _take(train_batches(envs, start_step=2, workers=0, **kw), 2)
    in_worker = _take(train_batches(envs, start_step=1, workers=1, **kw), 3)
    for got, want in zip(resumed + in_worker, full[2:] + full[1:]):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    images, labels = full[0]
    assert images.shape == (2, 3, SIZE, SIZE, 3) and images.dtype == np.float32
    assert labels.shape == (2, 3) and labels.dtype == np.int32
    other = _take(train_batches(envs, workers=0, batch_size=3, image_size=SIZE, seed=12), 1)
    assert not np.array_equal(other[0][0], images)


def test_train_batch_labels_match_the_sampled_images(tree):
    envs = tree.environments()
    fn = TrainBatch(envs, 8, SIZE, seed=3, augment=False)
    images, labels = fn(5)
    idx = fn.indices(5)
    for e, (paths, labs) in enumerate(envs):
        np.testing.assert_array_equal(labels[e], labs[idx[e]])
        for i in range(8):
            # each class has its own color: the decoded image reveals its label
            mean_rgb = (images[e, i] * T.IMAGENET_STD + T.IMAGENET_MEAN).mean((0, 1)) * 255
            want = np.asarray(class_color(int(labels[e, i])), float)
            assert np.abs(mean_rgb - want).max() < 12
    assert idx.min() >= 0 and all(idx[e].max() < len(p) for e, (p, _) in enumerate(envs))


def test_eval_batches_cover_every_example_once_with_a_mask(tree):
    paths = np.concatenate([d.paths for d in tree.domains])[:7]
    labels = np.concatenate([d.labels for d in tree.domains])[:7]
    batches = eval_batches(paths, labels, SIZE, batch_size=3)
    assert len(batches) == 3
    got = list(batches)
    masks = np.concatenate([m for _, _, m in got])
    assert masks.tolist() == [True] * 7 + [False] * 2
    np.testing.assert_array_equal(np.concatenate([y for _, y, _ in got])[masks], labels)
    images = np.concatenate([x for x, _, _ in got])
    for i in range(7):
        np.testing.assert_array_equal(images[i], T.eval_transform(decode(paths[i]), SIZE))
    assert not images[7:].any()


def test_undecodable_file_is_a_clear_error(tmp_path):
    p = make_image(tmp_path / "x" / "c" / "big.jpg", (90, 40, 10), size=(200, 150),
                   rng=np.random.default_rng(0))
    p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])   # header fine, data truncated
    with pytest.raises(ImageDecodeError, match="cannot decode image .*big.jpg"):
        list(eval_batches([str(p)], [0], SIZE, batch_size=1))
    with pytest.raises(ConfigError, match="no images"):
        train_batches([([], [])], 2, SIZE, seed=0)


# --- uint8 canvases for the device path ------------------------------------------------

CANVAS = 48


def test_train_canvases_are_uint8_a_function_of_seed_and_step_and_share_the_draws(tree):
    from hjax.data.images.pipeline import TrainCanvases, train_canvases
    envs = tree.environments()
    kw = dict(batch_size=3, canvas=CANVAS, seed=11)
    full = _take(train_canvases(envs, workers=0, **kw), 4)
    resumed = _take(train_canvases(envs, start_step=2, workers=0, **kw), 2)
    in_worker = _take(train_canvases(envs, start_step=1, workers=1, **kw), 3)
    for got, want in zip(resumed + in_worker, full[2:] + full[1:]):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    canvases, hw, labels = full[0]
    assert canvases.shape == (2, 3, CANVAS, CANVAS, 3) and canvases.dtype == np.uint8
    assert hw.shape == (2, 3, 2) and (hw == [30, 40]).all()        # 40 x 30 images fit
    # The same example indices as the PIL path's batches: one sampling rule.
    np.testing.assert_array_equal(TrainCanvases(envs, 3, CANVAS, 11).indices(5),
                                  TrainBatch(envs, 3, SIZE, 11, True).indices(5))
    idx = TrainCanvases(envs, 3, CANVAS, 11).indices(0)
    for e, (paths, labs) in enumerate(envs):
        np.testing.assert_array_equal(labels[e], labs[idx[e]])
        for i in range(3):
            want = np.asarray(decode(paths[idx[e, i]]))
            np.testing.assert_array_equal(canvases[e, i, :30, :40], want)
            assert not canvases[e, i, 30:].any()


def test_eval_canvases_cover_every_example_once_with_a_mask(tree):
    from hjax.data.images.pipeline import eval_canvases
    paths = np.concatenate([d.paths for d in tree.domains])[:7]
    labels = np.concatenate([d.labels for d in tree.domains])[:7]
    got = list(eval_canvases(paths, labels, CANVAS, batch_size=3))
    assert len(got) == 3
    masks = np.concatenate([m for *_, m in got])
    assert masks.tolist() == [True] * 7 + [False] * 2
    np.testing.assert_array_equal(np.concatenate([y for _, _, y, _ in got])[masks], labels)
    canvases = np.concatenate([c for c, *_ in got])
    for i in range(7):
        np.testing.assert_array_equal(canvases[i, :30, :40], np.asarray(decode(paths[i])))


def test_undecodable_file_is_a_clear_error_in_the_canvas_path(tmp_path):
    from hjax.data.images.pipeline import eval_canvases
    p = make_image(tmp_path / "x" / "c" / "big.jpg", (90, 40, 10), size=(200, 150),
                   rng=np.random.default_rng(0))
    p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
    with pytest.raises(ImageDecodeError, match="cannot decode image .*big.jpg"):
        list(eval_canvases([str(p)], [0], CANVAS, batch_size=1))


def test_workers_never_take_sigint_and_batches_leave_no_shared_memory_behind(tree):
    import multiprocessing
    import os
    from hjax.data.images.pipeline import train_canvases
    with train_canvases(tree.environments(), batch_size=3, canvas=CANVAS, seed=1,
                        workers=2) as it:
        batches = [next(it) for _ in range(3)]
        workers = [p for p in multiprocessing.active_children() if "grain" in p.name]
        assert len(workers) == 2
        for p in workers:           # SIGINT (2) blocked or ignored: Ctrl-C reaches the parent
            status = dict(line.split(":\t", 1) for line in
                          open(f"/proc/{p.pid}/status").read().splitlines() if ":\t" in line)
            assert (int(status["SigBlk"], 16) | int(status["SigIgn"], 16)) & (1 << 1), p.name
        # Each block's name is unlinked on arrival (grain ships the canvases in one), the
        # arrays stay readable, and nothing is left for the resource tracker to report.
        shared = [a for b in batches for a in b if getattr(a, "shm", None) is not None]
        assert shared
        for a in shared:
            assert not os.path.exists(f"/dev/shm/{a.shm.name.lstrip('/')}")
            assert a.sum() >= 0
