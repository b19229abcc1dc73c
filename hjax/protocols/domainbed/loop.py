"""The one host loop of the DomainBed protocol: the members of a group of jobs (a single job
is a group of one) stepped together by one :class:`~hjax.protocols.domainbed.programs.MemberProgram`.

Steps run ``start .. steps-1``; at every step with ``step % checkpoint_freq == 0`` and at the
last one, every environment's in and out split is evaluated, each member appends one JSON line
to its ``results.jsonl`` (rewritten atomically) and writes its checkpoint (the records so far
in it, so a kill between the two cannot leave extra lines). A member whose logged values are
not finite is stopped alone and marked diverged; the others go on. ``done`` marks a finished
job. A killed job restarted with the same config resumes from its last checkpoint and ends
with the same results as an uninterrupted one (timings aside). Several processes
(``--distributed``): all step, process 0 alone writes.
"""

from __future__ import annotations

import math
import os
import time
from typing import NamedTuple

import jax
import numpy as np

from hjax.data.sharding import local_replica
from hjax.io.results import write_jsonl
from hjax.protocols.domainbed import identity as identity_lib
from hjax.protocols.domainbed.config import RunConfig
from hjax.protocols.runs import checkpoint, processes
from hjax.protocols.runs.members import member
from hjax.protocols.runs.records import stamped
from hjax.protocols.runs.reporting import Reporter

RESULTS_NAME = identity_lib.RESULTS_NAME

# Algorithms whose penalty is identically 0 with one training environment (nothing to align):
# a leave-one-domain-out pair run of a 3-env dataset trains them as plain ERM.
ZERO_WITH_ONE_ENV = ("vrex", "coral", "fishr", "iga", "groupdro", "hgp", "hutchinson",
                     "exact_diag")


class Member(NamedTuple):
    """One job of a group: its config, resolved hparams, run identity, data (for its epoch
    count and environments) and the records written so far."""
    config: RunConfig
    hp: dict
    identity: dict
    data: object
    records: list


def inactive_penalty_note(algorithm: str, hp: dict, steps: int, num_train_envs: int
                          ) -> str | None:
    """Why this job's penalty never acts as configured (DomainBed runs such jobs silently),
    or None. Logged at the start and stored as ``penalty_note`` in every record."""
    if num_train_envs < 2 and algorithm in ZERO_WITH_ONE_ENV:
        return (f"{algorithm} with one training environment: its penalty is identically 0, "
                "so this job trains ERM")
    if algorithm == "fishr" and hp["fishr_penalty_anneal_iters"] >= steps:
        return (f"fishr_penalty_anneal_iters={hp['fishr_penalty_anneal_iters']} >= steps="
                f"{steps}: the penalty weight stays 0, so this job trains ERM")
    for name in ("irm", "vrex"):
        if algorithm == name and hp[f"{name}_penalty_anneal_iters"] >= steps:
            return (f"{name}_penalty_anneal_iters={hp[f'{name}_penalty_anneal_iters']} >= "
                    f"steps={steps}: {name}_lambda={hp[f'{name}_lambda']:g} is never used "
                    "(the penalty weight stays 1)")
    return None


def penalty_note(m: Member) -> str | None:
    return inactive_penalty_note(m.config.algorithm, m.hp, m.config.steps,
                                 len(m.data.train_idx))


def mean_logs(window: list[dict]) -> dict:
    return {k: float(np.mean([w[k] for w in window])) for k in window[0]} if window else {}


def first_non_finite(logs: dict) -> str | None:
    """The name of a non-finite logged value (the loss first), or None."""
    for k in sorted(logs, key=lambda k: k != "loss"):
        if not math.isfinite(logs[k]):
            return k
    return None


def is_checkpoint_step(config: RunConfig, step: int) -> bool:
    return step % config.checkpoint_freq == 0 or step == config.steps - 1


def checkpoint_record(m: Member, step: int, window: list, step_time: float,
                      accuracy) -> dict:
    """One results line; ``accuracy(split_kind, env) -> float`` of the current params."""
    data = m.data
    record = {"step": step, "epoch": step / data.steps_per_epoch, **mean_logs(window)}
    for i in range(data.num_envs):
        record[f"env{i}_in_acc"] = accuracy("in", i)
        record[f"env{i}_out_acc"] = accuracy("out", i)
    record.update(step_time=step_time, hparams=m.hp, args=m.config.identity())
    note = penalty_note(m)
    if note:
        record["penalty_note"] = note
    return stamped(record, m.identity)


