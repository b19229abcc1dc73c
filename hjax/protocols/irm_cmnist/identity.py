"""The run identity of an IRM-protocol ColoredMNIST run, and what its output folder may hold.

A run's identity is every setting that changes its numbers or what its records hold
(``hjax.io.run_identity``): protocol version, dataset, split, method, the resolved hparams,
seed, steps, test domain, which MNIST (fake or real, and its content digest), the matmul
arithmetic, JAX's default matmul precision, and the settings that change what history rows
hold (``log_every``, ``track_alignment_every``, ``inject_nan_at``).

Not in it, on purpose:
- ``restarts``: a 5-restart run is extended to 10 by resuming; each record has its index.
- ``output_dir``, ``save_params``: where results go and whether params are also kept do not
  change a record's numbers (a saved params file is named in its record).
- ``num_devices`` and the distributed flags: data parallelism computes the same full-batch
  step (sums become all-reduces), so they change timings, not results; the device count is
  in each record's provenance.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import os

from hjax.io import run_identity
from hjax.io.results import read_jsonl

_LOG = logging.getLogger("hjax")
PROTOCOL = "irm_cmnist"
# Bumped when the protocol's code changes its numbers for the same settings.
PROTOCOL_VERSION = 1
# The files a run writes into its output folder (a folder's other files are left alone).
RUN_FILES = ("results.jsonl", "summary.md", "params_restart*.msgpack", "restart_group.ckpt")
RESULTS = "results.jsonl"
CHECKPOINT = "restart_group.ckpt"     # a vmapped group's checkpoint (batched.GroupCheckpoint)


def checkpoint_run_id(path: str) -> str | None:
    """The run_id a group checkpoint was written for, or None when it cannot be read."""
    import flax.serialization
    try:
        with open(path, "rb") as f:
            meta = json.loads(flax.serialization.msgpack_restore(f.read())["meta"])
        return meta["fingerprint"]["run_id"]
    except Exception:  # noqa: BLE001  (any unreadable checkpoint belongs to no known run)
        return None


@functools.lru_cache(maxsize=1)
def _fake_digest() -> str:
    from hjax.data import fake_mnist
    from hjax.data.schema import digest
    return digest(fake_mnist())


def data_identity(fake_data: bool) -> dict:
    """Which MNIST a run uses: real MNIST is only ever used after its content digest was
    checked against :data:`hjax.data.schema.MNIST_SHA256`, so that constant names it (and the
    check happens before loading it); fake MNIST is named by its own digest."""
    if fake_data:
        return {"source": "fake", "digest": _fake_digest()}
    from hjax.data.schema import MNIST_SHA256
    return {"source": "mnist", "digest": MNIST_SHA256}


def default_matmul_precision():
    import jax
    return jax.config.jax_default_matmul_precision


def make_identity(*, dataset: str, method: str, hparams: dict, seed: int, steps: int,
                  split: str | None, test_domain: str, fake_data: bool, matmul: str,
                  matmul_precision, log_every: int, track_alignment_every: int,
                  inject_nan_at: int | None) -> dict:
    """The identity from explicit settings (the upgrade of legacy records uses this too)."""
    identity = {
        "protocol": PROTOCOL, "protocol_version": PROTOCOL_VERSION,
        "dataset": dataset, "method": method, "hparams": dict(hparams), "seed": seed,
        "steps": steps, "test_domain": test_domain, "data": data_identity(fake_data),
        "matmul": matmul, "default_matmul_precision": matmul_precision,
        "log_every": log_every, "track_alignment_every": track_alignment_every,
        "inject_nan_at": inject_nan_at,
    }
    if dataset == "colored_mnist_label_shift":      # the split only exists there
        identity["split"] = split
    return identity


def config_identity(config, hp: dict, split: str | None, test_domain: str) -> dict:
    """The identity of ``config`` (an ExperimentConfig) with its resolved hparams ``hp``."""
    return make_identity(
        dataset=config.dataset, method=config.method, hparams=hp, seed=config.seed,
        steps=config.steps, split=split, test_domain=test_domain,
        fake_data=bool(config.fake_data), matmul=getattr(config, "matmul", "fp32"),
        matmul_precision=default_matmul_precision(), log_every=config.log_every,
        track_alignment_every=getattr(config, "track_alignment_every", 0) or 0,
        inject_nan_at=config.inject_nan_at)


def run_files(folder: str) -> list[str]:
    """The names in ``folder`` that a run writes (:data:`RUN_FILES`), sorted."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in RUN_FILES))


def resumable_records(folder: str, identity: dict, restarts: int, overwrite: bool = False,
                      warn=_LOG.warning) -> list[dict]:
    """The finished restarts of this run in ``folder`` (restart 0.. in order, at most
    ``restarts``), or [] for a folder without results.

    A folder whose run files belong to another run (another ``run_id``, records without one,
    an unreadable results.jsonl, or params/summary without results) raises
    :class:`hjax.io.run_identity.IdentityClash`; with ``overwrite`` those files are moved
    aside into ``replaced-<time>/`` instead and the run starts afresh. Nothing is deleted.
    """
    names = run_files(folder)
    if not names:
        return []
    rid = run_identity.run_id(identity)
    old_identity, problem = None, None
    records = []
    if RESULTS not in names:
        if names != [CHECKPOINT]:      # a checkpoint alone: a group killed before its end
            problem = f"{', '.join(n for n in names if n != CHECKPOINT)} without {RESULTS}"
    else:
        try:
            records = read_jsonl(os.path.join(folder, RESULTS))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            problem = f"an unreadable {RESULTS} ({type(e).__name__})"
        else:
            for i, rec in enumerate(records):
                if not isinstance(rec, dict) or run_identity.record_run_id(rec) != rid:
                    old_identity = rec.get("identity") if isinstance(rec, dict) else None
                    problem = "other"
                    break
                if rec.get("restart") != i:
                    problem = f"restart {rec.get('restart')!r} as record {i} of {RESULTS}"
                    break
    if (problem is None and CHECKPOINT in names
            and checkpoint_run_id(os.path.join(folder, CHECKPOINT)) != rid):
        problem = f"a {CHECKPOINT} of another run"
    if problem is None:
        return records[:restarts]
    if not overwrite:
        if problem == "other":
            raise run_identity.clash(folder, old_identity, identity)
        raise run_identity.IdentityClash(
            f"{folder} holds {problem}; choose another --output_dir, or pass --overwrite to "
            "move them aside")
    moved = run_identity.move_aside(folder, names)
    warn(f"note: --overwrite: moved the earlier {', '.join(names)} of {folder} to {moved}")
    return []
