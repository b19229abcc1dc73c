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
- ``num_devices``, the distributed flags and how restarts are batched: data parallelism and
  vmapping compute the same steps, so they change timings, not results; the device count is
  in each record's provenance.
"""

from __future__ import annotations

import logging
import os

from hjax.data import mnist_data_identity
from hjax.io import run_identity
from hjax.io.results import read_jsonl
from hjax.protocols.irm_cmnist.config import TEST_DOMAIN, ExperimentConfig
from hjax.protocols.irm_cmnist.loop import LEGACY_CHECKPOINT, legacy_run_id
from hjax.protocols.runs import checkpoint as run_checkpoint
from hjax.protocols.runs import folder as run_folder

_LOG = logging.getLogger("hjax")
PROTOCOL = "irm_cmnist"
# Bumped when the protocol's code changes its numbers for the same settings.
PROTOCOL_VERSION = 1
RESULTS = "results.jsonl"
CHECKPOINTS = run_checkpoint.CHECKPOINT_DIR
# The files a run writes into its output folder (a folder's other files are left alone).
RUN_FILES = (RESULTS, "summary.md", "params_restart*.msgpack", CHECKPOINTS, LEGACY_CHECKPOINT)


def data_identity(fake_data: bool) -> dict:
    return mnist_data_identity(fake_data)


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


def config_identity(config: ExperimentConfig, hp: dict) -> dict:
    """The identity of ``config`` with its resolved hparams ``hp``."""
    return make_identity(
        dataset=config.dataset, method=config.method, hparams=hp, seed=config.seed,
        steps=config.steps, split=config.split, test_domain=TEST_DOMAIN,
        fake_data=bool(config.fake_data), matmul=config.matmul,
        matmul_precision=default_matmul_precision(), log_every=config.log_every,
        track_alignment_every=config.track_alignment_every or 0,
        inject_nan_at=config.inject_nan_at)


def run_files(folder: str) -> list[str]:
    """The names in ``folder`` that a run writes (:data:`RUN_FILES`), sorted."""
    return run_folder.run_files(folder, RUN_FILES)


def _checkpoint_run_id(folder: str, names) -> str | None:
    if CHECKPOINTS in names:
        meta = run_checkpoint.load_meta(folder)
        return (meta or {}).get("fingerprint", {}).get("run_id")
    return legacy_run_id(os.path.join(folder, LEGACY_CHECKPOINT))


def resumable_records(folder: str, identity: dict, restarts: int, overwrite: bool = False,
                      warn=_LOG.warning) -> list[dict]:
    """The finished restarts of this run in ``folder`` (restart 0.. in order, at most
    ``restarts``), or [] for a folder without results.

    A folder whose run files belong to another run (another ``run_id``, records without one,
    an unreadable results.jsonl, a checkpoint of another run, or params/summary without
    results) raises :class:`hjax.io.run_identity.IdentityClash`; with ``overwrite`` those
    files are moved aside into ``replaced-<time>/`` instead and the run starts afresh.
    Nothing is deleted.
    """
    names = run_files(folder)
    if not names:
        return []
    rid = run_identity.run_id(identity)
    old_identity, problem, other = None, None, False
    records = []
    checkpoints = [n for n in names if n in (CHECKPOINTS, LEGACY_CHECKPOINT)]
    if RESULTS not in names:
        if set(names) - set(checkpoints):   # a checkpoint alone: a group killed before its end
            problem = (f"{', '.join(n for n in names if n not in checkpoints)} without "
                       f"{RESULTS}")
    else:
        try:
            records = read_jsonl(os.path.join(folder, RESULTS))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            problem = f"an unreadable {RESULTS} ({type(e).__name__})"
        else:
            for i, rec in enumerate(records):
                if not isinstance(rec, dict) or run_identity.record_run_id(rec) != rid:
                    old_identity = rec.get("identity") if isinstance(rec, dict) else None
                    other = True
                    break
                if rec.get("restart") != i:
                    problem = f"restart {rec.get('restart')!r} as record {i} of {RESULTS}"
                    break
    if problem is None and not other:
        for name in checkpoints:
            if _checkpoint_run_id(folder, [name]) != rid:
                problem = f"a {name} of another run"
                break
    if problem is None and not other:
        return records[:restarts]
    run_folder.refuse_or_move(folder, names, identity, overwrite, warn,
                              old_identity=old_identity, problem=problem)
    return []
