"""--vmap_trials: jobs of one shape trained as one vmapped program give the single-job results.

In-process on fake MNIST with a narrow CNN, in XLA's cheap compile mode (plumbing of whole
runs: see tests/conftest.py); one sweep launch as a user runs it, in subprocesses.
"""

import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import jax
import pytest

from hjax.protocols.domainbed import jobs as jobs_lib
from hjax.protocols.domainbed import vmapped
from hjax.protocols.domainbed.config import RunConfig, resolve_hparams
from hjax.protocols.domainbed.run import run, run_group

ROOT = pathlib.Path(__file__).resolve().parents[1]
DS = "domainbed_colored_mnist"
QUIET = lambda m: None  # noqa: E731

pytestmark = pytest.mark.fast_compile


def config(out, algorithm="fishr", hparams_seed=0, trial_seed=0, **overrides):
    hp = {"batch_size": 8, **overrides}
    if algorithm == "fishr":
        hp.setdefault("fishr_penalty_anneal_iters", 2)    # the penalty switches on mid-run
    return RunConfig(dataset=DS, algorithm=algorithm, test_envs=(2,), output_dir=str(out),
                     hparams_seed=hparams_seed, trial_seed=trial_seed, steps=4,
                     checkpoint_freq=2, hparams_overrides=hp, width_multiplier=0.125,
                     fake_data=True)


def records(out):
    text = (pathlib.Path(out) / "results.jsonl").read_text()
    # Strict JSON: a NaN or Infinity in a results file is a bug.
    return [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-finite {c}"))
            for line in text.splitlines()]


def marker(out):
    """The JSON done marker of a job folder."""
    return json.loads((out / "done").read_text())


def assert_same_results(a, b, rtol=1e-4, atol=2e-3):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["hparams"] == rb["hparams"] and ra["args"] == rb["args"]
        for k, v in ra.items():
            if isinstance(v, float) and k != "step_time":
                # Accuracies are counts / n: one example flipped by float reassociation moves
                # them by 1/n (the fake splits have ~66-270 examples), losses agree tightly.
                tol = atol if k.endswith("_acc") else rtol * max(1.0, abs(v))
                assert abs(v - rb[k]) <= tol + 1e-12, (k, v, rb[k])


@pytest.fixture(scope="module")
def separate_runs(tmp_path_factory):
    """Two single jobs: two trial seeds (different data, splits, init, minibatches) and two
    hparam draws (different lr, fishr_lambda, fishr_ema and integer anneal step)."""
    root = tmp_path_factory.mktemp("separate")
    specs = [(0, 0), (3, 1)]
    for h, t in specs:
        run(config(root / f"s{h}{t}", "fishr", h, t), log=QUIET)
    return root, specs


@pytest.mark.parametrize("batching", ["vmap", "unroll"])
def test_vmapped_group_equals_separate_runs(tmp_path, separate_runs, batching):
    root, specs = separate_runs
    logs = []
    run_group([config(tmp_path / f"v{h}{t}", "fishr", h, t) for h, t in specs],
                      log=logs.append, batching=batching)
    # One program for both, with the hparams traced per trial.
    assert sum(f"vmapped group of 2 job(s) ({batching})" in m for m in logs) == 1
    for h, t in specs:
        assert (tmp_path / f"v{h}{t}" / "done").exists()
        vm = records(tmp_path / f"v{h}{t}")
        assert all(r["vmap_group_size"] == 2 for r in vm)
        assert_same_results(records(root / f"s{h}{t}"), vm)
    # Different hparams really were used per trial (not the first trial's for all).
    lr = {records(tmp_path / f"v{h}{t}")[0]["hparams"]["lr"] for h, t in specs}
    assert len(lr) == 2


def test_grouping_by_shape_and_group_size(tmp_path):
    cfgs = [config(tmp_path / "a", trial_seed=0), config(tmp_path / "b", trial_seed=1),
            config(tmp_path / "c", hparams_seed=3, lr=1e-2),
            config(tmp_path / "d", batch_size=16),                           # another shape
            config(tmp_path / "e", algorithm="erm"),                          # another program
            dataclasses.replace(config(tmp_path / "f"), test_envs=(1,))]      # another program
    hps = [resolve_hparams(c) for c in cfgs]
    assert vmapped.group_by_shape(cfgs, hps) == [[0, 1, 2], [3], [4], [5]]
    assert vmapped.group_by_shape(cfgs, hps, max_group=2) == [[0, 1], [2], [3], [4], [5]]
    # auto: unroll on XLA:CPU, vmap on accelerators.
    assert vmapped.resolve_trial_batching("auto") == (
        "unroll" if jax.default_backend() == "cpu" else "vmap")
    with pytest.raises(ValueError, match="map"):
        vmapped.resolve_trial_batching("map")
    assert vmapped.is_static_hparam("hutchinson_num_probes")
    assert not vmapped.is_static_hparam("fishr_lambda")


