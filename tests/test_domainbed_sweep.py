"""Sweep job lists, the launcher's idempotence, model selection and the results tables.

The sweep and collect_results command lines run in-process (the `cli` fixture): none of these
launch training.
"""

import json
import os
import pathlib
import shutil

import pytest

from hjax.protocols.domainbed import identity
from hjax.protocols.domainbed import jobs as jobs_lib
from hjax.protocols.domainbed import selection

DS = "domainbed_colored_mnist"


def rec(step, accs, test_envs, alg="erm", hp=0, trial=0):
    """accs: {env: (in_acc, out_acc)}."""
    r = {"step": step, "args": {"dataset": DS, "algorithm": alg, "test_envs": list(test_envs),
                                "hparams_seed": hp, "trial_seed": trial}}
    for e, (a_in, a_out) in accs.items():
        r[f"env{e}_in_acc"], r[f"env{e}_out_acc"] = a_in, a_out
    return r


def test_job_list_and_directories_are_deterministic_and_distinct():
    jobs = jobs_lib.make_jobs([DS], ["erm", "irm"], n_hparams=2, n_trials=2, with_pairs=True,
                              extra={"steps": 3})
    assert len(jobs) == 2 * 2 * (3 + 3) * 2
    names = [j.dirname() for j in jobs]
    assert len(set(names)) == len(names)
    again = jobs_lib.make_jobs([DS], ["erm", "irm"], n_hparams=2, n_trials=2, with_pairs=True,
                               extra={"steps": 3})
    assert [j.dirname() for j in again] == names
    other = jobs_lib.make_jobs([DS], ["erm", "irm"], n_hparams=2, n_trials=2, with_pairs=True,
                               extra={"steps": 4})
    assert not set(j.dirname() for j in other) & set(names)
    assert "--steps=3" in jobs[0].flags() and "--test_envs=0" in jobs[0].flags()


def test_launch_is_idempotent_and_delete_incomplete_removes_only_unfinished(tmp_path):
    jobs = jobs_lib.make_jobs([DS], ["erm"], n_hparams=2, n_trials=1)
    calls = []

    def runner(job, out):
        calls.append(job)
        os.makedirs(out, exist_ok=True)
        if job.hparams_seed == 1 and job.test_envs == (2,):
            return 1                       # a failed job leaves an incomplete directory
        identity.write_done(out, identity.sweep_job_identity(job, out))
        return 0

    assert jobs_lib.launch(jobs, str(tmp_path), runner, log=lambda m: None) == 1
    assert len(calls) == 6
    assert jobs_lib.status_counts(jobs, str(tmp_path)) == {
        "done": 5, "incomplete": 1, "not_launched": 0}
    calls.clear()
    jobs_lib.launch(jobs, str(tmp_path), runner, log=lambda m: None)
    assert len(calls) == 1                 # only the unfinished job runs again
    (tmp_path / "unrelated").mkdir()
    assert jobs_lib.delete_incomplete(jobs, str(tmp_path)) == 1
    assert (tmp_path / "unrelated").exists()
    assert jobs_lib.status_counts(jobs, str(tmp_path))["not_launched"] == 1


def test_a_job_claimed_by_a_live_process_is_skipped_not_run_twice_nor_deleted(tmp_path):
    from hjax.protocols.runs.claim import FolderClaim
    jobs = jobs_lib.make_jobs([DS], ["erm"], n_hparams=1, n_trials=1)[:2]
    busy = str(tmp_path / jobs[0].dirname())
    calls, lines = [], []
    with FolderClaim(busy):            # another launch (a re-submitted array) is running it
        assert jobs_lib.job_state(str(tmp_path), jobs[0]) == "running"
        assert jobs_lib.status_counts(jobs, str(tmp_path))["running"] == 1
        jobs_lib.launch(jobs, str(tmp_path), lambda job, out: calls.append(job) or 0,
                        log=lines.append)
        assert calls == [jobs[1]]
        assert any("being run by another process" in line for line in lines)
        assert jobs_lib.delete_incomplete(jobs, str(tmp_path)) == 0
        assert os.path.isdir(busy)
    assert jobs_lib.job_state(str(tmp_path), jobs[0]) == "incomplete"     # released


