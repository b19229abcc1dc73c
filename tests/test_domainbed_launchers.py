"""Sweep launchers (local_parallel, submitit on its LocalExecutor, Slurm script), the
--single_test_envs / --with_pairs job sets, and collect_results --latex.

Training jobs run as train.py subprocesses (what the launchers start), in XLA's cheap compile
mode (plumbing: see tests/conftest.py); the sweep and collect_results command lines run
in-process (the `cli` fixture) where they launch no training.
"""

import json
import os

import pytest

from hjax.protocols.domainbed import identity
from hjax.protocols.domainbed import jobs as jobs_lib
from hjax.protocols.domainbed import launchers, selection

DS = "domainbed_colored_mnist"
TINY = ["--fake_data", "--steps=2", "--checkpoint_freq=1", "--width_multiplier=0.25",
        "--batch_size=8", "--n_trials=1", "--algorithms=erm", f"--datasets={DS}"]

pytestmark = pytest.mark.fast_compile


def tiny_jobs():
    """The 3 jobs (one per test env) that ``sweep.py ... TINY --n_hparams=1`` lists."""
    return jobs_lib.make_jobs([DS], ["erm"], n_hparams=1, n_trials=1,
                              extra={"fake_data": "true", "steps": 2, "checkpoint_freq": 1,
                                     "width_multiplier": 0.25, "batch_size": 8})


def test_local_parallel_runs_a_tiny_sweep_and_a_second_launch_skips_finished_jobs(tmp_path,
                                                                                   cli):
    jobs = tiny_jobs()
    logs = []
    assert launchers.launch_local_parallel(jobs[:2], str(tmp_path), max_workers=2,
                                           log=logs.append) == 0
    assert sum("start" in m for m in logs) == 2
    for job in jobs[:2]:
        d = tmp_path / job.dirname()
        assert (d / "done").exists() and (d / "train.log").exists()
        records = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [0, 1]
    calls = []
    assert launchers.launch_local_parallel(
        jobs[:2], str(tmp_path), log=logs.append, runner=lambda *a: calls.append(a)) == 0
    assert calls == []                            # both done: nothing runs again
    # Through the script: mark the third job done by hand, and nothing is launched.
    third = tmp_path / jobs[2].dirname()
    third.mkdir()
    identity.write_done(str(third), identity.sweep_job_identity(jobs[2], str(third)))
    stamps = {j.dirname(): (tmp_path / j.dirname() / "results.jsonl").stat().st_mtime_ns
              for j in jobs[:2]}
    for launcher in ("--launcher=local_parallel", "--launcher=submitit_local"):
        proc = cli("sweep", "launch", f"--output_dir={tmp_path}", launcher, "--n_hparams=1",
                   "--single_test_envs", *TINY)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "3 jobs: 3 done, 0 incomplete, 0 not_launched" in proc.stdout
        assert "start" not in proc.stdout and "submitted" not in proc.stdout
    assert stamps == {j.dirname(): (tmp_path / j.dirname() / "results.jsonl").stat().st_mtime_ns
                      for j in jobs[:2]}


def test_submitit_local_executor_runs_one_job_end_to_end(tmp_path):
    pytest.importorskip("submitit")
    jobs = tiny_jobs()[:1]
    logs = []
    failed = launchers.launch_submitit(jobs, str(tmp_path), local=True, max_workers=1,
                                       timeout_min=10, log=logs.append)
    assert failed == 0, logs
    assert jobs_lib.job_state(str(tmp_path), jobs[0]) == "done"
    out = tmp_path / jobs[0].dirname()
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert any(f.name.endswith("_log.out") for f in (tmp_path / "submitit").iterdir())
    logs.clear()
    assert launchers.launch_submitit(jobs, str(tmp_path), local=True, log=logs.append) == 0
    assert logs == []                             # a done job is not submitted again


def test_submitit_reports_a_failed_job(tmp_path):
    pytest.importorskip("submitit")
    # train.py rejects --width_multiplier=0 (exit 2): the launcher counts one failure.
    jobs = jobs_lib.make_jobs([DS], ["erm"], n_hparams=1, n_trials=1,
                              extra={"fake_data": "true", "width_multiplier": 0})[:1]
    logs = []
    assert launchers.launch_submitit(jobs, str(tmp_path), local=True, timeout_min=5,
                                     log=logs.append) == 1
    assert any("FAILED" in m for m in logs)


