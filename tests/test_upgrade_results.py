"""upgrade_results: legacy records get exactly the run identity the current code computes.

Oracle: a fresh tiny run (fake data) is stripped back to what an earlier version wrote (no
run_id, identity, provenance; a plain-text done marker); upgrading it must give back the
run_id the run itself recorded. Runs are tiny and in-process (XLA's cheap compile mode).
"""

import json
import shutil

import pytest

from hjax.protocols import upgrade

pytestmark = pytest.mark.fast_compile


@pytest.fixture(scope="module", autouse=True)
def default_matmul_precision():
    """Legacy records were written at JAX's default matmul precision (None), which the
    upgrade assumes; the suite's own setting (tests/precision.py) is another identity."""
    import os

    import jax
    saved, env = (jax.config.jax_default_matmul_precision,
                  os.environ.pop("JAX_DEFAULT_MATMUL_PRECISION", None))
    jax.config.update("jax_default_matmul_precision", None)
    yield
    jax.config.update("jax_default_matmul_precision", saved)
    if env is not None:
        os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = env

NEW_FIELDS = ("run_id", "identity", "provenance", "fake_data")


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip(path):
    """Rewrite ``path`` as an earlier version wrote it; returns the original records."""
    recs = records(path)
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in NEW_FIELDS})
                            + "\n" for r in recs))
    return recs


@pytest.fixture(scope="module")
def colored_mnist_run(tmp_path_factory, default_matmul_precision):
    from hjax.protocols.irm_cmnist.experiment import ExperimentConfig, run_experiment
    out = tmp_path_factory.mktemp("cm") / "run"
    config = ExperimentConfig(method="hgp", restarts=2, steps=3, hidden_dim=16,
                              log_every=1, fake_data=True, output_dir=str(out))
    run_experiment(config)
    return out


def test_colored_mnist_legacy_records_get_the_current_run_id(colored_mnist_run, tmp_path, cli):
    out = tmp_path / "run"
    shutil.copytree(colored_mnist_run, out)
    original = strip(out / "results.jsonl")
    proc = cli("upgrade_results", str(tmp_path), "--data=fake")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 upgraded, 0 already, 0 refused" in proc.stdout
    for old, new in zip(original, records(out / "results.jsonl")):
        assert new["run_id"] == old["run_id"] and new["identity"] == old["identity"]
        assert new["provenance"] == {"recorded": False,
                                     "note": "written before provenance was recorded"}
    # The upgraded run resumes: nothing to train.
    proc = cli("colored_mnist", "--method=hgp", "--restarts=2", "--steps=3", "--hidden_dim=16",
               "--log_every=1", "--fake_data", f"--output_dir={out}")
    assert proc.returncode == 0 and "all 2 restarts are already" in proc.stdout
    # Upgrading again changes nothing.
    before = (out / "results.jsonl").read_bytes()
    proc = cli("upgrade_results", str(out / "results.jsonl"), "--data=fake")
    assert proc.returncode == 0 and "already" in proc.stdout
    assert (out / "results.jsonl").read_bytes() == before


@pytest.mark.parametrize("damage,reason", [
    (lambda rs: rs[1].update(track_every=25), "restart 1 has other settings than restart 0"),
    (lambda rs: rs[0].update(status="diverged"), "--inject_nan_at"),
    (lambda rs: rs[0]["hparams"].pop("alpha"), "not what the current code resolves"),
    (lambda rs: rs[1].update(restart=5), "record 1 is restart 5"),
    (lambda rs: rs[0].pop("history"), "record 0 lacks history"),
])
def test_colored_mnist_records_whose_settings_cannot_be_inferred_are_left_alone(
        colored_mnist_run, tmp_path, damage, reason):
    path = tmp_path / "results.jsonl"
    shutil.copy(colored_mnist_run / "results.jsonl", path)
    strip(path)
    recs = records(path)
    damage(recs)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    before = path.read_bytes()
    (outcome,) = upgrade.upgrade([str(tmp_path)], data="fake")
    assert outcome.status == "refused" and reason in outcome.note
    assert path.read_bytes() == before


def test_legacy_test_domain_is_one_the_current_code_never_uses(colored_mnist_run, tmp_path):
    path = tmp_path / "results.jsonl"
    shutil.copy(colored_mnist_run / "results.jsonl", path)
    original = strip(path)
    recs = [{k: v for k, v in r.items() if k != "test_domain"} for r in records(path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (outcome,) = upgrade.upgrade([str(path)], data="fake")
    assert outcome.status == "upgraded"
    new = records(path)[0]
    assert new["identity"]["test_domain"] == upgrade.LEGACY_TEST_DOMAIN
    assert new["run_id"] != original[0]["run_id"]


def test_domainbed_legacy_job_gets_the_current_identity_and_done_marker(tmp_path, cli):
    out = tmp_path / "job"
    args = ["--fake_data", "--width_multiplier=0.125", "--batch_size=8", "--steps=3",
            "--checkpoint_freq=2", "--test_envs=2", "--algorithm=erm", f"--output_dir={out}"]
    assert cli("domainbed_train", *args, "--progress=off").returncode == 0
    marker = json.loads((out / "done").read_text())
    original = strip(out / "results.jsonl")
    (out / "done").write_text("done\n")
    shutil.rmtree(out / "checkpoints")
    proc = cli("upgrade_results", str(tmp_path), "--data=fake")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "done").read_text()) == marker
    assert [r["run_id"] for r in records(out / "results.jsonl")] == [
        r["run_id"] for r in original]
    proc = cli("domainbed_train", *args)
    assert proc.returncode == 0 and "already done" in proc.stdout


def test_upgrade_cli_errors_are_one_line(tmp_path, cli):
    proc = cli("upgrade_results")
    assert proc.returncode == 2 and "give one or more" in proc.stderr
    proc = cli("upgrade_results", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = cli("upgrade_results", str(tmp_path))
    assert proc.returncode == 2 and "no results.jsonl" in proc.stderr
    (tmp_path / "results.jsonl").write_text('{"trunc')
    proc = cli("upgrade_results", str(tmp_path))
    assert proc.returncode == 1 and "refused" in proc.stdout and "unreadable" in proc.stdout
