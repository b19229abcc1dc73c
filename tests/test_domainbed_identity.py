"""Run identity of DomainBed jobs: the done marker, refusing another job's folder,
--overwrite, provenance, legacy markers, and the progress line.

One tiny fake-MNIST HGP job (3 steps, in-process, XLA's cheap compile mode: plumbing, see
tests/conftest.py) is trained once per module and copied for each test.
"""

import dataclasses
import json
import shutil

import pytest

from hjax.io import run_identity
from hjax.protocols.domainbed import identity
from hjax.protocols.domainbed.config import RunConfig, resolve_hparams
from hjax.protocols.domainbed.identity import job_identity

pytestmark = pytest.mark.fast_compile

TINY = ["--fake_data", "--width_multiplier=0.125", "--batch_size=8", "--steps=3",
        "--checkpoint_freq=2", "--test_envs=2"]


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def records(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_hgp(tmp_path_factory):
    from hjax.protocols.domainbed.run import run
    out = tmp_path_factory.mktemp("hgp") / "job"
    config = RunConfig(dataset="domainbed_colored_mnist", algorithm="hgp", test_envs=(2,),
                       output_dir=str(out), steps=3, checkpoint_freq=2,
                       hparams_overrides={"batch_size": 8}, width_multiplier=0.125,
                       fake_data=True)
    run(config, log=lambda m: None)
    return out, config


@pytest.fixture
def job(finished_hgp, tmp_path):
    src, config = finished_hgp
    out = tmp_path / "job"
    shutil.copytree(src, out)
    return out, dataclasses.replace(config, output_dir=str(out))


def test_records_and_done_marker_carry_the_run_identity(job):
    out, config = job
    marker = json.loads((out / "done").read_text())
    want = job_identity(config, resolve_hparams(config))
    assert marker["status"] == "done" and marker["diverged_step"] is None
    assert marker["run_id"] == run_identity.run_id(want)
    assert marker["identity"]["data"]["source"] == "fake"
    for r in records(out):
        assert r["run_id"] == marker["run_id"] and r["identity"] == marker["identity"]
        assert r["provenance"]["device_count"] >= 1 and "jax" in r["provenance"]


def test_another_algorithm_on_a_finished_job_is_refused_not_already_done(job, cli):
    out, _ = job
    before = files(out)
    proc = cli("domainbed_train", *TINY, "--algorithm=erm", f"--output_dir={out}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "already done" not in proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert f"{out} holds results of other settings" in line and "algorithm: hgp -> erm" in line
    assert files(out) == before                  # nothing disappeared or changed
    # The same job is done.
    proc = cli("domainbed_train", *TINY, "--algorithm=hgp", f"--output_dir={out}")
    assert proc.returncode == 0 and "already done" in proc.stdout


def test_unfinished_job_of_other_settings_is_refused_and_overwrite_moves_it(job, cli):
    out, _ = job
    (out / "done").unlink()          # an unfinished HGP job: results.jsonl + checkpoint
    before = files(out)
    proc = cli("domainbed_train", *TINY, "--algorithm=erm", f"--output_dir={out}")
    assert proc.returncode == 2 and "algorithm: hgp -> erm" in proc.stderr
    assert files(out) == before
    proc = cli("domainbed_train", *TINY, "--algorithm=erm", f"--output_dir={out}",
               "--overwrite", "--progress=on")
    assert proc.returncode == 0, proc.stderr
    (aside,) = out.glob("replaced-*")
    moved = files(aside)
    assert all(moved[name] == data for name, data in before.items())
    assert json.loads((out / "done").read_text())["identity"]["algorithm"] == "erm"
    # The progress line: a header, then step, loss, examples/s and an ETA.
    assert "domainbed_colored_mnist / erm" in proc.stderr
    assert "step 3/3  loss" in proc.stderr and "examples/s  ETA" in proc.stderr


def test_progress_off_prints_no_progress(tmp_path, cli):
    proc = cli("domainbed_train", *TINY, "--algorithm=erm", f"--output_dir={tmp_path}",
               "--progress=off")
    assert proc.returncode == 0, proc.stderr
    assert "ETA" not in proc.stderr and "examples/s" not in proc.stderr


def test_a_legacy_plain_text_done_marker_counts_only_for_matching_records(job, cli):
    out, config = job
    # As an earlier version wrote them: plain-text marker, records with args and hparams only.
    recs = [{k: v for k, v in r.items() if k not in ("run_id", "identity", "provenance")}
            for r in records(out)]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "done").write_text("done\n")
    shutil.rmtree(out / "checkpoints")
    want = job_identity(config, resolve_hparams(config))
    assert identity.is_done(str(out), want)
    other = job_identity(dataclasses.replace(config, steps=4), resolve_hparams(config))
    assert not identity.is_done(str(out), other)
    proc = cli("domainbed_train", *TINY, "--algorithm=hgp", f"--output_dir={out}")
    assert proc.returncode == 0 and "already done" in proc.stdout
    proc = cli("domainbed_train", *TINY, "--algorithm=hgp", "--steps=4", f"--output_dir={out}")
    assert proc.returncode == 2 and "carry no run identity" in proc.stderr


def test_identity_covers_data_and_hparams_not_paths(tmp_path):
    base = RunConfig(dataset="domainbed_colored_mnist", algorithm="erm", test_envs=(0,),
                     output_dir=str(tmp_path), fake_data=True)
    hp = resolve_hparams(base)
    rid = run_identity.run_id(job_identity(base, hp))
    for change in (dict(output_dir="x"), dict(workers=7), dict(eval_chunk=3),
                   dict(overwrite=True), dict(progress="on"), dict(data_dir="y")):
        assert run_identity.run_id(job_identity(dataclasses.replace(base, **change), hp)) == rid
    real = job_identity(dataclasses.replace(base, fake_data=False), hp)
    assert real["data"]["source"] == "mnist" and run_identity.run_id(real) != rid
    assert run_identity.run_id(job_identity(base, dict(hp, lr=0.5))) != rid


def test_image_manifest_digest_changes_with_the_files(tmp_path):
    root = tmp_path / "PACS"
    (root / "art" / "dog").mkdir(parents=True)
    (root / "art" / "dog" / "a.jpg").write_bytes(b"12345")
    digest = identity._manifest_digest.__wrapped__
    first = digest(str(root))
    assert first["files"] == 1 and digest(str(root)) == first
    (root / "art" / "dog" / "a.jpg").write_bytes(b"123456")          # resized
    assert digest(str(root)) != first
    (root / "art" / "dog" / "b.jpg").write_bytes(b"1")               # added
    assert digest(str(root))["files"] == 2
