"""The job list of a DomainBed sweep: a pure function of the sweep's settings.

For every trial seed, dataset, algorithm, test-env set and hparams seed, one job. Test-env
sets are every single environment, plus (``with_pairs``) every pair, which the
leave-one-domain-out selection needs. Each job's directory name is readable and ends in a
hash of its full arguments, so changing any setting gives a new directory. ``launch`` runs
jobs one after another; ``hjax.protocols.domainbed.launchers`` adds parallel and submitit launchers.

A :class:`VmapGroup` bundles jobs of one shape that run as one compiled program
(``sweep.py --vmap_trials``, :mod:`hjax.protocols.domainbed.vmapped`); launchers treat it as one unit
whose directory (logs, the group's job list) is under ``vmap_groups/`` and which is done when
all its jobs are.

A sweep folder holds ``sweep.json``: the settings of every launch into it
(:func:`record_launch`), so that ``status`` and ``delete_incomplete`` rebuild the job list from
the folder rather than from flags that may not be repeated exactly.
"""

from __future__ import annotations

import logging
import hashlib
import itertools
import json
import os
from typing import NamedTuple, Sequence

from hjax.data import dataset_info
from hjax.errors import ConfigError

_LOG = logging.getLogger("hjax")


class Job(NamedTuple):
    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    hparams_seed: int
    trial_seed: int
    extra: tuple[tuple[str, str], ...]     # further train.py flags, sorted (name, value)

    def flags(self) -> list[str]:
        return ([f"--dataset={self.dataset}", f"--algorithm={self.algorithm}",
                 f"--test_envs={','.join(map(str, self.test_envs))}",
                 f"--hparams_seed={self.hparams_seed}", f"--trial_seed={self.trial_seed}"]
                + [f"--{k}={v}" for k, v in self.extra])

    def dirname(self) -> str:
        digest = hashlib.sha256(json.dumps(self, sort_keys=True).encode()).hexdigest()[:8]
        envs = "_".join(map(str, self.test_envs))
        return (f"{self.dataset}-{self.algorithm}-te{envs}-h{self.hparams_seed}"
                f"-t{self.trial_seed}-{digest}")


GROUPS_DIR = "vmap_groups"


class VmapGroup(NamedTuple):
    jobs: tuple[Job, ...]
    batching: str = "auto"          # hjax.protocols.domainbed.vmapped.BATCHINGS

    def dirname(self) -> str:
        # The jobs only: the same group run with another batching is the same group.
        digest = hashlib.sha256(json.dumps(self.jobs, sort_keys=True).encode()).hexdigest()[:8]
        j = self.jobs[0]
        return f"{GROUPS_DIR}/{j.dataset}-{j.algorithm}-x{len(self.jobs)}-{digest}"

    def spec(self, output_root: str) -> dict:
        """What ``train.py --vmap_jobs`` reads: the jobs and their directories."""
        return {"batching": self.batching, "jobs": [dict(j._asdict(), test_envs=list(j.test_envs),
                              extra=[list(e) for e in j.extra],
                              output_dir=os.path.join(output_root, j.dirname()))
                         for j in self.jobs]}


def job_from_spec(entry: dict) -> tuple[Job, str]:
    """(job, output_dir) of one entry of :meth:`VmapGroup.spec`."""
    job = Job(entry["dataset"], entry["algorithm"], tuple(entry["test_envs"]),
              int(entry["hparams_seed"]), int(entry["trial_seed"]),
              tuple(tuple(e) for e in entry["extra"]))
    return job, entry["output_dir"]


SWEEP_FILE = "sweep.json"
# Folders of a sweep folder that are not job folders.
NON_JOB_DIRS = (GROUPS_DIR, "submitit")


def saved_launches(output_root: str) -> list[dict] | None:
    """The settings of each launch recorded in ``<output_root>/sweep.json`` (None: no file)."""
    path = os.path.join(output_root, SWEEP_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            launches = json.load(f)["launches"]
        if not isinstance(launches, list) or not all(isinstance(x, dict) for x in launches):
            raise TypeError
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a sweep settings file ({type(e).__name__}); move it "
                          f"aside and give the launch's flags") from None
    return launches


def record_launch(output_root: str, settings: dict) -> None:
    """Adds a launch's settings (JSON values) to ``<output_root>/sweep.json`` (atomic)."""
    from hjax.io.results import write_atomic
    launches = saved_launches(output_root) or []
    if settings not in launches:
        launches.append(settings)
    write_atomic(os.path.join(output_root, SWEEP_FILE),
                 json.dumps({"launches": launches}, indent=1, sort_keys=True) + "\n")


def select_launches(launches: list[dict], given: dict) -> list[dict]:
    """The saved launches that agree with every ``given`` setting; ConfigError (one line,
    naming the settings that differ from the last launch) when none does."""
    chosen = [s for s in launches if all(s.get(k) == v for k, v in given.items())]
    if chosen:
        return chosen
    last = launches[-1]
    diff = ", ".join(f"--{k}: launched with {_flag_value(last.get(k))}, given "
                     f"{_flag_value(v)}" for k, v in sorted(given.items()) if last.get(k) != v)
    raise ConfigError(f"these flags contradict the sweep's saved settings ({SWEEP_FILE}): "
                      f"{diff}; leave them out to use the saved ones")