def test_group_resumes_and_skips_jobs_like_train_py(tmp_path):
    done_cfg, killed_cfg, fresh_cfg = (config(tmp_path / n, trial_seed=t)
                                       for n, t in (("done", 0), ("killed", 0), ("fresh", 1)))
    run(done_cfg, log=QUIET)
    run(dataclasses.replace(killed_cfg, stop_after_step=2), log=QUIET)     # "killed" at step 2
    stamp = (tmp_path / "done" / "results.jsonl").stat().st_mtime_ns
    logs = []
    run_group([done_cfg, killed_cfg, fresh_cfg], log=logs.append)
    assert any("already done" in m for m in logs)
    assert (tmp_path / "done" / "results.jsonl").stat().st_mtime_ns == stamp
    assert any("resuming at step 3" in m for m in logs)
    # The resumed job and the fresh one start at different steps: two vmapped programs.
    assert sum("vmapped group of 1" in m for m in logs) == 2
    # The same job as "done" (uninterrupted): resumed-in-a-group gives the same results.
    assert_same_results(records(tmp_path / "done"), records(tmp_path / "killed"))
    assert (tmp_path / "killed" / "done").exists() and (tmp_path / "fresh" / "done").exists()


def test_a_diverging_trial_stops_alone_and_writes_no_nan(tmp_path):
    good = config(tmp_path / "good", algorithm="erm")
    bad = config(tmp_path / "bad", algorithm="erm", lr=1e30)
    logs = []
    run_group([good, bad], log=logs.append)
    assert any("non-finite" in m and "bad" in m for m in logs)
    assert marker(tmp_path / "bad")["status"] == "diverged"
    for r in records(tmp_path / "bad"):                    # only the finite checkpoints
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    assert [r["step"] for r in records(tmp_path / "good")] == [0, 2, 3]
    assert marker(tmp_path / "good")["status"] == "done"
    assert marker(tmp_path / "good")["run_id"] == records(tmp_path / "good")[-1]["run_id"]


def test_single_job_divergence_is_reported_and_marked(tmp_path):
    logs = []
    run(config(tmp_path / "bad", algorithm="erm", lr=1e30), log=logs.append)
    assert any("non-finite" in m for m in logs)
    done = marker(tmp_path / "bad")
    assert done["status"] == "diverged" and isinstance(done["diverged_step"], int)
    records(tmp_path / "bad")


def test_sweep_vmap_trials_end_to_end_and_relaunch_skips(tmp_path, cli):
    flags = ["launch", f"--output_dir={tmp_path}", "--fake_data", "--steps=2",
             "--checkpoint_freq=1", "--width_multiplier=0.125", "--batch_size=8", "--n_trials=2",
             "--n_hparams=1", "--algorithms=erm", f"--datasets={DS}", "--vmap_trials"]
    # As a user runs it: sweep.py, which starts one train.py --vmap_jobs process per group.
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"), *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 3 test envs x 1 hparams x 2 trials = 6 jobs in 3 groups (one per test env).
    assert "6 pending jobs in 3 vmapped group(s)" in proc.stdout
    assert "6 jobs: 6 done" in proc.stdout
    jobs = jobs_lib.make_jobs([DS], ["erm"], 1, 2, extra={
        "fake_data": "true", "steps": 2, "checkpoint_freq": 1, "width_multiplier": 0.125,
        "batch_size": 8})
    for job in jobs:
        assert [r["step"] for r in records(tmp_path / job.dirname())] == [0, 1]
    assert len(list((tmp_path / jobs_lib.GROUPS_DIR).iterdir())) == 3
    proc = cli("sweep", *flags)
    assert proc.returncode == 0 and "0 pending jobs in 0 vmapped group(s)" in proc.stdout
    bad = cli("sweep", *flags, "--max_vmap_trials=0")
    assert bad.returncode == 2 and "--max_vmap_trials=0" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_train_py_rejects_an_unreadable_job_list(tmp_path, cli):
    proc = cli("domainbed_train", f"--vmap_jobs={tmp_path / 'missing.json'}")
    assert proc.returncode == 2 and "--vmap_jobs=" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
