"""Device prefetch: order kept, errors raised in the caller, early close, and on two
(host-platform) devices the batch axis split over both with the values unchanged."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from hjax.data.images.prefetch import batch_sharding, prefetch_to_device

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _batches(n, fail_at=None):
    for t in range(n):
        if t == fail_at:
            raise ValueError(f"bad batch {t}")
        yield (np.full((2, 4, 3), t, np.uint8), np.full((2, 4), t, np.int32))


def test_prefetch_keeps_order_and_puts_batches_on_the_device():
    got = list(prefetch_to_device(_batches(6), depth=2))
    assert [int(x[0, 0, 0]) for x, _ in got] == list(range(6))
    assert all(isinstance(x, jax.Array) and x.dtype == np.uint8 for x, _ in got)


def test_prefetch_raises_the_iterators_error_after_the_batches_before_it():
    it = prefetch_to_device(_batches(6, fail_at=3), depth=2)
    assert [int(next(it)[1][0, 0]) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad batch 3"):
        next(it)


def test_prefetch_closes_early_without_hanging():
    it = prefetch_to_device(_batches(10**6), depth=2)
    next(it)
    it.close()
    assert batch_sharding(4) is None or jax.device_count() > 1      # one device: no split


def test_two_devices_split_the_batch_axis_and_keep_the_values():
    script = textwrap.dedent("""
        import jax, numpy as np
        from hjax.data.images.prefetch import batch_sharding, prefetch_to_device
        from hjax.data.sharding import replicate
        from hjax.data.images import device_transforms as D
        assert jax.device_count() == 2
        s = batch_sharding(4)
        assert s is not None and batch_sharding(3) is None
        rng = np.random.default_rng(0)
        host = [(rng.integers(0, 256, (2, 4, 20, 20, 3)).astype(np.uint8),
                 np.full((2, 4, 2), 18, np.int32), np.arange(8, dtype=np.int32).reshape(2, 4))
                for _ in range(3)]
        fn = jax.jit(lambda c, hw: D.augment_batch(3, 1, c, hw, 8))
        for (c, hw, y), (dc, dhw, dy) in zip(host, prefetch_to_device(iter(host), sharding=s)):
            assert dc.sharding.spec == jax.sharding.PartitionSpec(None, "data"), dc.sharding
            assert len(dc.addressable_shards) == 2
            assert dc.addressable_shards[0].data.shape == (2, 2, 20, 20, 3)
            np.testing.assert_array_equal(np.asarray(dc), c)
            np.testing.assert_array_equal(np.asarray(dy), y)
            one = fn(jax.device_put(c, jax.devices()[0]), jax.device_put(hw, jax.devices()[0]))
            np.testing.assert_allclose(np.asarray(fn(dc, dhw)), np.asarray(one), atol=1e-5)
        r = replicate(s.mesh, {"w": np.ones(3)})["w"]
        assert len(r.addressable_shards) == 2 and r.sharding.is_fully_replicated
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
