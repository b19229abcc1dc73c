"""The full-batch experiment driver behind ``python -m hjax.cli.colored_mnist``: a config in,
results files out (``results.jsonl`` rewritten atomically after each group of restarts,
``summary.md``), resuming the finished restarts of an interrupted run with the same settings
and a killed group from its checkpoint.

One path for every run: claim the output folder (one writer), check what it holds (run
identity), then train the restarts not yet done in groups (:func:`loop.train_restarts`:
``vmap`` groups of several restarts, or ``loop``: groups of one).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable

import jax

from hjax import data
from hjax.data import irm_draws
from hjax.errors import ensure_writable_dir
from hjax.io import params_io
from hjax.io.results import summary_table, write_atomic, write_jsonl
from hjax.models import irm_mlp
from hjax.data import sharding
from hjax.protocols.irm_cmnist import identity, loop
from hjax.protocols.irm_cmnist.config import (TEST_DOMAIN, ExperimentConfig,
                                              check_num_devices, data_seed,
                                              resolve_restart_batching, validate)
from hjax.protocols.runs import processes
from hjax.protocols.runs.claim import FolderClaim
from hjax.protocols.runs.records import stamped
from hjax.protocols.runs.reporting import Reporter

_LOG = logging.getLogger("hjax")


class Callbacks(Reporter):
    """Where a run reports (hjax.protocols.runs.reporting.Reporter): ``log`` (tables and
    notes), ``warn`` (warnings), ``progress`` (one-line progress: resume notes, compile time
    and ETA; default ``log``); and what this protocol adds: ``row`` (a logged history row, as
    it is logged), ``step(restart, step)`` and ``restart_done()``. By default log and warn go
    to the ``hjax`` logger and rows to ``log``."""

    def __init__(self, log: Callable[[str], None] = _LOG.info,
                 warn: Callable[[str], None] = _LOG.warning,
                 row: Callable[[dict], None] | None = None,
                 step: Callable[[int, int], None] | None = None,
                 restart_done: Callable[[], None] | None = None,
                 progress: Callable[[str], None] | None = None):
        super().__init__(log, warn, progress or log)
        self.row = row or (lambda row: log(format_row(row)))
        self.step = step or (lambda restart, step: None)
        self.restart_done = restart_done or (lambda: None)


TABLE_HEADER = (f"{'step':>6} {'train nll':>10} {'train acc':>10} {'train penalty':>14} "
                f"{'test acc':>10}{' gray acc':>10}")


def format_row(row) -> str:
    gray = "" if row["gray_test_acc"] is None else f"{row['gray_test_acc']:>10.4f}"
    restart = f"{row['restart']:>7d} " if "restart" in row else ""
    return (f"{restart}{row['step']:>6d} {row['train_nll']:>10.5f} {row['train_acc']:>10.4f} "
            f"{row['penalty']:>14.6g} {row['test_acc']:>10.4f}{gray}")


def run_experiment(config: ExperimentConfig, callbacks: Callbacks | None = None) -> list[dict]:
    """Runs (or resumes) every restart; returns the records. Raises ConfigError for a bad
    setting and MnistUnavailableError when real MNIST cannot be had. With
    ``config.distributed`` this process is one of the run's (hjax.protocols.runs.processes):
    process 0 writes the output folder, which every process must see."""
    cb = callbacks or Callbacks()
    validate(config)
    processes.initialize(config.distributed, config.coordinator_address,
                         config.num_processes, config.process_id)
    if config.distributed:      # the devices of every process, now that they have joined
        check_num_devices(config)
    out_dir = ensure_writable_dir(config.output_folder())
    hp = config.hparams()
    run = identity.config_identity(config, hp)
    with contextlib.ExitStack() as claim:
        def check_folder():
            if processes.is_writer():
                # One writer: process 0 holds the folder for the run's lifetime.
                claim.enter_context(FolderClaim(out_dir, log=cb.warn))
            return _finished_restarts(out_dir, config, run, cb)
        # Process 0 first: the others read the folder once it has moved other results aside.
        records = processes.writer_first(check_folder)
        return _run(config, cb, hp, run, out_dir, records)


def _finished_restarts(out_dir: str, config: ExperimentConfig, run: dict,
                       cb: Callbacks) -> list[dict]:
    """The identity is checked before MNIST is loaded: a folder of other results is refused
    at once, and a finished run is reported without needing the data. Only the writing
    process moves files aside (--overwrite)."""
    return identity.resumable_records(out_dir, run, config.restarts,
                                      config.overwrite and processes.is_writer(), cb.warn)


def _run(config, cb, hp, run, out_dir, records) -> list[dict]:
    info = data.dataset_info(config.dataset)
    mesh = sharding.make_mesh(config.num_devices)
    model = irm_mlp(hp["hidden_dim"], config.matmul)
    writer = processes.is_writer()
    where = f" of {jax.process_count()} processes" if jax.process_count() > 1 else ""
    cb.log(f"{config.dataset} / {config.method}: {config.restarts} restarts x {config.steps} "
           f"steps on {mesh.devices.size} {jax.devices()[0].platform} device(s){where} -> "
           f"{out_dir}")
    run_id = stamped({}, run)["run_id"]
    if len(records) >= config.restarts:
        cb.log(f"all {config.restarts} restarts are already in results.jsonl (run "
               f"{run_id}); nothing to train")
    elif records:
        cb.log(f"resuming: restarts 0..{len(records) - 1} are already in results.jsonl")
    if len(records) < config.restarts:
        mnist = data.fake_mnist() if config.fake_data else data.load_mnist()
        for r, rec in _train_groups(config, cb, model, mnist, info, hp, run, run_id, mesh,
                                    out_dir, writer, first=len(records)):
            cb.restart_done()
            if rec["status"] == "diverged":
                cb.warn(f"restart {r} diverged: non-finite loss at step "
                        f"{rec['diverged_step']}; going on with the next restart")
            records.append(stamped(
                {"dataset": config.dataset, "method": config.method, "restart": r,
                 "seed": config.seed, "data_seed": data_seed(config.seed, r),
                 "split": config.split, "test_domain": TEST_DOMAIN, "hparams": hp,
                 **({"matmul": config.matmul} if config.matmul != "fp32" else {}),
                 **rec, **({"fake_data": True} if config.fake_data else {})}, run))
            if writer:
                write_jsonl(os.path.join(out_dir, identity.RESULTS), records)

    split = f" ({config.split} split)" if config.split else ""
    table = summary_table({config.method: records})
    summary = (f"# {config.dataset}{split} / {config.method}\n\n{table}\n"
               f"Accuracies at step {config.steps - 1}, mean ± std over restarts "
               f"(seed {config.seed}).\n")
    if writer:
        write_atomic(os.path.join(out_dir, "summary.md"), summary)
    cb.log("\n" + table)
    return records


def _train_groups(config, cb, model, mnist, info, hp, run, run_id, mesh, out_dir, writer,
                  first):
    """Yields (r, record) for restarts first..restarts-1 in order, in groups of restarts
    trained as one program (``loop``: groups of one)."""
    mode = resolve_restart_batching(config.restart_batching)
    size = 1 if mode == "loop" else config.restarts_per_program
    key = jax.random.key(config.seed)
    images_u8 = irm_draws.device_images(mnist.train_images)
    every = config.checkpoint_every

    def save_params(r, params):
        if writer:        # written before the record that names it
            params_io.save_params(os.path.join(out_dir, params_io.params_filename(r)), params)

    for group in loop.groups(range(first, config.restarts), size):
        label = (f"{config.method}, restart {group[0]}: " if len(group) == 1 else
                 f"{config.method}, restarts {group[0]}..{group[-1]}: ")
        group_data = loop.prepare_group(
            mnist, config.dataset, [data_seed(config.seed, r) for r in group], info, mesh,
            config.split, images_u8)
        # Resumed only by the same run (identity), the same restarts and device count; one
        # left by an earlier run is resumed even when this one saves none (every 0).
        checkpoint = loop.GroupCheckpoint(out_dir, every, {
            "run_id": run_id, "restarts": group, "num_devices": mesh.devices.size},
            writer=writer)
        if 0 < every < config.steps:
            cb.log(f"{label}checkpointed every {every} steps to {checkpoint.path}: a "
                   "killed run loses at most the steps since the last one")
        if len(group) == 1:
            cb.log(f"restart {group[0]}\n{TABLE_HEADER}")
        else:
            cb.log(f"restarts {group[0]}..{group[-1]}\n{'restart':>7} {TABLE_HEADER}")
        hooks = loop.Hooks(
            row=(lambda i, row: cb.row(row)) if len(group) == 1 else
                (lambda i, row, group=group: cb.row({"restart": group[i], **row})),
            step=lambda t, group=group: [cb.step(r, t) for r in group],
            end=(lambda i, p, group=group: save_params(group[i], p))
                if config.save_params else None,
            log=cb.progress)
        recs = loop.train_restarts(
            model, group_data, info, config.method, hp,
            keys=[jax.random.fold_in(key, r) for r in group], steps=config.steps, mesh=mesh,
            log_every=config.log_every, fault_step=config.inject_nan_at,
            track_every=config.track_alignment_every, checkpoint=checkpoint, hooks=hooks,
            label=label)
        del group_data
        for r, rec in zip(group, recs):
            rec["restart_batching"] = mode
            if mode == "vmap":
                rec["restarts_per_program"] = len(group)
            if rec["status"] == "ok" and config.save_params:
                rec["params_file"] = params_io.params_filename(r)
            yield r, rec
        checkpoint.remove()        # the group's records are written
