"""experiments/transferability.py end to end on fake data, and run.py's --save_params and
--track_alignment_every flags feeding it."""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hjax.io import params_io

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = [sys.executable, str(ROOT / "experiments" / "transferability.py")]
TINY = ["--fake_data", "--hidden_dim=16", "--deltas=0.1,1", "--ascent_steps=5",
        "--ascent_restarts=2", "--width=3", "--height=2", "--dpi=50"]

# Whole training and measuring runs: XLA's cheap compile mode and a persistent compilation
# cache shared with the subprocesses (tests/conftest.py); what is checked is the plumbing.
pytestmark = pytest.mark.fast_compile


def call(cmd, *args):
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_outputs(out, methods, n_deltas=2):
    rows = read_rows(out / "transferability.jsonl")
    assert sorted({r.get("run", r["method"]) for r in rows}) == sorted(methods)
    assert len(rows) == n_deltas * len(methods)
    for r in rows:
        for k in ("measure", "bound", "corrected_bound", "hessian_spectral",
                  "gradient_distance", "worst_target_accuracy", "target_accuracy"):
            assert math.isfinite(r[k]), k
        assert 0.0 <= r["worst_target_accuracy"] <= 1.0
        assert r["bound"] > 0 and r["corrected_bound"] == pytest.approx(r["bound"] + r["offset"])
    table = (out / "transferability.md").read_text()
    for m in methods:
        assert f"| {m} | 0.1 | 1 |" in table and f"| {m} | 1 | 1 |" in table
    png = (out / "transferability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[16:24] == (150).to_bytes(4, "big") + \
        (100).to_bytes(4, "big")
    return rows


def test_trains_and_writes_table_and_figure(tmp_path):
    # As a user runs it (a subprocess): the script trains its own models.
    out = tmp_path / "transfer"
    proc = call(SCRIPT, *TINY, "--methods=erm", "--steps=3", "--restarts=1",
                f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = check_outputs(out, ["erm"])
    assert [r["delta"] for r in rows] == [0.1, 1.0]
    assert "| erm | 0.1 | 1 |" in proc.stdout


def test_run_saves_params_with_tracking_and_transferability_loads_them(tmp_path, cli):
    run_dir = tmp_path / "runs" / "erm"
    proc = cli("colored_mnist", "--fake_data", "--method=erm", "--restarts=1", "--steps=3",
               "--hidden_dim=16", "--track_alignment_every=2", "--save_params",
               f"--output_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = read_rows(run_dir / "results.jsonl")
    assert rec["params_file"] == "params_restart0.msgpack" and rec["track_every"] == 2
    assert [r["step"] for r in rec["history"]] == [0, 2]
    assert all(math.isfinite(r["hess_spectral_train"]) for r in rec["history"])
    params = params_io.load_params(str(run_dir / rec["params_file"]))
    assert params["classifier"]["kernel"].shape == (16, 1)
    assert np.all(np.isfinite(params["classifier"]["kernel"]))
    # A variant of the method in its own folder (as hgp_alpha10 is HGP's): rows are named by
    # folder, as report.py's and plot.py's are, so the two runs are not merged.
    variant_dir = tmp_path / "runs" / "erm_variant"
    shutil.copytree(run_dir, variant_dir)

    out = tmp_path / "transfer"
    measure = [*TINY, f"--input_dirs={tmp_path}/runs/*", f"--output_dir={out}"]
    proc = cli("transferability", *measure)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = check_outputs(out, ["erm", "erm_variant"])
    assert {r["method"] for r in first} == {"erm"}
    assert all(r["settings"]["ascent_steps"] == 5 for r in first)
    assert all(r["test_domain"] == rec["test_domain"] for r in first)

    # Params are not committed: a fresh clone's `make figures` must keep what was measured.
    for d in (run_dir, variant_dir):
        (d / "params_restart0.msgpack").unlink()
    proc = cli("transferability", *measure)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "erm restart 0: kept its 2 earlier rows" in proc.stdout
    assert "erm_variant restart 0: kept its 2 earlier rows" in proc.stdout
    assert read_rows(out / "transferability.jsonl") == first
    check_outputs(out, ["erm", "erm_variant"])

    # Other ascent settings do not reuse them; with no params left there is nothing to measure.
    proc = cli("transferability", *measure, "--ascent_steps=6")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("no params file and no earlier rows for restart(s) 0 ") == 2
    assert "none of the saved models has its params file" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert read_rows(out / "transferability.jsonl") == first

    # Rows of a model trained before the test-domain fix (no test_domain) measured other
    # target images: they never stand in for the re-trained restart of the same seeds.
    pre_fix = [{k: v for k, v in r.items() if k != "test_domain"} for r in first]
    (out / "transferability.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pre_fix))
    proc = cli("transferability", *measure)
    assert proc.returncode == 2, proc.stderr
    assert "no params file and no earlier rows for restart(s) 0 " in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--deltas=0.1,-1"], "--deltas: '-1' must be a positive number"),
    (["--methods=erm,sgd"], "--methods='sgd' is not valid"),
])
def test_bad_flags_exit_2(args, message, tmp_path, cli):
    proc = cli("transferability", *args, f"--output_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_params_round_trip(tmp_path):
    params = {"featurizer": {"Dense_0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
                                         "bias": np.zeros(3, np.float32)}},
              "classifier": {"kernel": np.ones((3, 1), np.float32),
                             "bias": np.array([0.5], np.float32)}}
    path = tmp_path / "p.msgpack"
    params_io.save_params(str(path), params)
    back = params_io.load_params(str(path))
    np.testing.assert_array_equal(back["featurizer"]["Dense_0"]["kernel"],
                                  params["featurizer"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(back["classifier"]["bias"], [0.5])
    assert [p.name for p in tmp_path.iterdir()] == ["p.msgpack"]
