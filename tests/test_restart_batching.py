"""Restarts as one vmapped program (hjax.protocols.irm_cmnist.loop) against groups of one
(--restart_batching=loop), divergence isolated per restart, and resume from the group's
checkpoint (orbax, and the msgpack format of earlier versions).

End-to-end plumbing on fake data with a tiny MLP: XLA's cheap compile mode (tests/conftest.py),
both sides of every comparison compiled in it.
"""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hjax import data
from hjax.data import sharding
from hjax.protocols.irm_cmnist import config as cm_config
from hjax.protocols.irm_cmnist import loop, train
from hjax.protocols.irm_cmnist.experiment import Callbacks, ExperimentConfig, run_experiment
from hjax.protocols.irm_cmnist.train import METHODS
from hjax.models import irm_mlp

pytestmark = pytest.mark.fast_compile

# Per-run timings, and the fields that say how the restarts ran.
# Not compared: timings, how the restarts ran, and provenance (it holds the time of writing).
TIMINGS = {"step_time_s", "compile_time_s", "track_time_s", "track_compile_time_s",
           "restart_batching", "restarts_per_program", "provenance"}
QUIET = dict(log=lambda message: None, warn=lambda message: None)


def config(tmp_path, mode, **kw):
    settings = dict(restarts=3, steps=30, fake_data=True, anneal_iters=10, hidden_dim=8,
                    num_probes=4, log_every=10, restart_batching=mode,
                    output_dir=str(tmp_path / mode))
    settings.update(kw)
    return ExperimentConfig(**settings)