def test_slurm_executor_gets_partition_time_and_gpus(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    ex = launchers.make_submitit_executor(str(tmp_path / "logs"), local=False, partition="gpu",
                                          timeout_min=90, gpus_per_job=1, cpus_per_job=4,
                                          mem_gb=16, array_parallelism=8)
    script = ex._executor._make_submission_file_text("CMD", "uid")
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=4",
                 "--mem=16GB"):
        assert f"#SBATCH {line}" in script


def test_sweep_flags_launcher_and_test_env_sets(tmp_path, cli):
    sweep = lambda *args: cli("sweep", *args)  # noqa: E731
    bad = sweep("launch", f"--output_dir={tmp_path}", "--launcher=bogus")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--launcher='bogus'" in bad.stderr
    assert "local_parallel" in bad.stderr
    both = sweep("status", f"--output_dir={tmp_path}", "--single_test_envs", "--with_pairs")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    base = ["status", f"--output_dir={tmp_path}", "--n_hparams=2", "--n_trials=1",
            "--datasets=domainbed_colored_mnist,rotated_mnist"]
    single = sweep(*base, "--single_test_envs")
    assert "18 jobs" in single.stdout, single.stderr     # 2 hparams x (3 + 6) single envs
    # (the default is the same job list; test_domainbed_sweep checks make_jobs' default)
    assert "54 jobs" in sweep(*base, "--with_pairs").stdout   # + 2 x (3 + 15) pairs
    # The issue's command line parses (checked with `status`, which launches nothing).
    issue = sweep("status", "--datasets=domainbed_colored_mnist,rotated_mnist",
                  "--algorithms=erm,hgp,hutchinson", "--n_hparams=20", "--n_trials=3",
                  "--single_test_envs", "--steps=5001", "--checkpoint_freq=100",
                  "--launcher=local", f"--output_dir={tmp_path}")
    assert issue.returncode == 0, issue.stderr
    assert "1620 jobs: 0 done" in issue.stdout           # 3 trials x 3 algs x 9 envs x 20


def _run(test_env, trial, acc, alg="erm"):
    """A one-checkpoint run whose test env in-accuracy is ``acc``."""
    r = {"step": 0, "args": {"dataset": DS, "algorithm": alg, "test_envs": [test_env],
                             "hparams_seed": 0, "trial_seed": trial}}
    for e in range(3):
        r[f"env{e}_in_acc"] = acc if e == test_env else 0.5
        r[f"env{e}_out_acc"] = 0.5
    return [r]


def test_latex_table_numbers():
    # erm: env 0 = 0.6 / 0.8 over two trials (70.0 +- 7.1), env 1 = 0.5, env 2 = 0.9;
    # hgp_x lacks env 2, so its env-2 cell and average are X and a note says so.
    runs = [_run(0, 0, 0.6), _run(0, 1, 0.8), _run(1, 0, 0.5), _run(1, 1, 0.5),
            _run(2, 0, 0.9), _run(2, 1, 0.9), _run(0, 0, 0.4, "hgp_x"), _run(1, 0, 0.2, "hgp_x")]
    tex = selection.results_table_latex(runs, "training_domain", DS, ("+90%", "+80%", "-90%"))
    assert r"\begin{tabular}{lcccc}" in tex and r"\end{tabular}" in tex
    assert r"Algorithm & +90\% & +80\% & -90\% & Avg \\" in tex
    # Avg per trial: (0.6+0.5+0.9)/3 = 0.6667, (0.8+0.5+0.9)/3 = 0.7333 -> 70.0 +- 2.4
    assert r"erm & $70.0 \pm 7.1$ & $50.0 \pm 0.0$ & $90.0 \pm 0.0$ & $70.0 \pm 2.4$ \\" in tex
    assert r"hgp\_x & $40.0 \pm 0.0$ & $20.0 \pm 0.0$ & X & X \\" in tex
    assert "% Note: X = no result" in tex and "hgp_x/-90%" in tex
    md = selection.results_table(runs, "training_domain", DS, ("+90%", "+80%", "-90%"))
    assert "| erm | 70.0 ± 7.1 | 50.0 ± 0.0 | 90.0 ± 0.0 | 70.0 ± 2.4 |" in md
    assert "Note: fewer trials than the others: hgp_x/+90% (1 of 2 trials)" in md


