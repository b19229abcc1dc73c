"""The decoded cache: built once with the decode's pixels, reused while the tree is unchanged,
rebuilt when a file changes or an array is truncated, and never written when a file is
corrupt (the error names it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hjax.data.images import ImageDecodeError, decoded_cache, scan_image_folder
from hjax.data.images.decode import decode_canvas
from hjax.data.images.pipeline import CachedImages, cached_sources
from image_tree import make_image, make_tree

CANVAS = 32


def _dataset(tmp_path, **kw):
    root = make_tree(tmp_path / "data" / "PACS", domains=("a", "b"), classes=("cat", "dog"),
                     per_class=2, size=(50, 20), **kw)
    return scan_image_folder(root, name="pacs")


def test_cache_holds_the_decoded_canvases_and_is_reused(tmp_path):
    ds = _dataset(tmp_path)
    cache = decoded_cache.open_or_build(ds, tmp_path / "data", CANVAS)
    paths = [p for d in ds.domains for p in d.paths]
    assert cache.images.shape == (8, CANVAS, CANVAS, 3)
    for i, p in enumerate(paths):
        canvas, hw = decode_canvas(p, CANVAS)
        np.testing.assert_array_equal(cache.images[i], canvas)
        assert tuple(cache.hw[i]) == hw == (13, 32)           # 50 x 20 shrunk to fit 32
    mtime = (cache.folder / "images.npy").stat().st_mtime_ns
    again = decoded_cache.open_or_build(ds, tmp_path / "data", CANVAS)
    assert (again.folder / "images.npy").stat().st_mtime_ns == mtime      # not rebuilt
    # Sources map each split's paths to their rows.
    split = (ds.domains[1].paths[::-1], ds.domains[1].labels[::-1])
    src, = cached_sources(cache, ds, [split])
    out = np.zeros((2, CANVAS, CANVAS, 3), np.uint8)
    hw = src.gather(np.asarray([0, 3]), out)
    np.testing.assert_array_equal(out[0], decode_canvas(split[0][0], CANVAS)[0])
    np.testing.assert_array_equal(out[1], decode_canvas(split[0][3], CANVAS)[0])
    assert hw.tolist() == [[13, 32], [13, 32]]
    assert isinstance(src, CachedImages)


def test_cache_is_rebuilt_when_a_file_changes_or_an_array_is_truncated(tmp_path, caplog):
    ds = _dataset(tmp_path)
    data = tmp_path / "data"
    cache = decoded_cache.open_or_build(ds, data, CANVAS)
    changed = ds.domains[0].paths[1]
    make_image(Path(changed), (255, 0, 0), size=(20, 20))
    os.utime(changed, ns=(1, 10**18))                    # a different mtime whatever the clock
    ds2 = scan_image_folder(ds.root, name="pacs")
    with caplog.at_level("WARNING", logger="hjax.data"):
        rebuilt = decoded_cache.open_or_build(ds2, data, CANVAS)
    assert "tree_digest changed" in caplog.text
    assert tuple(rebuilt.hw[1]) == (20, 20) and (rebuilt.images[1, 5, 5] > 200).any()
    # Truncated images.npy (e.g. a full disk): not trusted, rebuilt.
    images = cache.folder / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    caplog.clear()
    with caplog.at_level("WARNING", logger="hjax.data"):
        again = decoded_cache.open_or_build(ds2, data, CANVAS)
    assert "truncated" in caplog.text
    np.testing.assert_array_equal(again.images, rebuilt.images)


def test_a_corrupt_file_is_named_and_no_cache_is_written(tmp_path):
    ds = _dataset(tmp_path)
    bad = ds.domains[1].paths[2]
    raw = open(bad, "rb").read()
    with open(bad, "wb") as f:                # header intact, pixel data cut
        f.write(raw[: len(raw) // 2])
    # (in a worker process: the error crosses back and stops the build)
    with pytest.raises(ImageDecodeError, match=f"cannot decode image {bad}"):
        decoded_cache.open_or_build(ds, tmp_path / "data", CANVAS, workers=1)
    folder = decoded_cache.cache_folder(tmp_path / "data", "PACS", CANVAS)
    assert not (folder / "manifest.json").exists()
    assert list(folder.iterdir()) == []                   # temporary arrays removed


def test_streamed_datasets_are_not_cached(tmp_path):
    ds = _dataset(tmp_path)
    ds = type(ds)("domain_net", ds.root, ds.domains, ds.classes, ds.env_names)
    assert decoded_cache.open_or_build(ds, tmp_path / "data", CANVAS) is None