def assert_records_equal(got, want, rtol=2e-4, atol=1e-5):
    """Same fields and values, floats to rounding. A power-iteration residual is a
    stopping diagnostic: rounding may end the iteration one product earlier or later
    (the spectral estimates still agree to rtol), so it is compared to the iteration's
    tolerance, 1e-4, in absolute terms."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = {k: v for k, v in g.items() if k not in TIMINGS}
        w = {k: v for k, v in w.items() if k not in TIMINGS}
        assert g.keys() == w.keys()
        assert len(g["history"]) == len(w["history"])
        for rg, rw in zip([g] + g["history"], [w] + w["history"]):
            for k in rw:
                if k == "history":
                    continue
                a, b = rg[k], rw[k]
                if isinstance(b, (float, list)) and b is not None:
                    tol = max(atol, 1e-4) if k.endswith("_residual") else atol
                    np.testing.assert_allclose(a, b, rtol=rtol, atol=tol, err_msg=k)
                else:
                    assert a == b, (k, a, b)


@pytest.mark.parametrize("method", METHODS)
def test_vmapped_restarts_equal_looped_restarts_with_the_penalty_on(method, tmp_path):
    # Alignment tracking rides along on one method (it is the same vmapped function for all).
    track = 20 if method == "hgp" else 0
    looped = run_experiment(config(tmp_path, "loop", method=method,
                                   track_alignment_every=track), Callbacks(**QUIET))
    vmapped = run_experiment(config(tmp_path, "vmap", method=method,
                                    track_alignment_every=track), Callbacks(**QUIET))
    assert [r["restart_batching"] for r in looped + vmapped] == ["loop"] * 3 + ["vmap"] * 3
    assert vmapped[0]["restarts_per_program"] == 3
    assert all(r["status"] == "ok" for r in vmapped)
    assert vmapped[0]["history"][-1]["step"] == 29   # after annealing, penalty weighted
    if method != "erm":
        assert vmapped[0]["penalty"] > 0
    if track:
        assert "hess_frobenius_train_test" in vmapped[0]["history"][-1]
    assert_records_equal(vmapped, looped)


def _group(seeds, info, mesh):
    return loop.prepare_group(data.fake_mnist(), "colored_mnist", seeds, info, mesh)


def test_a_nan_in_one_vmapped_restart_is_reported_for_it_alone():
    info = data.dataset_info("colored_mnist")
    mesh = sharding.make_mesh(1)
    hp = train.method_hparams("hgp", anneal_iters=2, hidden_dim=8)
    keys = [jax.random.fold_in(jax.random.key(0), r) for r in range(3)]
    run = lambda group: loop.train_restarts(irm_mlp(8), group, info, "hgp", hp,  # noqa: E731
                                            keys=keys, steps=6, mesh=mesh, log_every=1)
    clean = _group([0, 1, 2], info, mesh)
    poisoned = clean._replace(train=clean.train._replace(
        images=clean.train.images.at[1, 0, 0].set(jnp.nan)))
    want, got = run(clean), run(poisoned)
    assert got[1]["status"] == "diverged" and got[1]["diverged_step"] == 0
    assert got[1]["history"] == [] and got[1]["test_acc"] is None
    for r in (0, 2):
        assert got[r]["status"] == "ok"
        assert_records_equal([got[r]], [want[r]], rtol=1e-6, atol=0)


def test_killed_vmapped_run_resumes_from_the_group_checkpoint_as_if_uninterrupted(tmp_path):
    settings = dict(method="vrex", restarts=2, steps=12, log_every=3, checkpoint_every=5)
    want = run_experiment(config(tmp_path / "whole", "vmap", **settings), Callbacks(**QUIET))

    class Killed(Exception):
        pass

    def kill(restart, step):
        if step == 8:
            raise Killed

    killed = config(tmp_path / "killed", "vmap", **settings)
    with pytest.raises(Killed):
        run_experiment(killed, Callbacks(step=kill, **QUIET))
    assert os.path.isdir(os.path.join(killed.output_dir, "checkpoints"))
    lines, steps = [], []
    got = run_experiment(killed, Callbacks(log=lines.append, warn=lines.append,
                                           step=lambda r, t: steps.append(t)))
    assert any("from its checkpoint at step 5" in line for line in lines)
    assert sorted(set(steps)) == list(range(5, 12))       # steps 0..4 were not re-run
    assert_records_equal(got, want, rtol=0, atol=0)
    assert not os.path.exists(os.path.join(killed.output_dir, "checkpoints"))


def test_a_checkpoint_of_other_settings_is_refused_and_overwrite_moves_it_aside(tmp_path):
    from hjax.io.run_identity import IdentityClash
    settings = dict(method="erm", restarts=2, steps=8, log_every=4, checkpoint_every=3)
    first = config(tmp_path, "vmap", **settings)

    def kill(restart, step):
        if step == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_experiment(first, Callbacks(step=kill, **QUIET))
    ckpt = tmp_path / "vmap" / "checkpoints"
    before = sorted(p.relative_to(ckpt) for p in ckpt.rglob("*"))
    with pytest.raises(IdentityClash, match="checkpoints of another run"):
        run_experiment(config(tmp_path, "vmap", lr=0.01, **settings), Callbacks(**QUIET))
    assert sorted(p.relative_to(ckpt) for p in ckpt.rglob("*")) == before
    lines, steps = [], []
    other = config(tmp_path, "vmap", lr=0.01, overwrite=True, **settings)
    run_experiment(other, Callbacks(log=lines.append, warn=lines.append,
                                    step=lambda r, t: steps.append(t)))
    assert not any("from its checkpoint" in line for line in lines)
    assert sorted(set(steps)) == list(range(8))
    [moved] = (tmp_path / "vmap").glob("replaced-*/checkpoints")
    assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == before


def test_bad_restart_batching_flags_exit_2_with_one_clear_line(cli):
    for args, message in [(["--restart_batching=pmap"], "--restart_batching='pmap' is not valid"),
                          (["--restarts_per_program=0"], "--restarts_per_program=0 must be"),
                          (["--checkpoint_every=-1"], "--checkpoint_every=-1 must be >= 0")]:
        proc = cli("colored_mnist", *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_auto_batching_is_vmap_on_accelerators():
    assert cm_config.resolve_restart_batching("auto", "gpu") == "vmap"
    assert cm_config.resolve_restart_batching("auto", "tpu") == "vmap"
    assert (cm_config.resolve_restart_batching("auto", "cpu")
            == cm_config.CPU_RESTART_BATCHING)
    assert cm_config.resolve_restart_batching("loop", "gpu") == "loop"
    assert loop.groups(range(2, 9), 3) == [[2, 3, 4], [5, 6, 7], [8]]


def test_reproduce_runs_every_table_run_in_one_process_with_one_eta_line_each(tmp_path, cli):
    proc = cli("reproduce", "--fake_data", "--methods=erm,hgp", "--label_shift_methods=erm",
               "--restarts=2", "--label_shift_restarts=2", "--steps=8", "--hidden_dim=8",
               "--track_alignment_every=4", f"--output_root={tmp_path}",
               "--compilation_cache_dir=")
    assert proc.returncode == 0, proc.stderr
    folders = ["colored_mnist/erm", "colored_mnist/hgp", "colored_mnist_label_shift_intended/erm",
               "colored_mnist_label_shift_reference/erm"]
    for folder in folders:
        assert (tmp_path / folder / "results.jsonl").read_text().count("\n") == 2
    assert (tmp_path / "colored_mnist/hgp/params_restart1.msgpack").exists()
    eta = [line for line in proc.stdout.splitlines() if "ETA" in line]
    assert len(eta) == 4 and eta[0].startswith("[1/4] colored_mnist / erm:")
    # hgp reuses erm's evaluation and tracking programs: only its train step is new.
    assert "(1 new programs)" in eta[1]
    assert "[4/4] colored_mnist_label_shift (reference) / erm: done" in proc.stdout


def test_benchmarks_time_restarts_batched_on_fake_data(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    # No persistent cache: a hit is no compilation, and the counts below are compilations.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}

    def script(*args):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              cwd=root, timeout=600, env=env)
    proc = script("experiments/bench_restarts.py", "--fake_data", "--methods=erm",
                  "--restarts=2", "--steps=2", "--hidden_dim=8",
                  f"--scratch_dir={tmp_path / 'runs'}", f"--output={tmp_path / 'r.md'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "r.md").read_text()
    # Looped (groups of one) and vmapped: one step and one evaluation program for the run.
    assert "| erm | loop |" in table and "| erm | vmap |" in table
    assert [line.split("|")[4].strip() for line in table.splitlines()
            if line.startswith("| erm")] == ["2", "2"]
    proc = script("experiments/bench_train.py", "--fake_data", "--methods=erm,hgp",
                  "--restarts=2", "--steps=1", "--rounds=1", f"--output={tmp_path / 't.md'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "t.md").read_text()
    assert "a step: 2 restarts as one vmapped program" in table and "| hgp |" in table


def _legacy_checkpoint(path, state, fingerprint, progress):
    """A group checkpoint as hjax wrote it before one run machinery (msgpack, the state
    without alg_state), made by hand: that writer is gone, its reader stays."""
    import json as json_lib

    import flax.serialization
    saved = flax.serialization.to_state_dict(jax.device_get(state))
    saved.pop("alg_state", None)
    payload = {"meta": json_lib.dumps({"fingerprint": fingerprint, **progress}),
               "state": saved}
    path.write_bytes(flax.serialization.msgpack_serialize(payload))


def test_a_group_checkpoint_of_the_earlier_format_is_read_or_refused_never_ignored(tmp_path):
    from hjax.io import run_identity
    from hjax.io.run_identity import IdentityClash
    from hjax.protocols.irm_cmnist import identity
    settings = dict(method="erm", restarts=2, steps=8, log_every=4, checkpoint_every=0)
    cfg = config(tmp_path, "vmap", **settings)
    run = identity.config_identity(cfg, cfg.hparams())
    rid = run_identity.run_id(run)
    fingerprint = {"run_id": rid, "restarts": [0, 1], "num_devices": 1}
    state = train.make_init_and_step(irm_mlp(8), "erm", cfg.hparams())[0](
        irm_mlp(8).init(jax.random.key(0), jnp.zeros((1, 2 * 14 * 14))))
    state = jax.tree_util.tree_map(lambda x: jnp.stack([x, x + 1]), state)
    progress = {"step": 4, "history": [[], []], "status": ["ok", "ok"],
                "diverged_step": [None, None], "step_times": [], "track_times": []}
    os.makedirs(cfg.output_dir)
    legacy = tmp_path / "vmap" / loop.LEGACY_CHECKPOINT
    _legacy_checkpoint(legacy, state, fingerprint, progress)
    got_state, got_progress, where = loop.GroupCheckpoint(
        cfg.output_dir, 5, fingerprint).load(state)
    assert where == str(legacy) and got_progress == progress
    chex.assert_trees_all_equal(got_state, jax.device_get(state))
    # A run resumes from it, says so, and removes it when the group's records are written.
    lines = []
    run_experiment(cfg, Callbacks(log=lines.append, warn=lines.append))
    assert any("from its checkpoint at step 4" in line and loop.LEGACY_CHECKPOINT in line
               for line in lines)
    assert not legacy.exists()
    # One of another run is refused in one line naming it, and --overwrite moves it aside.
    other = config(tmp_path / "other", "vmap", **settings)
    os.makedirs(other.output_dir)
    _legacy_checkpoint(tmp_path / "other" / "vmap" / loop.LEGACY_CHECKPOINT, state,
                       dict(fingerprint, run_id="0" * 16), progress)
    with pytest.raises(IdentityClash, match="restart_group.ckpt of another run.*--overwrite"):
        run_experiment(other, Callbacks(**QUIET))
