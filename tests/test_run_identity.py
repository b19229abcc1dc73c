"""Run identity, provenance and --overwrite of the ColoredMNIST command line, and the
progress line's ETA.

Runs are tiny (fake MNIST, 16 hidden units, 2-3 steps, in-process through the `cli` fixture,
XLA's cheap compile mode: plumbing, tests/conftest.py). Real MNIST is never loaded: the
identity check comes first, and a test that would reach it fails loudly.
"""

import dataclasses
import io
import json

import pytest

import hjax.data
from hjax.cli.progress import Progress
from hjax.io import run_identity
from hjax.protocols.irm_cmnist import identity
from hjax.protocols.irm_cmnist.experiment import TEST_DOMAIN, ExperimentConfig
from hjax.protocols.irm_cmnist.train import method_hparams

TINY = ["--hidden_dim=16", "--steps=3", "--restarts=1", "--log_every=1"]


@pytest.fixture
def no_real_mnist(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("real MNIST must not be loaded here")
    monkeypatch.setattr(hjax.data, "load_mnist", refuse)


def files(folder):
    """Every file below ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def records(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.mark.fast_compile
def test_fake_data_results_are_not_resumed_as_real_mnist(tmp_path, cli, no_real_mnist):
    proc = cli("colored_mnist", "--method=hgp", "--fake_data", *TINY, f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    before = files(tmp_path)
    proc = cli("colored_mnist", "--method=hgp", *TINY, f"--output_dir={tmp_path}")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path} holds results of other settings")
    assert "data.source: fake -> mnist" in line and "--overwrite" in line
    assert "resuming" not in proc.stdout
    assert files(tmp_path) == before


@pytest.mark.fast_compile
def test_records_carry_identity_provenance_and_a_resume_trains_nothing(tmp_path, cli,
                                                                         no_real_mnist):
    proc = cli("colored_mnist", "--method=erm", "--fake_data", *TINY, "--restarts=2",
               f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    recs = records(tmp_path)
    assert len({r["run_id"] for r in recs}) == 1
    for r in recs:
        assert r["run_id"] == run_identity.run_id(r["identity"])
        assert r["identity"]["data"]["source"] == "fake" and r["fake_data"] is True
        assert r["identity"]["method"] == "erm" and r["identity"]["steps"] == 3
        prov = r["provenance"]
        for key in ("hjax", "git_commit", "jax", "jaxlib", "flax", "optax", "backend",
                    "device_kind", "device_count", "host", "time_utc"):
            assert key in prov
        assert prov["device_count"] >= 1 and prov["jax"]
    before = files(tmp_path)
    proc = cli("colored_mnist", "--method=erm", "--fake_data", *TINY, "--restarts=2",
               f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "all 2 restarts are already in results.jsonl" in proc.stdout
    assert "restart 0" not in proc.stdout.splitlines()          # no restart was trained
    assert files(tmp_path)["results.jsonl"] == before["results.jsonl"]


@pytest.mark.fast_compile
@pytest.mark.parametrize("change", [["--method=erm"], ["--steps=2"]])
def test_other_settings_are_refused_and_overwrite_moves_them_aside(tmp_path, cli, change):
    common = ["--fake_data", *TINY, "--save_params", f"--output_dir={tmp_path}"]
    assert cli("colored_mnist", "--method=hgp", *common).returncode == 0
    (tmp_path / "notes.txt").write_text("a file of the user's")
    before = files(tmp_path)
    proc = cli("colored_mnist", "--method=hgp", *common, *change)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert change[0].lstrip("-").split("=")[0] in proc.stderr
    assert files(tmp_path) == before                        # nothing disappeared or changed
    proc = cli("colored_mnist", "--method=hgp", *common, *change, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    (aside,) = tmp_path.glob("replaced-*")
    for name in ("results.jsonl", "summary.md", "params_restart0.msgpack"):
        assert (aside / name).read_bytes() == before[name]  # moved, byte for byte
    assert (tmp_path / "notes.txt").read_bytes() == before["notes.txt"]   # not a run file
    assert records(tmp_path)[0]["run_id"] != json.loads(before["results.jsonl"])["run_id"]


@pytest.mark.fast_compile
def test_records_without_identity_are_refused(tmp_path, cli):
    legacy = {"restart": 0, "dataset": "colored_mnist", "method": "hgp", "seed": 0, "steps": 3}
    (tmp_path / "results.jsonl").write_text(json.dumps(legacy) + "\n")
    before = files(tmp_path)
    proc = cli("colored_mnist", "--method=hgp", "--fake_data", *TINY, f"--output_dir={tmp_path}")
    assert proc.returncode == 2 and "carry no run identity" in proc.stderr
    assert files(tmp_path) == before
    (tmp_path / "results.jsonl").write_text('{"restart": 0, "trunc')
    proc = cli("colored_mnist", "--method=hgp", "--fake_data", *TINY, f"--output_dir={tmp_path}")
    assert proc.returncode == 2 and "unreadable results.jsonl" in proc.stderr


def _identity(**changes):
    config = dataclasses.replace(ExperimentConfig(fake_data=True), **changes)
    hp = method_hparams(config.method, lr=config.lr)
    return identity.config_identity(config, hp)


def test_identity_changes_with_every_setting_that_changes_the_numbers():
    base = run_identity.run_id(_identity())
    changes = [dict(method="hgp"), dict(steps=500), dict(seed=1), dict(lr=1e-3),
               dict(fake_data=False), dict(matmul="tf32"), dict(log_every=50),
               dict(track_alignment_every=25), dict(inject_nan_at=3),
               dict(dataset="colored_mnist_label_shift")]
    ids = [run_identity.run_id(_identity(**c)) for c in changes]
    assert base not in ids and len(set(ids)) == len(ids)
    # Not in it: how many restarts, where the files go, params kept, devices.
    for c in (dict(restarts=3), dict(output_dir="elsewhere"), dict(save_params=True),
              dict(num_devices=1), dict(overwrite=True), dict(progress="on")):
        assert run_identity.run_id(_identity(**c)) == base
    # The split counts for label shift only.
    ls = dict(dataset="colored_mnist_label_shift")
    assert (run_identity.run_id(_identity(**ls, label_shift_split="reference"))
            != run_identity.run_id(_identity(**ls)))
    assert "split" not in _identity()
    assert _identity(fake_data=False)["data"] == {"source": "mnist",
                                                  "digest": hjax.data.schema.MNIST_SHA256}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_eta_leaves_out_the_compile_step():
    clock, stream = Clock(), io.StringIO()
    p = Progress("on", stream=stream, clock=clock)
    p.begin(10, per_step=100, unit="examples")
    clock.now = 30.0                 # compile + the first step
    p.step(0, loss=0.5)
    for t in range(1, 10):
        clock.now += 2.0             # 2 s a step afterwards
        p.step(t, loss=0.5)
        if t == 4:
            # At step 4 (5 done): 5 steps left at 2 s: 10 s; 50 examples/s, measured over
            # 4 steps: provisional.
            assert p._line(4, 0.5).endswith("50 examples/s  ETA 0m10s (provisional)")
        if t == 5:
            assert p._line(5, 0.5).endswith("50 examples/s  ETA 0m08s")
            p.other_work(30.0)       # e.g. evaluations still due
            assert p._line(5, 0.5).endswith("ETA 0m38s")
            p.other_work(0.0)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("step 1/10") and "compiling" in lines[0]
    assert lines[-1] == "step 10/10  loss 0.5  50 examples/s  ETA 0m00s"
    # A second phase (a new restart) compiles again: its first interval is left out too, and
    # later phases' steps count into the ETA.
    p.begin(10, remaining_after=10)
    clock.now += 100.0
    p.step(0)
    assert p._line(0, None).endswith("ETA 0m38s")       # 19 steps at 2 s
    # Time spent on other work between steps (an evaluation) is not a step's.
    clock.now += 60.0
    p.rebase()
    clock.now += 2.0
    p.step(1)
    assert p._line(1, None).endswith("ETA 0m36s")


def test_progress_modes():
    for mode, stream, shown in (("off", Tty(), False), ("auto", io.StringIO(), False),
                                ("auto", Tty(), True), ("on", io.StringIO(), True)):
        p = Progress(mode, stream=stream, clock=Clock())
        p.header("header")
        p.begin(1)
        p.step(0)
        assert bool(stream.getvalue()) == shown, (mode, type(stream))


@pytest.mark.fast_compile
def test_colored_mnist_progress_on_and_off(tmp_path, cli):
    common = ["--method=erm", "--fake_data", *TINY]
    proc = cli("colored_mnist", *common, f"--output_dir={tmp_path / 'on'}", "--progress=on")
    assert proc.returncode == 0, proc.stderr
    assert "[restart 1/1] step 3/3  ETA 0m00s" in proc.stderr
    proc = cli("colored_mnist", *common, f"--output_dir={tmp_path / 'off'}", "--progress=off")
    assert proc.returncode == 0 and "ETA" not in proc.stderr
    proc = cli("colored_mnist", *common, f"--output_dir={tmp_path / 'x'}", "--progress=sometimes")
    assert proc.returncode == 2 and "progress" in proc.stderr


def test_a_folder_of_the_other_protocol_is_named_as_such(tmp_path, cli):
    job = {"protocol": "domainbed", "protocol_version": 1, "algorithm": "hgp"}
    record = {"step": 0, **run_identity.stamp(job)}
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    before = files(tmp_path)
    proc = cli("colored_mnist", "--method=hgp", "--fake_data", *TINY, f"--output_dir={tmp_path}")
    assert proc.returncode == 2
    assert ("holds a DomainBed job's results, not an IRM-protocol ColoredMNIST run's"
            in proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and files(tmp_path) == before
