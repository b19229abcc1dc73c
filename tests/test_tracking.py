"""Alignment tracking during training (hjax.analysis.alignment_tracking, loop.train_restarts(track_every=...))."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hjax import data
from hjax.core import linear_head
from hjax.data import sharding
from hjax.protocols.irm_cmnist import loop, train
from hjax.analysis.alignment_tracking import TRACKED_KEYS, AlignmentTracker, difference_operators
from hjax.models import irm_mlp


@jax.jit
def dense_head(head, features, labels):
    """(g, H) of the plain-mean logistic head loss, from jax.hessian (the oracle)."""
    flat, unravel = ravel_pytree(head)
    f = lambda v: linear_head.loss_value(unravel(v), features, labels, "logistic")
    return jax.grad(f)(flat), jax.hessian(f)(flat)


def test_difference_operators():
    np.testing.assert_allclose(difference_operators(2, 1), [[1, -1, 0], [0.5, 0.5, -1]])
    assert difference_operators(3, 2).shape == (4, 5)


@pytest.mark.fast_compile     # a training run plus dense-Hessian oracles: compile-bound
def test_tracked_rows_every_n_steps_match_dense_hessians():
    envs = data.make_environments("colored_mnist", seed=0, mnist=data.fake_mnist())
    info = data.dataset_info("colored_mnist")
    model = irm_mlp(16)
    mesh = sharding.make_mesh(1)
    group = loop.prepare_group(data.fake_mnist(), "colored_mnist", [0], info, mesh)
    hp, key = train.method_hparams("erm"), jax.random.key(0)
    steps = 6
    [rec] = loop.train_restarts(model, group, info, "erm", hp, keys=[key], steps=steps,
                                mesh=mesh, log_every=100, track_every=2)
    assert rec["status"] == "ok" and rec["track_every"] == 2
    history = rec["history"]
    # Rows at every tracking step (0, 2, 4) and the last step (5); the log_every grid adds 0.
    assert [r["step"] for r in history] == [0, 2, 4, 5]
    for row in history:
        for k in TRACKED_KEYS:
            assert math.isfinite(row[k]), (row["step"], k)
        assert row["hess_spectral_train"] > 0 and row["hess_spectral_train_test"] > 0
        assert row["hess_spectral_train_residual"] < 1e-3
        assert row["hess_spectral_train"] <= row["hess_frobenius_train"] * (1 + 1e-5)
    out = history[-1]

    # The params tracked at the last step: those after steps - 1 updates (deterministic).
    final = {}
    loop.train_restarts(model, group, info, "erm", hp, keys=[key], steps=steps - 1,
                        mesh=mesh, log_every=100,
                        hooks=loop.Hooks(end=lambda i, p: final.setdefault("params", p)))
    params = final["params"]

    # Padded to a multiple of 7 (as for 7 devices): zero-weight padding must not change any
    # distance; the tracker's key is the loop's (the restart's key folded with 0x7A11).
    train_b = train.stack_domains([envs[i] for i in info.train_envs], 7)
    evals_b = train.stack_domains([envs[i] for i in info.test_envs + info.gray_envs], 7)
    assert train_b.labels.shape[1] > max(len(envs[i].labels) for i in info.train_envs)
    tracker = AlignmentTracker(model, len(info.test_envs), train_b, evals_b,
                               jax.random.fold_in(key, 0x7A11))
    padded = tracker(params, steps - 1)
    for k in TRACKED_KEYS:
        if not k.endswith("_residual"):
            np.testing.assert_allclose(padded[k], out[k], rtol=1e-4, err_msg=k)

    # The oracle on the same (unpadded) features of the params tracked at the last step.
    head = params["classifier"]
    features = jax.jit(model.features)
    dense = []
    for i in info.train_envs + info.test_envs:
        z = features(params, jnp.asarray(envs[i].images))
        dense.append(dense_head(head, z, jnp.asarray(envs[i].labels)))
    (ga, ha), (gb, hb), (gt, ht) = dense
    np.testing.assert_allclose(out["hess_spectral_train"], jnp.linalg.norm(ha - hb, 2),
                               rtol=1e-3)
    np.testing.assert_allclose(out["hess_frobenius_train"], jnp.linalg.norm(ha - hb),
                               rtol=1e-3)
    np.testing.assert_allclose(out["grad_dist_train"], jnp.linalg.norm(ga - gb), rtol=1e-3)
    hbar, gbar = (ha + hb) / 2, (ga + gb) / 2
    np.testing.assert_allclose(out["hess_spectral_train_test"],
                               jnp.linalg.norm(hbar - ht, 2), rtol=1e-3)
    np.testing.assert_allclose(out["hess_frobenius_train_test"], jnp.linalg.norm(hbar - ht),
                               rtol=1e-3)
    np.testing.assert_allclose(out["grad_dist_train_test"], jnp.linalg.norm(gbar - gt),
                               rtol=1e-3)


def test_tracking_off_leaves_rows_unchanged():
    """Default (track_every=0): no tracking keys and no extra rows."""
    info = data.dataset_info("colored_mnist")
    mesh = sharding.make_mesh(1)
    group = loop.prepare_group(data.fake_mnist(), "colored_mnist", [0], info, mesh)
    [rec] = loop.train_restarts(irm_mlp(16), group, info, "erm", train.method_hparams("erm"),
                                keys=[jax.random.key(0)], steps=3, mesh=mesh, log_every=2)
    assert [r["step"] for r in rec["history"]] == [0, 2]
    assert "track_every" not in rec
    assert not set(TRACKED_KEYS) & set(rec["history"][-1])


def test_run_cli_rejects_negative_tracking_interval(tmp_path, cli):
    proc = cli("colored_mnist", "--track_alignment_every=-1", f"--output_dir={tmp_path}")
    assert proc.returncode == 2
    assert "--track_alignment_every=-1 must be >= 0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
