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

import pytest

from hjax.data.images import IMAGE_DATASETS
from hjax.errors import ConfigError
from hjax.protocols.domainbed import hparams
from hjax.protocols.domainbed.config import RunConfig
from hjax.protocols.domainbed.run import run

from image_tree import make_tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Not fast_compile: XLA's cheap mode makes ResNet's convolutions slow to run on CPU; the
# session's persistent compilation cache shares the compiled programs between the runs.


@pytest.fixture(scope="module")
def pacs_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("images")
    info = IMAGE_DATASETS["pacs"]
    make_tree(data / info.dir, domains=info.domains, classes=info.classes, per_class=1)
    return data


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _config(data_dir, out, **kw):
    base = dict(dataset="pacs", algorithm="hgp", test_envs=(0,), output_dir=str(out),
                data_dir=str(data_dir), arch="resnet18", image_size=32, steps=3,
                checkpoint_freq=2, workers=0, hparams_overrides={"batch_size": 4})
    base.update(kw)
    return RunConfig(**base)


def test_the_documented_command_trains_and_a_killed_job_resumes_to_the_same_records(
        pacs_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), "--dataset=pacs",
           f"--data_dir={pacs_dir}", "--algorithm=hgp", "--arch=resnet18", "--image_size=32",
           "--steps=3", "--checkpoint_freq=2", f"--output_dir={out}", "--workers=0",
           "--batch_size=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # (Input workers' shared memory: test_image_pipeline and test_interrupts, with workers.)
    assert "leaked shared_memory" not in proc.stderr, proc.stderr[-2000:]
    assert "not the published 9,991" in proc.stdout + proc.stderr     # a subset is reported
    records = _records(out)
    assert [r["step"] for r in records] == [0, 2]
    for r in records:
        for i in range(4):
            assert 0.0 <= r[f"env{i}_in_acc"] <= 1.0 and 0.0 <= r[f"env{i}_out_acc"] <= 1.0
        assert r["args"]["arch"] == "resnet18" and r["args"]["image_size"] == 32
        assert "data_dir" not in r["args"]          # moving the data keeps the job resumable
        assert r["hparams"]["lr"] == 5e-5 and r["hparams"]["resnet_dropout"] == 0.0
        assert {"nll", "penalty", "hessian_term", "gradient_term", "loss"} <= set(r)
    assert (out / "done").exists()

    # The same job killed after step 0 and run again: the batches of step t depend on
    # (seed, t) only, so the resumed job ends with the records of the uninterrupted one.
    # (In-process; the session's compilation cache holds the subprocess's programs.)
    killed = tmp_path / "killed"
    cfg = _config(pacs_dir, killed, steps=3, checkpoint_freq=2)
    run(dataclasses.replace(cfg, stop_after_step=0), log=lambda m: None)
    assert not (killed / "done").exists() and len(_records(killed)) == 1
    resumed = run(cfg, log=lambda m: None)
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("step_time", "provenance")}  # noqa
                          for r in recs]
    assert strip(resumed) == strip(records)


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
