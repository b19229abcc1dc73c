"""experiments/run.py end to end on small synthetic data: files, errors, divergence, devices.

One tiny run as a user starts it (a subprocess); the other command lines run in-process (the
`cli` fixture). Whole training runs compile in XLA's cheap mode (plumbing: tests/conftest.py).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]


def run(*args, env=None):
    return subprocess.run(RUN + list(args), capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **(env or {})), timeout=600)


@pytest.mark.fast_compile
def test_tiny_run_writes_complete_results_and_summary(tmp_path):
    out = tmp_path / "out"
    proc = run("--fake_data", "--method=hutchinson", "--restarts=2", "--steps=3",
               "--num_probes=4", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["restart"] for r in records] == [0, 1]
    for r in records:
        assert r["status"] == "ok" and r["method"] == "hutchinson"
        for key in ("train_acc", "test_acc", "gray_test_acc"):
            assert 0.0 <= r[key] <= 1.0
        for key in ("train_nll", "penalty", "step_time_s", "compile_time_s"):
            assert r[key] >= 0.0
        assert r["num_devices"] >= 1 and r["hparams"]["num_probes"] == 4
        assert r["data_seed"] != records[0]["data_seed"] or r["restart"] == 0
    summary = (out / "summary.md").read_text()
    assert "| hutchinson |" in summary and "2/2" in summary
    assert "| hutchinson |" in proc.stdout
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


@pytest.mark.parametrize("args,message", [
    (["--method=sgd"], "--method='sgd' is not valid"),
    (["--dataset=cifar"], "--dataset='cifar' is not valid"),
    (["--steps=0"], "--steps=0 must be a positive integer"),
    (["--restarts=-1"], "--restarts=-1 must be a positive integer"),
    (["--num_probes=0"], "--num_probes=0 must be a positive integer"),
    (["--matmul=bf16"], "--matmul='bf16' is not valid"),
    (["--output_dir=/proc/forbidden"], "is not writable"),
    (["--no_such_flag=1"], "no_such_flag"),
])
def test_bad_flags_exit_2_with_one_clear_line(args, message, cli):
    proc = cli("colored_mnist", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("script", ["colored_mnist", "sweep", "transferability"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_docstring_and_flags_and_exits_0(script, flag, tmp_path, cli,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = cli(script, flag)
    assert proc.returncode == 0, proc.stderr
    assert "python experiments/" in proc.stdout and "--output_dir" in proc.stdout
    assert "--flagfile" not in proc.stdout  # absl's own flags only with --helpfull
    assert not list(tmp_path.iterdir())  # help runs nothing


@pytest.mark.fast_compile
def test_injected_nan_marks_the_restart_diverged_and_goes_on(tmp_path, cli):
    proc = cli("colored_mnist", "--fake_data", "--method=erm", "--restarts=2", "--steps=4",
               "--inject_nan_at=2", f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["diverged", "diverged"]
    assert records[0]["diverged_step"] == 2 and records[0]["test_acc"] is None
    assert "NaN" not in (tmp_path / "results.jsonl").read_text()
    assert "0/2" in (tmp_path / "summary.md").read_text()
    assert "non-finite loss at step 2" in proc.stderr


MULTI_DEVICE = r"""
import jax, numpy as np
from hjax import data
from hjax.data import sharding
from hjax.protocols.irm_cmnist import loop, train
from hjax.models import irm_mlp
info = data.dataset_info("colored_mnist")
out = {}
for method in ("hutchinson", "hgp", "fishr"):
    for n in (1, 4):
        mesh = sharding.make_mesh(n)
        group = loop.prepare_group(data.fake_mnist(), "colored_mnist", [0], info, mesh)
        [rec] = loop.train_restarts(irm_mlp(32), group, info, method,
                                    train.method_hparams(method, num_probes=6, anneal_iters=2),
                                    keys=[jax.random.key(0)], steps=4, mesh=mesh, log_every=1)
        out[(method, n)] = rec
    a, b = out[(method, 1)]["history"], out[(method, 4)]["history"]
    assert out[(method, 4)]["num_devices"] == 4
    for ra, rb in zip(a, b):
        for k in ("train_nll", "penalty", "loss", "test_acc"):
            np.testing.assert_allclose(ra[k], rb[k], rtol=2e-4, atol=1e-6, err_msg=method + k)
print("MULTI_DEVICE_OK", len(jax.devices()))
"""


@pytest.mark.fast_compile          # sharding plumbing: both sides compile in the same mode
def test_multi_device_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MULTI_DEVICE_OK 4" in proc.stdout


@pytest.mark.fast_compile
def test_interrupted_run_resumes_from_its_finished_restarts(tmp_path, cli):
    run = lambda *args: cli("colored_mnist", *args)  # noqa: E731
    common = ["--fake_data", "--method=vrex", "--steps=3", f"--output_dir={tmp_path}"]
    assert run(*common, "--restarts=1").returncode == 0
    first = (tmp_path / "results.jsonl").read_text().splitlines()
    proc = run(*common, "--restarts=2")
    assert proc.returncode == 0, proc.stderr
    assert "resuming: restarts 0..0" in proc.stdout
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == first[0]       # kept byte for byte, not re-run
    assert json.loads(lines[1])["restart"] == 1
    # Other settings are not mixed in: refused (exit 2, files intact), or with --overwrite
    # the earlier files are moved aside and the run starts over.
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run(*common, "--restarts=2", "--lr=0.01")
    assert proc.returncode == 2 and "hparams.lr" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "results.jsonl").read_text().splitlines() == lines
    proc = run(*common, "--restarts=2", "--lr=0.01", "--overwrite")
    assert proc.returncode == 0 and "moved the earlier" in proc.stderr
    assert [json.loads(l)["hparams"]["lr"] for l in
            (tmp_path / "results.jsonl").read_text().splitlines()] == [0.01, 0.01]
    # Nor are restarts of the other matmul arithmetic; the TF32 records say so.
    proc = run(*common, "--restarts=1", "--lr=0.01", "--matmul=tf32", "--overwrite")
    assert proc.returncode == 0 and "moved the earlier" in proc.stderr
    (rec,) = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rec["matmul"] == "tf32" and rec["hparams"]["lr"] == 0.01
    assert len(list(tmp_path.glob("replaced-*/results.jsonl"))) == 2


@pytest.mark.fast_compile
def test_penalty_at_params_reads_saved_params_and_compares_estimators(tmp_path, cli):
    proc = cli("colored_mnist", "--fake_data", "--method=erm", "--restarts=1", "--steps=2", "--save_params",
               f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    script = ["--fake_data", f"--input_dir={tmp_path}", "--keys=3", "--num_probes=4"]
    proc = cli("penalty_at_params", *script)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    exact = float(rows["exact_diag Hessian term"])
    hutch = float(next(v for k, v in rows.items() if k.startswith("hutchinson")).split()[0])
    assert exact >= 0 and hutch >= 0 and float(rows["hgp Hessian term"]) >= 0
    assert "hutchinson / exact_diag:" in proc.stdout
    missing = cli("penalty_at_params", *script, "--restart=7")
    assert missing.returncode == 2 and "params_restart7.msgpack" in missing.stderr
    assert "Traceback" not in missing.stderr
