"""The device-resident decoded cache (``--data_on_device``) and the grouping of image jobs
(``--vmap_trials``), without training: what ``auto`` chooses, the rows each step gathers,
the evaluation table, and which jobs share a program. Training a group and a resident job
against single jobs on the host pipeline: tests/test_domainbed_images.py.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hjax.data.images import pipeline, resident
from hjax.errors import ConfigError
from hjax.protocols.domainbed import image_programs, vmapped
from hjax.protocols.domainbed.algorithms import _dropout_key
from hjax.protocols.domainbed.config import RunConfig
from hjax.protocols.domainbed.programs import load_image_job_data

from image_tree import make_pacs_tree


@pytest.fixture(scope="module")
def pacs_dir(tmp_path_factory):
    return make_pacs_tree(tmp_path_factory.mktemp("images"))


def _config(data_dir, out, **kw) -> RunConfig:
    base = dict(dataset="pacs", algorithm="hutchinson", test_envs=(0,), output_dir=str(out),
                data_dir=str(data_dir), arch="resnet18", image_size=32, steps=3,
                checkpoint_freq=2, workers=0, hparams_overrides={"batch_size": 4})
    base.update(kw)
    return RunConfig(**base)


def test_what_auto_chose_is_said_and_on_without_a_cache_is_a_config_error(pacs_dir, tmp_path):
    cfg = _config(pacs_dir, tmp_path / "x", data_on_device="auto")
    data = load_image_job_data(cfg, 4, log=lambda m: None)
    said = []
    cache, on = image_programs.resolve_data_on_device(cfg, data, said.append)
    assert on and cache is not None and said[0].startswith("note: data on the device: on:")
    said.clear()
    cache, on = image_programs.resolve_data_on_device(
        dataclasses.replace(cfg, decoded_cache=False), data, said.append)
    assert not on and "--decoded_cache=false" in said[0]
    with pytest.raises(ConfigError, match="needs pacs's decoded cache.*--decoded_cache=false"):
        image_programs.resolve_data_on_device(
            dataclasses.replace(cfg, decoded_cache=False, data_on_device="on"), data)
    with pytest.raises(ConfigError, match="--augment=host"):
        image_programs.resolve_data_on_device(
            dataclasses.replace(cfg, augment="host", data_on_device="on"), data)


def test_a_bad_data_on_device_is_a_config_error(pacs_dir, tmp_path):
    from hjax.protocols.domainbed.run import run
    with pytest.raises(ConfigError, match="data_on_device='gpu'"):
        run(_config(pacs_dir, tmp_path / "y", data_on_device="gpu"), log=lambda m: None)


class _Cache:
    """A decoded cache's arrays, without the files."""

    def __init__(self, n: int, canvas: int = 8):
        self.images = np.zeros((n, canvas, canvas, 3), np.uint8)
        self.hw = np.zeros((n, 2), np.int32)


def test_auto_chooses_from_the_cache_size_and_the_free_memory(monkeypatch):
    cache = _Cache(100)                     # 19,200 + 800 bytes
    monkeypatch.setattr(resident, "free_device_bytes", lambda devices=None: (50_000, "free"))
    on, why = resident.choose("auto", cache, "pacs")
    assert on and why.startswith("on:")
    monkeypatch.setattr(resident, "free_device_bytes", lambda devices=None: (30_000, "free"))
    on, why = resident.choose("auto", cache, "pacs")
    assert not on and "more than 50%" in why
    assert resident.choose("on", cache, "pacs")[0]             # on: the user's call
    on, why = resident.choose("auto", None, "domain_net", "domain_net streams")
    assert not on and "domain_net streams" in why
    with pytest.raises(ConfigError, match="needs domain_net's decoded cache"):
        resident.choose("on", None, "domain_net", "domain_net streams")
    monkeypatch.setattr(resident, "free_device_bytes", lambda devices=None: (None, "no figures"))
    assert not resident.choose("auto", cache, "pacs")[0]


def test_rows_follow_the_host_pipelines_draws_and_eval_tables_cover_every_image_once():
    from hjax.data.images.pipeline import step_indices
    member = resident.MemberRows(7, [np.arange(10, 15), np.arange(40, 43)],
                                 [np.arange(5), np.arange(3) + 10])
    rows, labels = resident.step_rows([member, member], 4, batch_size=6)
    assert rows.shape == labels.shape == (2, 2, 6)
    idx = step_indices(7, 4, [5, 3], 6)
    np.testing.assert_array_equal(rows[0], np.stack([idx[0] + 10, idx[1] + 40]))
    np.testing.assert_array_equal(labels[1], np.stack([idx[0], idx[1] + 10]))
    table = resident.eval_table([(np.arange(5), np.zeros(5)), (np.arange(5, 8), np.ones(3))], 3)
    assert table.rows.shape == (3, 3)
    np.testing.assert_array_equal(table.split.reshape(-1), [0, 0, 0, 0, 0, 1, 1, 1, -1])
    np.testing.assert_array_equal(table.rows.reshape(-1)[:8], np.arange(8))
    np.testing.assert_array_equal(table.sizes, [5, 3])