def save_checkpoint(m: Member, state, log) -> None:
    """Results so far, the checkpoint, one log line: by process 0 alone (several
    processes)."""
    if not processes.is_writer():
        return
    write_jsonl(os.path.join(m.config.output_dir, RESULTS_NAME), m.records)
    checkpoint.save(m.config.output_dir, int(state.step), state,
                    {"identity": m.identity, "records": m.records})
    record = m.records[-1]
    log(f"step {record['step']}: " + " ".join(
        f"{k}={record[k]:.4g}" for k in record if k.endswith("_acc") or k == "loss"))


def job_name(config: RunConfig) -> str:
    return os.path.basename(os.path.normpath(config.output_dir))


def _start_progress(members: list[Member], start: int, progress) -> None:
    if progress is None:
        return
    first = members[0].config
    per_step = int(members[0].hp["batch_size"]) * len(members[0].data.train_idx) * len(members)
    unit = "images" if first.is_image_dataset else "examples"
    who = job_name(first) if len(members) == 1 else f"group of {len(members)} jobs"
    progress.header(f"{who}: {first.dataset} / {first.algorithm}, test envs "
                    f"{list(first.test_envs)}, steps {start}..{first.steps - 1}, "
                    f"{per_step} {unit} per step (ETA after compilation)")
    progress.begin(first.steps, per_step=per_step, unit=unit)


def train_members(members: list[Member], program, states, reporter: Reporter) -> None:
    """Steps the stacked ``states`` of ``members`` (all at one step) to their last step."""
    log = reporter.log
    first = members[0].config
    size = len(members)
    tag = (lambda m: "") if size == 1 else (lambda m: f"[{job_name(m.config)}] ")
    progress = reporter.progress
    alive = np.ones(size, bool)
    windows = [[] for _ in members]
    eval_times = []
    window_start, window_steps = time.time(), 0
    start = int(np.asarray(jax.device_get(states.step)).reshape(-1)[0])
    _start_progress(members, start, reporter.progress)
    for step in range(start, first.steps):
        states, logs = program.step(states)
        logs = jax.device_get(logs)
        window_steps += 1
        for t in np.flatnonzero(alive):
            row = {k: float(v[t]) for k, v in logs.items()}
            bad = first_non_finite(row)
            if bad is not None:     # the other members go on; this one's results stop here
                alive[t] = False
                m = members[t]
                log(f"{m.config.output_dir}: non-finite {bad} at step {step}; job stopped "
                    "and marked diverged (results.jsonl keeps the checkpoints before it)")
                if processes.is_writer():
                    identity_lib.write_done(m.config.output_dir, m.identity,
                                            diverged_step=step)
            else:
                windows[t].append(row)
        if not alive.any():
            return
        if progress is not None:
            progress.step(step, float(np.mean(logs["loss"][alive])))
        if is_checkpoint_step(first, step):
            # Wall time of one step of the whole group (all its members at once).
            step_time = (time.time() - window_start) / window_steps
            t_eval = time.perf_counter()
            accs = program.accuracies(states.params)
            for t in np.flatnonzero(alive):
                m = members[t]
                m.records.append(checkpoint_record(
                    m, step, windows[t], step_time,
                    lambda kind, i, t=t: float(accs[kind, i][t])))
                if size > 1:
                    m.records[-1]["vmap_group_size"] = size
                save_checkpoint(m, member(local_replica(states), t),
                                lambda msg, m=m: log(f"{tag(m)}{msg}"))
                windows[t] = []
            window_start, window_steps = time.time(), 0
            eval_times.append(time.perf_counter() - t_eval)
            if progress is not None:
                # Evaluations are not steps: left out of the step rate, and the ones still
                # due (at the fastest one's time: the first one compiles) added to the ETA.
                progress.rebase()
                left = sum(is_checkpoint_step(first, s) for s in range(step + 1, first.steps))
                progress.other_work(left * min(eval_times))
        if first.stop_after_step is not None and step >= first.stop_after_step:
            log(f"stopping after step {step} (--stop_after_step)")
            return
    if processes.is_writer():
        for t in np.flatnonzero(alive):
            identity_lib.write_done(members[t].config.output_dir, members[t].identity)