def test_a_done_marker_of_another_job_is_not_done_and_is_never_deleted(tmp_path):
    jobs = jobs_lib.make_jobs([DS], ["erm"], n_hparams=1, n_trials=1, extra={"steps": 3})
    out = [str(tmp_path / j.dirname()) for j in jobs]
    # Job 0: a done marker of job 1's identity. Job 1: a plain-text marker of an earlier
    # version whose records are not this job's. Job 2: a plain-text marker whose records
    # carry the job's args and hparams (an earlier version's finished job).
    for d in out:
        os.makedirs(d)
    identity.write_done(out[0], identity.sweep_job_identity(jobs[1], out[1]))
    pathlib.Path(out[1], "done").write_text("done\n")
    pathlib.Path(out[1], "results.jsonl").write_text(json.dumps(
        {"args": {"algorithm": "irm"}, "hparams": {}, "step": 0}) + "\n")
    legacy = identity.sweep_job_identity(jobs[2], out[2])
    args = {k: v for k, v in legacy.items()
            if k not in ("hparams", "data", "protocol", "protocol_version")}
    pathlib.Path(out[2], "done").write_text("done\n")
    pathlib.Path(out[2], "results.jsonl").write_text(json.dumps(
        {"args": args, "hparams": legacy["hparams"], "step": 0}) + "\n")
    assert [jobs_lib.job_state(str(tmp_path), j) for j in jobs] == [
        "incomplete", "incomplete", "done"]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert jobs_lib.delete_incomplete(jobs, str(tmp_path)) == 0
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def _three_env_run(test_env, hp, val_curve, test_curve, oracle_out, trial=0):
    """A 2-checkpoint run: training envs' out-acc follows val_curve, test env in-acc test_curve."""
    out = []
    for k, step in enumerate((0, 100)):
        accs = {e: (0.5, val_curve[k]) for e in range(3) if e != test_env}
        accs[test_env] = (test_curve[k], oracle_out[k])
        out.append(rec(step, accs, [test_env], hp=hp, trial=trial))
    return out


def test_training_domain_and_oracle_selection():
    # hp 0: best val at step 0 (test 0.3); hp 1: best val at step 100 (test 0.7), higher.
    runs = [_three_env_run(0, 0, (0.8, 0.6), (0.3, 0.9), (0.1, 0.9)),
            _three_env_run(0, 1, (0.7, 0.85), (0.2, 0.7), (0.2, 0.5))]
    by_hp = selection.group_runs(runs)[(DS, "erm", 0, 0)]
    assert selection.select("training_domain", by_hp) == pytest.approx(0.7)
    # Oracle: last checkpoint, validated on the test env's out split: hp 0 (0.9) wins.
    assert selection.select("oracle", by_hp) == pytest.approx(0.9)
    assert selection.select("leave_one_out", by_hp) is None    # no pair runs


def test_leave_one_out_selection_uses_the_pair_runs():
    single = [rec(s, {0: (t, 0.0), 1: (0.5, 0.5), 2: (0.5, 0.5)}, [0])
              for s, t in ((0, 0.4), (100, 0.6))]
    # Pairs [0, 1] and [0, 2]: held-out env in-acc is best at step 0.
    pair1 = [rec(s, {0: (0, 0), 1: (v, 0), 2: (0, 0)}, [0, 1]) for s, v in ((0, .9), (100, .1))]
    pair2 = [rec(s, {0: (0, 0), 1: (0, 0), 2: (v, 0)}, [0, 2]) for s, v in ((0, .8), (100, .2))]
    by_hp = selection.group_runs([single, pair1, pair2])[(DS, "erm", 0, 0)]
    assert selection.select("leave_one_out", by_hp) == pytest.approx(0.4)


def test_table_reports_mean_and_standard_error_over_trials():
    runs = []
    for trial, acc in ((0, 0.6), (1, 0.8)):
        for t in range(3):
            runs.append(_three_env_run(t, 0, (0.5, 0.5), (acc, acc), (0.5, 0.5), trial=trial))
    table = selection.results_table(runs, "training_domain", DS, ("+90%", "+80%", "-90%"))
    # mean 70.0, population std 10 / sqrt(2) = 7.1
    assert "| erm | 70.0 ± 7.1 | 70.0 ± 7.1 | 70.0 ± 7.1 | 70.0 ± 7.1 |" in table
    assert "| algorithm | +90% | +80% | -90% | Avg |" in table


def _write_job(root, name, records, done=True):
    d = root / name
    d.mkdir()
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if done:
        (d / "done").write_text("done\n")


