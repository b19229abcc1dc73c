"""DomainBed jobs: config in, ``results.jsonl`` + ``done`` out, resumable.

:func:`run` trains one job; :func:`run_group` trains several jobs of one shape as one program
(``--vmap_trials``, hjax.protocols.domainbed.vmapped). Both go through the same steps: claim
each job's folder (one writer), check what it holds (identity; a finished job is skipped),
restore its checkpoint, build the group's program, and run the one loop
(hjax.protocols.domainbed.loop).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from hjax.data import dataset_info
from hjax.errors import ensure_writable_dir
from hjax.io.results import read_jsonl, write_jsonl
from hjax.protocols.domainbed import identity as identity_lib
from hjax.protocols.domainbed import image_programs, vmapped
from hjax.protocols.domainbed.config import DATASETS, RunConfig, resolve_hparams, validate
from hjax.protocols.domainbed.hparams import seed_hash
from hjax.protocols.domainbed.loop import Member, penalty_note, train_members
from hjax.protocols.domainbed.programs import (example_images, job_program, load_job_data,
                                               make_model)
from hjax.protocols.domainbed.trainer import init_state
from hjax.protocols.runs import checkpoint, processes
from hjax.protocols.runs.claim import FolderClaim
from hjax.protocols.runs.members import stack
from hjax.protocols.runs.reporting import Reporter

_LOG = logging.getLogger("hjax")
RESULTS_NAME = identity_lib.RESULTS_NAME
DONE_NAME = identity_lib.DONE_NAME


def job_hparams(config: RunConfig) -> dict:
    """Validates the config; its resolved hparams."""
    info = dataset_info(config.dataset) if config.dataset in DATASETS else None
    validate(config, len(info.env_names) if info else 0)
    return resolve_hparams(config)


def check_job_folder(config: RunConfig, hp: dict, log: Callable[[str], None]):
    """(identity, None) of a job to train, or (identity, records) of one already done. Done
    only when the done marker is this job's; another job's files are refused (or moved aside
    with --overwrite), never mixed in. The folder must be claimed."""
    identity = identity_lib.job_identity(config, hp)
    # Several processes: only process 0 moves another job's files aside.
    overwrite = config.overwrite and processes.is_writer()
    if identity_lib.check_folder(config.output_dir, identity, overwrite, log):
        log(f"{config.output_dir}: already done")
        return identity, read_jsonl(os.path.join(config.output_dir, RESULTS_NAME))
    return identity, None


def initial_state(config: RunConfig, hp: dict, identity: dict, model, data, log):
    """(state, records): fresh, or restored from the job's checkpoint (identity checked)."""
    init_key = jax.random.key(seed_hash("domainbed-init", config.trial_seed))

    def fresh():
        return init_state(config.algorithm, model, hp, example_images(data),
                          len(data.train_idx), init_key)

    state = fresh()
    restored = checkpoint.load(config.output_dir, state)
    if restored is None:
        return state, []
    state, meta = restored
    state = jax.tree_util.tree_map(jnp.asarray, state)
    writer = processes.is_writer()
    if not identity_lib.check_checkpoint(config.output_dir, meta.get("identity"), identity,
                                         config.overwrite and writer, log):
        return fresh(), []
    records = meta["records"]
    if writer:
        write_jsonl(os.path.join(config.output_dir, RESULTS_NAME), records)
    log(f"{config.output_dir}: resuming at step {int(state.step)}")
    return state, records


def _claims(configs: Sequence[RunConfig], log) -> contextlib.ExitStack:
    stack_ = contextlib.ExitStack()
    try:
        for c in configs:
            ensure_writable_dir(c.output_dir)
            if processes.is_writer():       # one writer: process 0 of a multi-process run
                stack_.enter_context(FolderClaim(c.output_dir, log=log))
    except BaseException:
        stack_.close()
        raise
    return stack_


