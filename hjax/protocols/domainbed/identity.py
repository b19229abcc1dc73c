"""The run identity of one DomainBed job, its ``done`` marker, and what its folder may hold.

A job's identity is ``RunConfig.identity()`` (dataset, algorithm, test envs, seeds, steps,
checkpoint frequency, hparam overrides, holdout fraction, CNN width, fake data, and the
image settings of image datasets), the resolved hparams, the data (fake or real MNIST and its
content digest; for image datasets a digest of the dataset folder's manifest) and the
protocol version. Left out: where things go or how fast (output_dir, data_dir, workers,
eval_chunk) and test-only stops. The checkpoint stores the same identity.

The ``done`` marker is JSON: ``{"status": "done" | "diverged", "diverged_step", "run_id",
"identity"}``. A marker of an earlier version (plain text "done" or "diverged at step N")
counts as this job's only when every record of its results.jsonl has this job's ``args``
and ``hparams`` (what such records identify the job by).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os

from hjax.errors import ConfigError
from hjax.io import run_identity
from hjax.io.results import read_jsonl, write_atomic

_LOG = logging.getLogger("hjax")
PROTOCOL = "domainbed"
PROTOCOL_VERSION = 1
DONE_NAME = "done"
RESULTS_NAME = "results.jsonl"
CHECKPOINT_DIR = "checkpoints"
# What a job writes into its folder (train.log, written by launchers, is left in place).
JOB_FILES = (DONE_NAME, RESULTS_NAME, CHECKPOINT_DIR)


@functools.lru_cache(maxsize=1)
def _fake_digest() -> str:
    from hjax.data import fake_mnist
    from hjax.data.schema import digest
    return digest(fake_mnist())


@functools.lru_cache(maxsize=16)
def _manifest_digest(root: str) -> dict:
    """sha256 of the sorted (relative path, size) of every file under ``root``: cheap (no
    file is read), and it changes when an image is added, removed, renamed or resized."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            entries.append(f"{os.path.relpath(path, root)}\t{size}")
    entries.sort()
    text = "\n".join(entries).encode()
    return {"digest": hashlib.sha256(text).hexdigest(), "files": len(entries)}


def data_identity(config) -> dict:
    """Which data a job trains on (see the module docstring)."""
    if not config.is_image_dataset:
        if config.fake_data:
            return {"source": "fake", "digest": _fake_digest()}
        from hjax.data.schema import MNIST_SHA256     # real MNIST is checked against it
        return {"source": "mnist", "digest": MNIST_SHA256}
    from hjax.data.images import IMAGE_DATASETS, image_data_dir, load_image_dataset
    root = image_data_dir(config.data_dir) / IMAGE_DATASETS[config.dataset].dir
    if not root.is_dir():       # fetches pacs_mini, or raises its one-line error
        load_image_dataset(config.dataset, config.data_dir, verify=False, check_counts=False)
    return {"source": "images", "manifest": _manifest_digest(str(root.resolve()))}


def job_identity(config, hp: dict) -> dict:
    return dict(config.identity(), hparams=hp, data=data_identity(config), protocol=PROTOCOL,
                protocol_version=PROTOCOL_VERSION)


def done_marker(identity: dict, diverged_step: int | None = None) -> str:
    status = "done" if diverged_step is None else "diverged"
    return json.dumps({"status": status, "diverged_step": diverged_step,
                       **run_identity.stamp(identity)}, sort_keys=True) + "\n"


def write_done(folder: str, identity: dict, diverged_step: int | None = None) -> None:
    write_atomic(os.path.join(folder, DONE_NAME), done_marker(identity, diverged_step))