def test_collect_results_script(tmp_path, cli):
    for t in range(3):
        run = _three_env_run(t, 0, (0.5, 0.5), (0.6, 0.6), (0.5, 0.5))
        if t == 1:          # a job whose penalty never acted is named, not silently averaged
            for r in run:
                r["penalty_note"] = "fishr_penalty_anneal_iters=9 >= steps=5: ..."
        _write_job(tmp_path, f"job{t}", run)
    _write_job(tmp_path, "unfinished", _three_env_run(0, 1, (0.9, 0.9), (0.1, 0.1), (.9, .9)),
               done=False)
    out = tmp_path / "table.md"
    proc = cli("collect_results", f"--input_dir={tmp_path}", f"--output={out}")
    assert proc.returncode == 0, proc.stderr
    assert "3 runs" in proc.stdout and "| erm | 60.0 ± 0.0 |" in proc.stdout
    assert out.read_text().strip() == proc.stdout.strip()
    assert "1 of 3 runs had a penalty that never acted" in proc.stderr


def test_sweep_script_status_and_bad_command(tmp_path, cli):
    proc = cli("sweep", "status", f"--output_dir={tmp_path}", "--n_hparams=2", "--n_trials=1",
               "--algorithms=erm,hgp")
    assert proc.returncode == 0, proc.stderr
    assert "12 jobs: 0 done, 0 incomplete, 12 not_launched" in proc.stdout
    bad = cli("sweep", "explode", f"--output_dir={tmp_path}")
    assert bad.returncode == 2 and "launch | status | delete_incomplete" in bad.stderr


def test_cpu_mini_preset_sets_the_sweep_and_explicit_flags_win(tmp_path, cli):
    sweep = ["status", f"--output_dir={tmp_path}", "--preset=cpu_mini"]
    proc = cli("sweep", *sweep)
    assert proc.returncode == 0, proc.stderr
    # 3 algorithms x 3 test envs x 2 hparams x 1 trial.
    assert "18 jobs: 0 done, 0 incomplete, 18 not_launched" in proc.stdout
    proc = cli("sweep", *sweep, "--n_hparams=1", "--algorithms=erm")
    assert "3 jobs:" in proc.stdout
    bad = cli("sweep", *sweep[:-1], "--preset=gpu_huge")
    assert bad.returncode == 2 and "--preset='gpu_huge'" in bad.stderr and "cpu_mini" in bad.stderr


def test_penalties_that_never_act_are_named():
    from hjax.protocols.domainbed.hparams import default_hparams
    from hjax.protocols.domainbed.loop import inactive_penalty_note

    def note(alg, steps=5001, envs=2, **hp):
        return inactive_penalty_note(alg, {**default_hparams(alg, DS), **hp}, steps, envs)

    assert note("fishr") is None and note("erm") is None and note("hgp") is None
    assert "fishr_penalty_anneal_iters=1500 >= steps=1000" in note("fishr", steps=1000)
    assert "trains ERM" in note("fishr", steps=1000)
    assert "irm_lambda=100 is never used" in note("irm", steps=300)
    assert "vrex_lambda=10 is never used" in note("vrex", steps=500)
    assert note("vrex", steps=501) is None
    for alg in ("hgp", "hutchinson", "exact_diag", "coral", "fishr", "vrex", "iga"):
        assert "identically 0" in note(alg, envs=1), alg
    assert note("irm", envs=1) is None          # IRMv1's penalty is per domain: still acts


def test_launch_overwrite_reaches_each_pending_job_and_done_jobs_are_still_skipped(tmp_path):
    from hjax.protocols.domainbed import launchers
    from hjax.protocols.domainbed.vmapped import load_spec_file
    jobs = jobs_lib.make_jobs([DS], ["erm"], n_hparams=1, n_trials=1, extra={"steps": 3})
    out = [str(tmp_path / j.dirname()) for j in jobs]
    for d in out[:2]:
        os.makedirs(d)
    identity.write_done(out[0], identity.sweep_job_identity(jobs[0], out[0]))   # done
    identity.write_done(out[1], identity.sweep_job_identity(jobs[0], out[0]))   # another's
    calls = []

    def runner(job, output_dir, overwrite=False):
        calls.append((job, overwrite))
        return 0

    assert launchers.launch_local(jobs, str(tmp_path), log=lambda m: None, runner=runner,
                                  overwrite=True) == 0
    assert calls == [(jobs[1], True), (jobs[2], True)]
    assert launchers.train_command(jobs[1], out[1], True)[-1] == "--overwrite"
    assert "--overwrite" not in launchers.train_command(jobs[1], out[1])
    # A vmapped group's job list carries it to every job of the group.
    group = jobs_lib.VmapGroup(tuple(jobs[1:]))
    group_dir = tmp_path / group.dirname()
    command = launchers.train_command(group, str(group_dir), overwrite=True)
    configs, _ = load_spec_file(command[-1].split("=", 1)[1])
    assert [c.overwrite for c in configs] == [True, True]