def test_collect_results_latex_flag_and_missing_runs_message(tmp_path, cli):
    empty = cli("collect_results", f"--input_dir={tmp_path}")
    assert empty.returncode == 1 and "no finished runs" in empty.stderr
    for t, acc in enumerate((0.6, 0.5, 0.9)):
        d = tmp_path / f"job{t}"
        d.mkdir()
        (d / "results.jsonl").write_text(json.dumps(_run(t, 0, acc)[0]) + "\n")
        (d / "done").write_text("done\n")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "results.jsonl").write_text(json.dumps(_run(0, 1, 0.1)[0]) + "\n")
    proc = cli("collect_results", f"--input_dir={tmp_path}", "--latex")
    assert proc.returncode == 0, proc.stderr
    assert "| erm | 60.0 ± 0.0 | 50.0 ± 0.0 | 90.0 ± 0.0 | 66.7 ± 0.0 |" in proc.stdout
    assert r"\begin{tabular}" in proc.stdout
    assert r"erm & $60.0 \pm 0.0$ & $50.0 \pm 0.0$ & $90.0 \pm 0.0$ & $66.7 \pm 0.0$ \\" \
        in proc.stdout
    assert "1 unfinished job(s) left out" in proc.stderr and "unfinished" in proc.stderr


def test_collect_results_on_one_job_folder_reports_it_and_refuses_colored_mnist(tmp_path,
                                                                                  cli):
    job = tmp_path / "sweep" / "job0"
    job.mkdir(parents=True)
    (job / "results.jsonl").write_text(json.dumps(_run(0, 0, 0.6)[0]) + "\n")
    unfinished = cli("collect_results", f"--input_dir={job}")
    assert unfinished.returncode == 2 and "one job's folder and the job is not finished" in \
        unfinished.stderr
    (job / "done").write_text("done\n")
    proc = cli("collect_results", f"--input_dir={job}")
    assert proc.returncode == 0, proc.stderr
    assert "1 runs" in proc.stdout and "| erm | 60.0 ± 0.0 | X | X | X |" in proc.stdout
    assert f"is one job's folder: its tables alone (pass the sweep's folder, " \
           f"{tmp_path / 'sweep'}, for the sweep's)" in proc.stderr
    cmnist = tmp_path / "cmnist" / "erm"
    cmnist.mkdir(parents=True)
    (cmnist / "results.jsonl").write_text(json.dumps(
        {"status": "ok", "restart": 0, "train_acc": 0.7, "test_acc": 0.1,
         "gray_test_acc": 0.7}) + "\n")
    for folder in (cmnist, cmnist.parent):
        refused = cli("collect_results", f"--input_dir={folder}")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "holds ColoredMNIST runs" in refused.stderr
        assert f"use python experiments/report.py --results_dir={folder}" in refused.stderr


def test_image_sweeps_from_random_weights_are_called_smoke_tests():
    from hjax.cli.collect_results import report
    envs = 4                                            # pacs_mini's domains

    def run(test_env, pretrained):
        r = {"step": 0, "args": {"dataset": "pacs_mini", "algorithm": "erm",
                                 "test_envs": [test_env], "hparams_seed": 0, "trial_seed": 0,
                                 "pretrained": pretrained}}
        for e in range(envs):
            r[f"env{e}_in_acc"] = r[f"env{e}_out_acc"] = 0.5
        return [r]

    text = report([run(e, None) for e in range(envs)])
    assert ("Note: pacs_mini: the ResNet was randomly initialised (no --pretrained), so these "
            "are smoke-test numbers") in text
    assert "randomly initialised" not in report([run(e, "w.msgpack") for e in range(envs)])
    assert "randomly initialised" not in report([_run(e, 0, 0.5) for e in range(3)])