def run(config: RunConfig, log: Callable[[str], None] = _LOG.info,
        progress=None) -> list[dict]:
    """Trains (or resumes, or skips a finished job); returns the results records.
    ``progress`` (hjax.cli.progress.Progress or None) hears of every step. With
    ``config.distributed`` this process is one of the job's (hjax.protocols.runs.processes):
    process 0 writes the output folder, which every process must see, and the others read
    it after process 0 (:func:`~hjax.protocols.runs.processes.writer_first`)."""
    hp = job_hparams(config)
    processes.initialize(config.distributed, config.coordinator_address,
                         config.num_processes, config.process_id)
    with contextlib.ExitStack() as claims:
        def check():
            claims.enter_context(_claims([config], log))
            return check_job_folder(config, hp, log)
        identity, finished = processes.writer_first(check)
        if finished is not None:
            return finished
        data = load_job_data(config, int(hp["batch_size"]), log)
        model = make_model(config, hp, log)
        state, records = processes.writer_first(
            lambda: initial_state(config, hp, identity, model, data, log))
        m = Member(config, hp, identity, data, records)
        _log_penalty_note(m, log)
        _train([m], [state], model, "auto", log, progress)
        return m.records


def _random_weights_note(config: RunConfig, log) -> None:
    if config.is_image_dataset and not config.pretrained:
        log(f"note: {os.path.basename(os.path.normpath(config.output_dir))}: the ResNet "
            "starts from random weights (no --pretrained): smoke-test numbers, not "
            "comparable with DomainBed's ImageNet-initialised results "
            "(--pretrained=imagenet fetches those weights)")


def _train(members: list[Member], states: list, model, batching: str, log, progress) -> None:
    """Builds the program of ``members`` (one job, or a group of one shape at one step) and
    runs the loop."""
    first = members[0].config
    start = int(states[0].step)
    if first.is_image_dataset:
        _random_weights_note(first, log)
        program = image_programs.image_program(members, model, batching, start, log)
    elif len(members) == 1:
        m = members[0]
        program = job_program(m.config, m.hp, model, m.data, start)
    else:
        program = vmapped.group_program(model, members, batching)
    try:
        train_members(members, program, program.place(stack(states)),
                      Reporter(log=log, warn=log, progress=progress))
    finally:
        program.close()


def _log_penalty_note(m: Member, log) -> None:
    note = penalty_note(m)
    if note:
        log(f"note: {os.path.basename(os.path.normpath(m.config.output_dir))}: {note}")


def run_group(configs: Sequence[RunConfig], log: Callable[[str], None] = _LOG.info,
              batching: str = "auto", progress=None) -> None:
    """Trains the given jobs (resuming or skipping each as :func:`run` would), as one
    program per set of jobs that share a shape and a resume step."""
    batching = vmapped.resolve_trial_batching(batching)
    all_hps = [job_hparams(c) for c in configs]
    with _claims(configs, log):
        todo, hps, identities = [], [], []
        for c, hp in zip(configs, all_hps):
            identity, finished = check_job_folder(c, hp, log)
            if finished is None:
                todo.append(c)
                hps.append(hp)
                identities.append(identity)
        for group in vmapped.group_by_shape(todo, hps):
            _run_shape_group([todo[i] for i in group], [hps[i] for i in group],
                             [identities[i] for i in group], log, batching, progress)


def _run_shape_group(configs, hps, identities, log, batching, progress) -> None:
    # One model for the group; a dropout rate other than 0 in any member switches dropout on
    # (each member then drops at its own rate, traced: algorithms._dropout_key).
    model = make_model(configs[0], {"resnet_dropout": max(float(hp.get("resnet_dropout", 0.0))
                                                          for hp in hps)}, log)
    datas = {}
    for c, hp in zip(configs, hps):     # one data copy per trial seed
        if c.trial_seed not in datas:
            datas[c.trial_seed] = load_job_data(c, int(hp["batch_size"]))
    starts = defaultdict(list)
    for c, hp, identity in zip(configs, hps, identities):
        data = datas[c.trial_seed]
        state, records = initial_state(c, hp, identity, model, data, log)
        m = Member(c, hp, identity, data, records)
        _log_penalty_note(m, log)
        starts[int(state.step)].append((m, state))
    for jobs in starts.values():        # jobs resumed at different steps cannot share a step
        members = [m for m, _ in jobs]
        first = members[0].config
        log(f"vmapped group of {len(members)} job(s) ({batching}): {first.dataset} / "
            f"{first.algorithm} / test envs {list(first.test_envs)}, trial seeds "
            f"{sorted({m.config.trial_seed for m in members})}")
        _train(members, [s for _, s in jobs], model, batching, log, progress)