def test_image_jobs_group_by_batch_size_and_differ_in_everything_else(pacs_dir, tmp_path):
    configs = [_config(pacs_dir, tmp_path / f"j{i}", trial_seed=i % 2, hparams_seed=i,
                       hparams_overrides={"batch_size": 4 if i < 3 else 8})
               for i in range(4)]
    hps = [vmapped.resolve_hparams(c) for c in configs]
    assert vmapped.group_by_shape(configs, hps) == [[0, 1, 2], [3]]
    other = dataclasses.replace(configs[1], image_size=64)
    assert vmapped.group_by_shape([configs[0], other], hps[:2]) == [[0], [1]]


def test_a_group_gathers_from_the_resident_cache_what_the_host_pipeline_sends(pacs_dir,
                                                                            tmp_path):
    # The two data paths of a group, element for element: GroupCanvases (host) vs the
    # resident gather of step_rows (device), for two trial seeds.
    configs = [_config(pacs_dir, tmp_path / f"j{i}", trial_seed=i) for i in range(2)]
    datas = [load_image_job_data(c, 4, log=lambda m: None) for c in configs]
    cache, _ = image_programs.resolve_data_on_device(configs[0], datas[0], lambda m: None)
    seeds = [image_programs.augment_seed(c) for c in configs]
    sources = [pipeline.cached_sources(cache, d.dataset, d.train_domains) for d in datas]
    host = pipeline.GroupCanvases([
        pipeline.TrainCanvases([(s, y) for s, (_, y) in zip(src, d.train_domains)], 4,
                               cache.canvas, seed)
        for src, d, seed in zip(sources, datas, seeds)])
    members = [resident.MemberRows(seed, [s.rows for s in src], [y for _, y in d.train_domains])
               for seed, src, d in zip(seeds, sources, datas)]
    on_device = resident.place(cache)
    for step in (0, 5):
        canvases, hw, labels = host(step)
        rows, row_labels = resident.step_rows(members, step, 4)
        got_canvases, got_hw = resident.gather(on_device, jnp.asarray(rows))
        np.testing.assert_array_equal(np.asarray(got_canvases), canvases)
        np.testing.assert_array_equal(np.asarray(got_hw), hw)
        np.testing.assert_array_equal(row_labels, labels)
    assert not np.array_equal(host(0)[0][0], host(0)[0][1])      # the seeds differ


def test_a_traced_dropout_rate_of_zero_keeps_the_whole_key():
    key = jax.random.key(3)
    rest, dropout_key, _ = _dropout_key(key, {"resnet_dropout": 0.1})     # a single job
    want_rest, want_dropout = jax.random.split(key)
    for rate, kept in ((0.0, key), (0.5, want_rest)):
        got, got_dropout, _ = jax.jit(lambda k, r: _dropout_key(k, {"resnet_dropout": r}))(
            key, jnp.float32(rate))
        np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(kept))
        np.testing.assert_array_equal(jax.random.key_data(got_dropout),
                                      jax.random.key_data(want_dropout))
    np.testing.assert_array_equal(jax.random.key_data(rest), jax.random.key_data(want_rest))


def test_the_traced_dropout_draws_flax_dropouts_mask():
    import flax.linen as nn
    from hjax.models.resnet import Dropout
    x = jnp.arange(1.0, 41.0).reshape(4, 10)
    key = jax.random.key(0)
    want = nn.Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": key})
    got = Dropout().apply({}, x, 0.1, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(got, want)            # a Python rate: nn.Dropout itself
    traced = jax.jit(lambda r: Dropout().apply({}, x, r, deterministic=False,
                                               rngs={"dropout": key}))
    # Traced: the same mask; the scaling 1/keep within an ulp (XLA may multiply by the
    # reciprocal of a constant keep, and divides by a traced one).
    np.testing.assert_array_equal(traced(jnp.float32(0.1)) == 0, want == 0)
    np.testing.assert_allclose(traced(jnp.float32(0.1)), want, rtol=3e-7)
    np.testing.assert_array_equal(traced(jnp.float32(0.0)), x)


def test_on_two_devices_the_cache_is_split_by_rows_and_gathers_the_same_canvases():
    import os
    import subprocess
    import sys
    import textwrap
    root = pathlib.Path(__file__).resolve().parents[1]
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from hjax.data import sharding
        from hjax.data.images import resident

        class Cache:
            images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3)).astype(np.uint8)
            hw = np.arange(10, dtype=np.int32).reshape(5, 2)

        placed = resident.place(Cache, sharding.make_mesh())
        assert placed.images.shape == (6, 4, 4, 3)           # padded to 2 devices x 3 rows
        assert [s.data.shape[0] for s in placed.images.addressable_shards] == [3, 3]
        np.testing.assert_array_equal(np.asarray(placed.images)[:5], Cache.images)
        assert not np.asarray(placed.images)[5].any()
        rows = jnp.asarray([[4, 0, 2], [1, 1, 3]])
        canvases, hw = jax.jit(resident.gather)(placed, rows)
        np.testing.assert_array_equal(np.asarray(canvases), Cache.images[np.asarray(rows)])
        np.testing.assert_array_equal(np.asarray(hw), Cache.hw[np.asarray(rows)])
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