def read_done(folder: str) -> dict | None:
    """The done marker: its JSON, ``{"legacy": text}`` for a plain-text marker of an earlier
    version, or None when there is none (or it cannot be read)."""
    path = os.path.join(folder, DONE_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return {"legacy": ""}
    try:
        marker = json.loads(text)
    except ValueError:
        return {"legacy": text.strip()}
    return marker if isinstance(marker, dict) else {"legacy": text.strip()}


def _records(folder: str) -> list | None:
    try:
        return read_jsonl(os.path.join(folder, RESULTS_NAME))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def legacy_done_matches(folder: str, identity: dict) -> bool:
    """Whether a plain-text done marker's job is this one: every record's ``args`` and
    ``hparams`` equal this identity's (records of that version carry nothing else)."""
    records = _records(folder)
    if not records:
        return False
    args = {k: v for k, v in identity.items()
            if k not in ("hparams", "data", "protocol", "protocol_version")}
    want = json.loads(run_identity.canonical({"args": args, "hparams": identity["hparams"]}))
    return all(isinstance(r, dict) and json.loads(run_identity.canonical(
        {"args": r.get("args"), "hparams": r.get("hparams")})) == want for r in records)


def is_done(folder: str, identity: dict) -> bool:
    """Whether ``folder`` holds this job finished (done or diverged)."""
    marker = read_done(folder)
    if marker is None:
        return False
    if "legacy" in marker:
        return legacy_done_matches(folder, identity)
    return marker.get("run_id") == run_identity.run_id(identity)


def check_folder(folder: str, identity: dict, overwrite: bool = False,
                 warn=_LOG.warning) -> bool:
    """True when ``folder`` holds this job done; False when it is fresh or holds this job
    unfinished (to resume). Anything of another job (a done marker or results records of
    another identity, records without one) raises IdentityClash, or with ``overwrite`` is
    moved aside into ``replaced-<time>/``. (The checkpoint's identity is checked when it is
    restored, :func:`check_checkpoint`.)"""
    if is_done(folder, identity):
        return True
    rid = run_identity.run_id(identity)
    marker = read_done(folder)
    old, clash = None, False
    if marker is not None:
        clash, old = True, marker.get("identity")
    else:
        records = _records(folder) if os.path.exists(os.path.join(folder, RESULTS_NAME)) else []
        if records is None:
            clash = True
        else:
            for r in records:
                if run_identity.record_run_id(r) != rid:
                    clash, old = True, r.get("identity") if isinstance(r, dict) else None
                    break
    if clash:
        move_or_refuse(folder, old, identity, overwrite, warn)
    return False


def move_or_refuse(folder: str, old_identity, identity: dict, overwrite: bool, warn) -> None:
    if not overwrite:
        raise run_identity.clash(folder, old_identity, identity)
    moved = run_identity.move_aside(folder, JOB_FILES)
    warn(f"note: --overwrite: moved the earlier files of {folder} to {moved}")


def check_checkpoint(folder: str, saved_identity, identity: dict, overwrite: bool,
                     warn) -> bool:
    """True when a restored checkpoint is this job's; False when it was another's and was
    moved aside (``overwrite``); raises IdentityClash otherwise."""
    same = (json.loads(run_identity.canonical(saved_identity))
            == json.loads(run_identity.canonical(identity))) if isinstance(
                saved_identity, dict) else False
    if same:
        return True
    move_or_refuse(folder, saved_identity if isinstance(saved_identity, dict) else None,
                   identity, overwrite, warn)
    return False


def unknown_setting(name: str) -> ConfigError:
    return ConfigError(f"sweep job setting --{name} has no place in a job's identity")


# Sweep job settings (Job.extra) -> RunConfig fields, as domainbed_train parses those flags.
_EXTRA_FIELDS = {"steps": int, "checkpoint_freq": int, "width_multiplier": float,
                 "holdout_fraction": float, "data_dir": str, "arch": str, "image_size": int,
                 "dtype": str, "pretrained": str, "workers": int}


def job_run_config(job, output_dir: str):
    """The RunConfig that ``domainbed_train`` builds from ``job.flags()`` (the checkpoint
    frequency defaulting per dataset, as its flag does); ConfigError for a setting it does
    not know."""
    from hjax.data.images import IMAGE_DATASETS
    from hjax.protocols.domainbed.run import RunConfig
    kwargs, overrides = {}, {}
    for name, value in job.extra:
        if name in _EXTRA_FIELDS:
            kwargs[name] = _EXTRA_FIELDS[name](value)
        elif name == "fake_data":
            kwargs[name] = str(value).lower() in ("true", "1")
        elif name in ("batch_size", "lr"):
            overrides[name] = int(value) if name == "batch_size" else float(value)
        else:
            raise unknown_setting(name)
    if "checkpoint_freq" not in kwargs:
        info = IMAGE_DATASETS.get(job.dataset)
        kwargs["checkpoint_freq"] = info.checkpoint_freq if info is not None else 100
    return RunConfig(dataset=job.dataset, algorithm=job.algorithm,
                     test_envs=tuple(job.test_envs), output_dir=output_dir,
                     hparams_seed=job.hparams_seed, trial_seed=job.trial_seed,
                     hparams_overrides=overrides, **kwargs)


def job_is_done(job, output_dir: str) -> bool:
    """Whether a sweep job's folder holds that job finished with its identity. A job whose
    identity cannot be computed here is not done: ``domainbed_train`` decides (it skips a
    finished job itself, and refuses a folder of another job)."""
    if not os.path.exists(os.path.join(output_dir, DONE_NAME)):
        return False
    try:
        identity = sweep_job_identity(job, output_dir)
    except (ConfigError, ValueError, TypeError, OSError):
        return False
    return is_done(output_dir, identity)


def sweep_job_identity(job, output_dir: str) -> dict:
    """The run identity ``domainbed_train`` gives a sweep job."""
    from hjax.protocols.domainbed.run import resolve_hparams
    config = job_run_config(job, output_dir)
    return job_identity(config, resolve_hparams(config))
