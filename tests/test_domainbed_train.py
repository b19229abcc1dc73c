"""experiments/train.py end to end on fake MNIST: results, resume after a kill, bad args.

The subprocesses share a persistent compilation cache and XLA's cheapest compile mode (the
fast_compile marker, tests/conftest.py), so the resumed runs do not pay the CNN's compile
again.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from hjax.cli import UsageError
from hjax.protocols.domainbed.config import RunConfig, validate

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "experiments" / "train.py")]
TINY = ["--fake_data", "--width_multiplier=0.125", "--batch_size=8", "--steps=5",
        "--checkpoint_freq=2", "--test_envs=2", "--algorithm=fishr",
        # The penalty switches on (and Adam is re-created) at step 3, after the resume point.
        '--hparams={"fishr_penalty_anneal_iters": 3}']

pytestmark = pytest.mark.fast_compile


def train(*args):
    return subprocess.run(TRAIN + list(args), capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def without_timing(recs):
    return [{k: v for k, v in r.items() if k not in ("step_time", "provenance")} for r in recs]


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, cli):
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = train(*TINY, f"--output_dir={full}")
    assert proc.returncode == 0, proc.stderr
    assert (full / "done").exists()
    recs = records(full)
    assert [r["step"] for r in recs] == [0, 2, 4]
    for r in recs:
        for i in range(3):
            assert 0.0 <= r[f"env{i}_in_acc"] <= 1.0 and 0.0 <= r[f"env{i}_out_acc"] <= 1.0
        assert {"loss", "nll", "penalty", "step_time", "hparams", "args"} <= set(r)
        assert r["hparams"]["batch_size"] == 8 and r["args"]["test_envs"] == [2]
    assert recs[-1]["penalty"] > 0

    # "Kill" after step 3: the last checkpoint is step 2's, step 3's work is lost.
    proc = train(*TINY, f"--output_dir={killed}", "--stop_after_step=3")
    assert proc.returncode == 0, proc.stderr
    assert not (killed / "done").exists()
    assert [r["step"] for r in records(killed)] == [0, 2]

    proc = train(*TINY, f"--output_dir={killed}")
    assert proc.returncode == 0, proc.stderr
    assert "resuming at step 3" in proc.stdout
    assert (killed / "done").exists()
    assert without_timing(records(killed)) == without_timing(recs)

    # A finished job is skipped (in-process from here: no training, no compile).
    proc = cli("domainbed_train", *TINY, f"--output_dir={killed}")
    assert proc.returncode == 0 and "already done" in proc.stdout

    # A different job in the same directory is refused, done or not.
    proc = cli("domainbed_train", *TINY, f"--output_dir={killed}", "--lr=0.5")
    assert proc.returncode == 2 and "hparams.lr" in proc.stderr
    (killed / "done").unlink()
    proc = cli("domainbed_train", *TINY, f"--output_dir={killed}", "--lr=0.5")
    assert proc.returncode == 2 and "hparams.lr" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--algorithm=sgd"], "--algorithm='sgd' is not valid"),
    (["--test_envs=7"], "--test_envs=7 must be distinct environment indices"),
    (["--hparams={bad"], "--hparams is not valid JSON"),
    (["--no_such_flag=1"], "no_such_flag"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message, cli):
    proc = cli("domainbed_train", "--fake_data", f"--output_dir={tmp_path}", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("changes,message", [
    ({"dataset": "cifar"}, "--dataset='cifar' is not valid"),
    ({"test_envs": (0, 1, 2)}, "leaves no training environment"),
    ({"test_envs": (0, 0)}, "must be distinct"),
    ({"steps": 0}, "--steps=0 must be a positive integer"),
    ({"checkpoint_freq": -1}, "--checkpoint_freq=-1 must be a positive integer"),
    ({"holdout_fraction": 1.0}, "must be in (0, 1)"),
    ({"width_multiplier": 0.0}, "must be > 0"),
])
def test_config_validation(tmp_path, changes, message):
    base = dict(dataset="domainbed_colored_mnist", algorithm="erm", test_envs=(0,),
                output_dir=str(tmp_path))
    config = RunConfig(**{**base, **changes})
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(config, 3)
