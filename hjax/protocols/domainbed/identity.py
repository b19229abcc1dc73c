"""The run identity of one DomainBed job, and what its folder may hold.

A job's identity is ``RunConfig.identity()`` (dataset, algorithm, test envs, seeds, steps,
checkpoint frequency, hparam overrides, holdout fraction, CNN width, fake data, and the
image settings of image datasets), the resolved hparams, the data (fake or real MNIST and its
content digest; for image datasets a digest of the dataset folder's manifest) and the
protocol version. Left out: where things go or how fast (output_dir, data_dir, workers,
eval_chunk) and test-only stops. The checkpoint's meta stores the same identity.

The ``done`` marker (hjax.protocols.runs.folder) is JSON: ``{"status": "done" | "diverged",
"diverged_step", "run_id", "identity"}``. A marker of an earlier version (plain text "done"
or "diverged at step N") counts as this job's only when every record of its results.jsonl
has this job's ``args`` and ``hparams`` (what such records identify the job by).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os

from hjax.data import mnist_data_identity
from hjax.errors import ConfigError
from hjax.io import run_identity
from hjax.io.results import read_jsonl
from hjax.protocols.domainbed.config import RunConfig, job_run_config, resolve_hparams
from hjax.protocols.runs import folder as run_folder
from hjax.protocols.runs.checkpoint import CHECKPOINT_DIR
from hjax.protocols.runs.claim import CLAIM_NAME, live_holder

_LOG = logging.getLogger("hjax")
PROTOCOL = "domainbed"
PROTOCOL_VERSION = 1
DONE_NAME = run_folder.DONE_NAME
RESULTS_NAME = "results.jsonl"
# What a job writes into its folder (train.log, written by launchers, is left in place).
JOB_FILES = (DONE_NAME, RESULTS_NAME, CHECKPOINT_DIR)


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


def data_identity(config: RunConfig) -> dict:
    """Which data a job trains on (see the module docstring)."""
    if not config.is_image_dataset:
        return mnist_data_identity(config.fake_data)
    from hjax.data.images import IMAGE_DATASETS, image_data_dir, load_image_dataset
    root = image_data_dir(config.data_dir) / IMAGE_DATASETS[config.dataset].dir
    if not root.is_dir():       # fetches pacs_mini, or raises its one-line error
        load_image_dataset(config.dataset, config.data_dir, verify=False, check_counts=False)
    return {"source": "images", "manifest": _manifest_digest(str(root.resolve()))}


# The definition of the device augmentation of image jobs (--augment=device): 2 since its hue
# goes through PIL's 8-bit HSV as DomainBed's does (other draws of the same images than 1,
# whose identities had no such key), so a job of version 1 is not resumed by version 2.
DEVICE_AUGMENT_VERSION = 2


def job_identity(config: RunConfig, hp: dict) -> dict:
    identity = dict(config.identity(), hparams=hp, data=data_identity(config),
                    protocol=PROTOCOL, protocol_version=PROTOCOL_VERSION)
    if config.is_image_dataset and config.augment == "device":
        identity["device_augment_version"] = DEVICE_AUGMENT_VERSION
    return identity


def write_done(folder: str, identity: dict, diverged_step: int | None = None) -> None:
    run_folder.write_done(folder, identity, diverged_step)


read_done = run_folder.read_done


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
        run_folder.refuse_or_move(folder, JOB_FILES, identity, overwrite, warn,
                                  old_identity=old)
    return False


def check_checkpoint(folder: str, saved_identity, identity: dict, overwrite: bool,
                     warn) -> bool:
    """True when a restored checkpoint is this job's; False when it was another's and was
    moved aside (``overwrite``); raises IdentityClash otherwise."""
    if run_folder.same_identity(saved_identity, identity):
        return True
    run_folder.refuse_or_move(
        folder, JOB_FILES, identity, overwrite, warn,
        old_identity=saved_identity if isinstance(saved_identity, dict) else None)
    return False


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
    config = job_run_config(job, output_dir)
    return job_identity(config, resolve_hparams(config))


def job_claimed(output_dir: str) -> bool:
    """Whether a live process is writing ``output_dir`` (a sweep leaves such a job alone)."""
    return (os.path.exists(os.path.join(output_dir, CLAIM_NAME))
            and live_holder(output_dir) is not None)
