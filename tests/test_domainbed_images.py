"""The DomainBed protocol on image datasets: DomainBed's folder layout in, results.jsonl with
every domain's in/out accuracy out, resumable, with one-line errors for missing data.

Generated trees of a few tiny JPEGs (tests/image_tree.py), ResNet-18 at 32 px, workers=0:
these check the plumbing, not accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hjax.errors import ConfigError
from hjax.protocols.domainbed import hparams
from hjax.protocols.domainbed.config import RunConfig
from hjax.protocols.domainbed.run import run, run_group

from image_tree import make_pacs_tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Not fast_compile: XLA's cheap mode makes ResNet's convolutions slow to run on CPU; the
# session's persistent compilation cache shares the compiled programs between the runs.


@pytest.fixture(scope="module")
def pacs_dir(tmp_path_factory):
    return make_pacs_tree(tmp_path_factory.mktemp("images"))


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _config(data_dir, out, **kw):
    """The documented command's job (DOCUMENTED) as a RunConfig."""
    base = dict(dataset="pacs", algorithm="hgp", test_envs=(0,), output_dir=str(out),
                data_dir=str(data_dir), arch="resnet18", image_size=32, steps=3,
                checkpoint_freq=2, workers=0, hparams_overrides={"batch_size": 4})
    base.update(kw)
    return RunConfig(**base)


DOCUMENTED = ["--dataset=pacs", "--algorithm=hgp", "--arch=resnet18", "--image_size=32",
              "--steps=3", "--checkpoint_freq=2", "--workers=0", "--batch_size=4"]
# A second job for the groups below: another trial seed (splits, init, batches) and hparams
# draw, its penalty off, dropout on (the documented job has it off and its penalty on).
OTHER = dict(trial_seed=1, hparams_seed=3,
             hparams_overrides={"batch_size": 4, "lr": 3e-4, "resnet_dropout": 0.5,
                                "hgp_alpha": 0.0, "hgp_beta": 0.0})
STRIPPED = ("step_time", "provenance", "vmap_group_size")


def _strip(records):
    return [{k: v for k, v in r.items() if k not in STRIPPED} for r in records]


def _assert_same_records(got: list[dict], want: list[dict]) -> None:
    """Equal records, losses within rtol 1e-4 (a group's batched kernels sum in another
    order, float32); accuracies (whole images of tiny splits) equal."""
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(_strip(got), _strip(want)):
        assert set(g) == set(w)
        for key, value in w.items():
            if isinstance(value, float) and not key.endswith("_acc"):
                np.testing.assert_allclose(g[key], value, rtol=1e-4, err_msg=key)
            else:
                assert g[key] == value, key


@pytest.fixture(scope="module")
def documented(pacs_dir, tmp_path_factory):
    """(stdout + stderr, records) of the documented command, on the host pipeline."""
    out = tmp_path_factory.mktemp("documented") / "out"
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), *DOCUMENTED,
           f"--data_dir={pacs_dir}", f"--output_dir={out}", "--data_on_device=off"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "done").exists()
    return proc.stdout + proc.stderr, _records(out)


@pytest.fixture(scope="module")
def other(pacs_dir, tmp_path_factory):
    """The records of OTHER as a single job (on the device-resident cache)."""
    out = tmp_path_factory.mktemp("other") / "out"
    return run(_config(pacs_dir, out, data_on_device="on", **OTHER), log=lambda m: None)