def _flag_value(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def other_job_folders(jobs: Sequence[Job], output_root: str) -> list[str]:
    """Folders of ``output_root`` that hold a job's files but are not one of ``jobs``."""
    from hjax.protocols.domainbed.identity import JOB_FILES
    if not os.path.isdir(output_root):
        return []
    names = {j.dirname() for j in jobs}
    return sorted(d for d in os.listdir(output_root)
                  if d not in names and d not in NON_JOB_DIRS
                  and any(os.path.lexists(os.path.join(output_root, d, f)) for f in JOB_FILES))


def test_env_sets(num_envs: int, with_pairs: bool) -> list[tuple[int, ...]]:
    sets = [(i,) for i in range(num_envs)]
    if with_pairs:
        sets += list(itertools.combinations(range(num_envs), 2))
    return sets


def make_jobs(datasets: Sequence[str], algorithms: Sequence[str], n_hparams: int,
              n_trials: int, n_hparams_from: int = 0, with_pairs: bool = False,
              extra: dict | None = None) -> list[Job]:
    extra_items = tuple(sorted((k, str(v)) for k, v in (extra or {}).items()))
    jobs = []
    for trial in range(n_trials):
        for dataset in datasets:
            n_envs = len(dataset_info(dataset).env_names)
            for algorithm in algorithms:
                for envs in test_env_sets(n_envs, with_pairs):
                    for hp in range(n_hparams_from, n_hparams):
                        jobs.append(Job(dataset, algorithm, envs, hp, trial, extra_items))
    return jobs


def job_state(output_root: str, job: Job | VmapGroup) -> str:
    """"done" (a done marker of this job's run identity), "running" (not done, and its
    folder claimed by a live process: hjax.protocols.runs.claim), "incomplete" (a directory
    without a done marker: unfinished, or holding another identity, which
    ``domainbed_train`` then refuses unless --overwrite) or "not_launched".

    A plain-text done marker of an earlier version counts as done when the records of its
    results.jsonl carry this job's ``args`` and ``hparams``
    (:func:`hjax.protocols.domainbed.identity.legacy_done_matches`)."""
    if isinstance(job, VmapGroup):
        states = {job_state(output_root, j) for j in job.jobs}
        if "running" in states:
            return "running"
        return (states.pop() if len(states) == 1 else "incomplete")
    from hjax.protocols.domainbed.identity import job_claimed, job_is_done
    path = os.path.join(output_root, job.dirname())
    if job_is_done(job, path):
        return "done"
    if not os.path.isdir(path):
        return "not_launched"
    return "running" if job_claimed(path) else "incomplete"


# The states a sweep leaves alone: finished, or being run by another live process (a job
# re-launched while the first launch still runs it, a re-submitted Slurm array).
SKIPPED_STATES = ("done", "running")


def status_counts(jobs: Sequence[Job], output_root: str) -> dict[str, int]:
    counts = {"done": 0, "incomplete": 0, "not_launched": 0}
    for job in jobs:
        state = job_state(output_root, job)
        counts[state] = counts.get(state, 0) + 1      # "running" only when there are some
    return counts


def launch(jobs: Sequence[Job], output_root: str, runner, log=_LOG.info,
           interrupted=lambda code: False) -> int:
    """Runs every job not done yet, in order, with ``runner(job, output_dir) -> exit code``.

    Returns the number of failed jobs; a failure does not stop the sweep. A job interrupted
    (``interrupted(code)``, or KeyboardInterrupt here) is logged as such and stops it:
    KeyboardInterrupt is raised.
    """
    failed = 0
    for i, job in enumerate(jobs):
        state = job_state(output_root, job)
        if state == "done":
            continue
        if state == "running":
            log(f"[{i + 1}/{len(jobs)}] {job.dirname()}: being run by another process "
                "(its folder is claimed); skipped")
            continue
        log(f"[{i + 1}/{len(jobs)}] {job.dirname()}")
        try:
            code = runner(job, os.path.join(output_root, job.dirname()))
        except KeyboardInterrupt:
            code = None
        if code is None or interrupted(code):
            log(f"  {job.dirname()} interrupted (resumes at the next launch)")
            raise KeyboardInterrupt
        if code != 0:
            failed += 1
            log(f"  {job.dirname()} failed")
    return failed


def delete_incomplete(jobs: Sequence[Job], output_root: str) -> int:
    """Removes the directories of this sweep's jobs that have no done marker. A directory
    with a done marker of another run identity is kept: it holds finished results, which
    only ``domainbed_train --overwrite`` moves aside."""
    import shutil
    deleted = 0
    for job in jobs:
        path = os.path.join(output_root, job.dirname())
        if (job_state(output_root, job) == "incomplete"
                and not os.path.lexists(os.path.join(path, "done"))):
            shutil.rmtree(os.path.join(output_root, job.dirname()))
            deleted += 1
    return deleted