def test_status_and_delete_incomplete_read_the_launch_settings_from_the_sweep_folder(tmp_path,
                                                                                      cli):
    flags = ["--fake_data", "--steps=2", "--n_hparams=1", "--n_trials=1", "--algorithms=erm",
             f"--datasets={DS}"]
    jobs = jobs_lib.make_jobs([DS], ["erm"], n_hparams=1, n_trials=1,
                              extra={"fake_data": "true", "steps": 2})
    for job in jobs:                       # every job done: the launch below runs nothing
        d = tmp_path / job.dirname()
        d.mkdir()
        identity.write_done(str(d), identity.sweep_job_identity(job, str(d)))
    proc = cli("sweep", "launch", f"--output_dir={tmp_path}", "--overwrite", *flags)
    assert proc.returncode == 0, proc.stderr
    assert "3 jobs: 3 done" in proc.stdout
    assert "to run done jobs again, delete their folders" in proc.stdout   # --overwrite
    assert (tmp_path / jobs_lib.SWEEP_FILE).exists()
    (tmp_path / jobs[1].dirname() / "done").unlink()                       # incomplete
    shutil.rmtree(tmp_path / jobs[2].dirname())                            # not launched
    expected = "3 jobs: 1 done, 1 incomplete, 1 not_launched"
    assert cli("sweep", "status", f"--output_dir={tmp_path}").stdout.strip() == expected
    agrees = cli("sweep", "status", f"--output_dir={tmp_path}", "--algorithms=erm")
    assert agrees.stdout.strip() == expected
    other = cli("sweep", "status", f"--output_dir={tmp_path}", "--algorithms=hgp",
                "--steps=5")
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert ("--algorithms: launched with erm, given hgp, --steps: launched with 2, given 5"
            in other.stderr)
    refused = cli("sweep", "delete_incomplete", f"--output_dir={tmp_path}", "--n_trials=3")
    assert refused.returncode == 2 and (tmp_path / jobs[1].dirname()).exists()
    deleted = cli("sweep", "delete_incomplete", f"--output_dir={tmp_path}")
    assert deleted.stdout.strip() == "deleted 1 incomplete job directories"
    assert not (tmp_path / jobs[1].dirname()).exists()
    assert (tmp_path / jobs[0].dirname() / "done").exists()


def test_status_of_a_folder_without_saved_settings_needs_the_flags(tmp_path, cli):
    bare = cli("sweep", "status", f"--output_dir={tmp_path}")
    assert bare.returncode == 2 and bare.stderr.count("\n") == 1
    assert "has no sweep.json" in bare.stderr and "repeat the launch's flags" in bare.stderr
    # Job folders the flags do not list are named, not silently left out of the count.
    job = jobs_lib.make_jobs([DS], ["hgp"], n_hparams=1, n_trials=1)[0]
    (tmp_path / job.dirname()).mkdir()
    (tmp_path / job.dirname() / "results.jsonl").write_text("")
    proc = cli("sweep", "status", f"--output_dir={tmp_path}", "--n_hparams=1", "--n_trials=1")
    assert proc.stdout.strip() == ("3 jobs: 0 done, 0 incomplete, 3 not_launched (and 1 job "
                                   f"folders of other settings, e.g. {job.dirname()})")
    (tmp_path / jobs_lib.SWEEP_FILE).write_text("{not json")
    corrupt = cli("sweep", "status", f"--output_dir={tmp_path}")
    assert corrupt.returncode == 2 and "is not a sweep settings file" in corrupt.stderr


@pytest.mark.parametrize("launch", ["local", "local_parallel"])
def test_an_interrupted_job_is_reported_as_interrupted_and_stops_the_sweep(tmp_path, launch):
    from hjax.protocols.domainbed import launchers
    jobs = jobs_lib.make_jobs([DS], ["erm"], n_hparams=1, n_trials=1, extra={"steps": 3})
    logs, calls = [], []

    def runner(job, output_dir):
        calls.append(job)
        return 130 if len(calls) == 1 else 0          # the first job gets Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        if launch == "local":
            launchers.launch_local(jobs, str(tmp_path), log=logs.append, runner=runner)
        else:
            launchers.launch_local_parallel(jobs, str(tmp_path), max_workers=1,
                                            log=logs.append, runner=runner)
    assert calls == [jobs[0]]                        # no job starts after the interrupt
    assert any("interrupted" in m and jobs[0].dirname() in m for m in logs), logs
    assert not any("FAILED" in m or "failed" in m for m in logs), logs
    assert launchers.was_interrupted(-2) and not launchers.was_interrupted(1)