def test_the_documented_command_trains_and_a_killed_job_resumes_to_the_same_records(
        pacs_dir, tmp_path, documented):
    output, records = documented
    # (Input workers' shared memory: test_image_pipeline and test_interrupts, with workers.)
    assert "leaked shared_memory" not in output, output[-2000:]
    assert "not the published 9,991" in output                      # a subset is reported
    assert "note: data on the device: off (--data_on_device=off)" in output
    assert [r["step"] for r in records] == [0, 2]
    for r in records:
        for i in range(4):
            assert 0.0 <= r[f"env{i}_in_acc"] <= 1.0 and 0.0 <= r[f"env{i}_out_acc"] <= 1.0
        assert r["args"]["arch"] == "resnet18" and r["args"]["image_size"] == 32
        assert "data_dir" not in r["args"]          # moving the data keeps the job resumable
        assert "data_on_device" not in r["args"]    # the same batches either way
        assert r["hparams"]["lr"] == 5e-5 and r["hparams"]["resnet_dropout"] == 0.0
        assert {"nll", "penalty", "hessian_term", "gradient_term", "loss"} <= set(r)

    # The same job killed after step 0 and run again, now on the device-resident cache: the
    # batches of step t depend on (seed, t) only and are the host pipeline's, so the resumed
    # job ends with the records of the uninterrupted one.
    killed = tmp_path / "killed"
    cfg = _config(pacs_dir, killed, steps=3, checkpoint_freq=2, data_on_device="on")
    run(dataclasses.replace(cfg, stop_after_step=0), log=lambda m: None)
    assert not (killed / "done").exists() and len(_records(killed)) == 1
    resumed = run(cfg, log=lambda m: None)
    _assert_same_records(resumed, records)
    assert resumed[-1]["run_id"] == records[-1]["run_id"]


def test_each_member_of_a_group_ends_with_its_single_jobs_records(
        pacs_dir, tmp_path, documented, other):
    # --vmap_trials for images: the documented job (penalty on, no dropout) and OTHER
    # (penalty off, dropout 0.5, another trial seed and lr) as one program, vmapped (the
    # accelerators' batching; unroll is the shared over_trials, tested on MNIST groups), on
    # the resident cache. The host pipeline's group batches equal the resident gather
    # (tests/test_image_groups.py); the suite's time leaves no room to train that one too.
    configs = [_config(pacs_dir, tmp_path / "documented", data_on_device="on"),
               _config(pacs_dir, tmp_path / "other", data_on_device="on", **OTHER)]
    run_group(configs, log=lambda m: None, batching="vmap")
    for c, want in zip(configs, (documented[1], other)):
        got = _records(pathlib.Path(c.output_dir))
        assert all(r["vmap_group_size"] == 2 for r in got)
        _assert_same_records(got, want)
        assert got[-1]["run_id"] == want[-1]["run_id"]
        assert (pathlib.Path(c.output_dir) / "done").exists()


def test_missing_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        run(_config(tmp_path, tmp_path / "out", dataset="office_home"), log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg
    assert "office_home/<domain>/<class>/<image>" in msg and "15,588" in msg
    assert "domainbed.scripts.download" in msg


@pytest.mark.parametrize("field,value", [("arch", "resnet34"), ("dtype", "float16"),
                                         ("image_size", 8)])
def test_bad_image_settings_are_config_errors(pacs_dir, tmp_path, field, value):
    with pytest.raises(ConfigError, match=field):
        run(_config(pacs_dir, tmp_path / "out", **{field: value}), log=lambda m: None)


def test_large_image_hparams_follow_domainbed():
    hp = hparams.default_hparams("hgp", "pacs")
    assert (hp["lr"], hp["batch_size"], hp["weight_decay"], hp["resnet_dropout"]) == (
        5e-5, 32, 0.0, 0.0)
    draws = {hparams.random_hparams("erm", "pacs", s)["resnet_dropout"] for s in range(1, 40)}
    assert draws == {0.0, 0.1, 0.5}
    assert "resnet_dropout" not in hparams.default_hparams("erm", "rotated_mnist")


def test_host_augmentation_path_still_trains_and_is_part_of_the_identity(pacs_dir, tmp_path):
    # The PIL reference path (--augment=host): other draws than the device path, so a
    # checkpoint of one is not resumed by the other.
    out = tmp_path / "host"
    cfg = _config(pacs_dir, out, augment="host", decoded_cache=False)
    records = run(dataclasses.replace(cfg, stop_after_step=0), log=lambda m: None)
    assert [r["step"] for r in records] == [0] and records[0]["args"]["augment"] == "host"
    assert 0.0 <= records[0]["env1_in_acc"] <= 1.0
    with pytest.raises(ConfigError, match="other settings"):
        run(dataclasses.replace(cfg, augment="device"), log=lambda m: None)
    with pytest.raises(ConfigError, match="augment"):
        run(_config(pacs_dir, tmp_path / "bad", augment="gpu"), log=lambda m: None)
