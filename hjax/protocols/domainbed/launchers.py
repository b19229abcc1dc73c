"""How a sweep's jobs are run: one ``python -m hjax.cli.domainbed_train`` process per job.

- ``local``: one job after another, each in a subprocess (the default).
- ``local_parallel``: up to ``max_workers`` subprocesses at once; each job's output goes to
  ``<job dir>/train.log`` so that concurrent jobs do not interleave.
- ``submitit``: a Slurm job array through ``submitit`` (partition, time limit, GPUs, CPUs and
  memory per job; ``max_workers`` caps how many array tasks run at once).
- ``submitit_local``: the same code path on submitit's ``LocalExecutor`` (this machine, in
  waves of ``max_workers`` jobs); this is how the submitit launcher is tested.

Each unit is a job or, with ``sweep.py --vmap_trials``, a ``VmapGroup`` of jobs that one
``train.py --vmap_jobs`` process trains as one vmapped program.

Every launcher first drops the jobs that are already done (done marker) and, since
``train.py`` resumes from its checkpoint and does nothing for a finished job, re-launching a
sweep is always safe. Each launcher returns the number of failed jobs (for ``submitit`` without
waiting: 0, the jobs are only submitted).

Ctrl-C: the local launchers run each job in its own process group, so the terminal's SIGINT
reaches the launcher only, which passes exactly one SIGINT to every running job (each then
saves nothing more and exits 130, resumable), starts no further job, logs the jobs it stopped
as interrupted (not failed) and raises KeyboardInterrupt once they have exited.
"""

from __future__ import annotations

import functools
import logging
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Sequence

from hjax.errors import ConfigError
from hjax.protocols.domainbed import jobs as jobs_lib

_LOG = logging.getLogger("hjax")

LAUNCHERS = ("local", "local_parallel", "submitit", "submitit_local")
# Jobs run the installed package's module, so a sweep works without the repository checkout.
TRAIN_MODULE = ["-m", "hjax.cli.domainbed_train"]
LOG_NAME = "train.log"

Log = Callable[[str], None]


def train_command(job: jobs_lib.Job | jobs_lib.VmapGroup, output_dir: str,
                  overwrite: bool = False) -> list[str]:
    """The train.py command of a job, or of a vmapped group (whose job list it writes to
    ``<output_dir>/jobs.json``; the output root is two levels up). ``overwrite``: the job
    moves another job's files in its folder aside instead of refusing (``--overwrite``)."""
    if isinstance(job, jobs_lib.VmapGroup):
        from hjax.io.results import write_atomic
        os.makedirs(output_dir, exist_ok=True)
        root = os.path.dirname(os.path.dirname(os.path.abspath(output_dir)))
        spec = os.path.join(output_dir, "jobs.json")
        write_atomic(spec, json.dumps(dict(job.spec(root), overwrite=overwrite), indent=1)
                     + "\n")
        return [sys.executable, *TRAIN_MODULE, f"--vmap_jobs={spec}"]
    return [sys.executable, *TRAIN_MODULE, *job.flags(), f"--output_dir={output_dir}",
            *(["--overwrite"] if overwrite else [])]


def _runner(runner, overwrite: bool):
    """``runner`` passing ``overwrite=True`` on (the runners here accept it)."""
    return functools.partial(runner, overwrite=True) if overwrite else runner


def pending(jobs: Sequence[jobs_lib.Job], output_root: str) -> list[jobs_lib.Job]:
    """The jobs neither done nor being run by another live process, in order."""
    return [j for j in jobs if jobs_lib.job_state(output_root, j) not in jobs_lib.SKIPPED_STATES]


# A job's exit codes that mean it was interrupted (Ctrl-C: 130 from its handler, or killed by
# SIGINT before it installed one), not that it failed.
INTERRUPTED_CODES = (130, -signal.SIGINT)


def was_interrupted(code) -> bool:
    return code in INTERRUPTED_CODES


class Children:
    """The job processes this launcher runs, each in its own process group, so that Ctrl-C
    reaches them once, through :meth:`interrupt`, and none starts after it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopping = threading.Event()

    def run(self, command: list[str], **popen_kwargs) -> int:
        """The command's exit code (``-SIGINT`` without starting it once stopping)."""
        with self._lock:
            if self.stopping.is_set():
                return -signal.SIGINT
            proc = subprocess.Popen(command, process_group=0, **popen_kwargs)
            self._running.add(proc)
        try:
            return proc.wait()
        except KeyboardInterrupt:              # the main thread's wait (``local``)
            self.interrupt()
            _wait_quietly(proc)
            raise
        finally:
            with self._lock:
                self._running.discard(proc)

    def reset(self) -> None:
        """A new launch: jobs may start again."""
        self.stopping.clear()

    def interrupt(self) -> None:
        """SIGINT, once, to every running job; none starts afterwards."""
        with self._lock:
            first = not self.stopping.is_set()
            self.stopping.set()
            running = list(self._running)
        if first:
            for proc in running:
                try:
                    proc.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass


    def kill(self) -> None:
        with self._lock:
            running = list(self._running)
        for proc in running:
            proc.kill()


def _wait_quietly(proc: subprocess.Popen) -> None:
    """Waits for an interrupted job to exit; a second Ctrl-C stops waiting (it is killed)."""
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()


CHILDREN = Children()


def run_subprocess(job: jobs_lib.Job, output_dir: str, overwrite: bool = False) -> int:
    """Runs one job with its output on this process's stdout / stderr."""
    return CHILDREN.run(train_command(job, output_dir, overwrite))


def run_subprocess_logged(job: jobs_lib.Job, output_dir: str, overwrite: bool = False) -> int:
    """Runs one job with its output appended to ``<output_dir>/train.log``."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, LOG_NAME), "a") as log_file:
        return CHILDREN.run(train_command(job, output_dir, overwrite), stdout=log_file,
                            stderr=subprocess.STDOUT)


def launch_local(jobs, output_root: str, log: Log = _LOG.info, runner=run_subprocess,
                 overwrite: bool = False) -> int:
    CHILDREN.reset()
    return jobs_lib.launch(jobs, output_root, _runner(runner, overwrite), log=log,
                           interrupted=was_interrupted)


def launch_local_parallel(jobs, output_root: str, max_workers: int = 2, log: Log = _LOG.info,
                          runner=run_subprocess_logged, overwrite: bool = False) -> int:
    """Up to ``max_workers`` jobs at once; returns the number of failed jobs."""
    todo = pending(jobs, output_root)
    runner = _runner(runner, overwrite)
    if not todo:
        return 0
    CHILDREN.reset()

    def one(i_job):
        i, job = i_job
        if CHILDREN.stopping.is_set():
            return None                                       # never started
        out = os.path.join(output_root, job.dirname())
        log(f"[{i + 1}/{len(todo)}] start {job.dirname()}")
        code = runner(job, out)
        if was_interrupted(code) or (code != 0 and CHILDREN.stopping.is_set()):
            CHILDREN.interrupt()              # one job interrupted: the sweep stops, as local
            log(f"[{i + 1}/{len(todo)}] interrupted {job.dirname()} (resumes at the next "
                f"launch)")
            return None
        log(f"[{i + 1}/{len(todo)}] {'done' if code == 0 else 'FAILED'} {job.dirname()}"
            + ("" if code == 0 else f" (exit {code}; see {os.path.join(out, LOG_NAME)})"))
        return code

    pool = ThreadPoolExecutor(max_workers=max(1, max_workers))
    futures = [pool.submit(one, i_job) for i_job in enumerate(todo)]
    try:
        wait(futures)
    except KeyboardInterrupt:
        CHILDREN.interrupt()
        pool.shutdown(wait=False, cancel_futures=True)
        _wait_for(futures)
        raise
    finally:
        pool.shutdown(wait=False)
    codes = [f.result() for f in futures]
    if any(c is None for c in codes):          # a job interrupted from outside (kill -INT)
        raise KeyboardInterrupt
    return sum(code != 0 for code in codes)


def _wait_for(futures) -> None:
    """Waits for the interrupted jobs' threads; a second Ctrl-C kills the jobs instead."""
    try:
        wait([f for f in futures if not f.cancelled()])
    except KeyboardInterrupt:
        CHILDREN.kill()
        wait([f for f in futures if not f.cancelled()])


def train_job(command: list[str]) -> None:
    """What a submitit job runs (module-level, so it pickles by reference)."""
    code = subprocess.run(command).returncode
    if code != 0:
        raise RuntimeError(f"train.py exited with {code}: {' '.join(command)}")


def make_submitit_executor(folder: str, local: bool, *, partition: str | None = None,
                           account: str | None = None, qos: str | None = None,
                           timeout_min: int = 720, gpus_per_job: int = 0,
                           cpus_per_job: int | None = None, mem_gb: float | None = None,
                           array_parallelism: int | None = None, name: str = "hjax"):
    import submitit
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="local" if local else "slurm")
    except RuntimeError as e:        # submitit: 'Could not detect "srun"' off a Slurm cluster
        raise ConfigError(f"--launcher=submitit: {str(e).strip()} (use --launcher=submitit_local "
                         "or local_parallel on a single machine)") from None
    params = dict(name=name, timeout_min=int(timeout_min), tasks_per_node=1, nodes=1)
    if gpus_per_job:
        params["gpus_per_node"] = int(gpus_per_job)
    if cpus_per_job is not None:
        params["cpus_per_task"] = int(cpus_per_job)
    if mem_gb is not None:
        params["mem_gb"] = mem_gb
    if not local:
        slurm = dict(slurm_partition=partition, slurm_account=account, slurm_qos=qos,
                     slurm_array_parallelism=array_parallelism)
        params.update({k: v for k, v in slurm.items() if v is not None})
    executor.update_parameters(**params)
    return executor


def launch_submitit(jobs, output_root: str, *, local: bool = False, folder: str | None = None,
                    max_workers: int | None = None, wait: bool = True, log: Log = _LOG.info,
                    overwrite: bool = False, **executor_kwargs) -> int:
    """Submits the jobs not done yet; with ``wait``, returns the number that failed.

    On Slurm they go as one job array (``max_workers`` = array parallelism, unlimited when
    None); locally, in waves of ``max_workers`` (default 2), since submitit's LocalExecutor
    starts every submitted job at once (so locally it always waits).
    """
    todo = pending(jobs, output_root)
    if not todo:
        return 0
    folder = folder or os.path.join(output_root, "submitit")
    if local:
        wave = max(1, max_workers or 2)
    else:
        wave = len(todo)
        if max_workers:
            executor_kwargs["array_parallelism"] = max_workers
    executor = make_submitit_executor(folder, local, **executor_kwargs)
    failed = 0
    for start in range(0, len(todo), wave):
        batch = todo[start:start + wave]
        commands = [train_command(j, os.path.join(output_root, j.dirname()), overwrite)
                    for j in batch]
        submitted = executor.map_array(train_job, commands)
        for job, sub in zip(batch, submitted):
            log(f"submitted {job.dirname()} as {sub.job_id}")
        if not wait and not local:      # a local wave must end before the next starts
            continue
        for job, sub in zip(batch, submitted):
            try:
                sub.result()
            except Exception as e:  # noqa: BLE001 - a failed job must not stop the sweep
                failed += 1
                first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                log(f"  {job.dirname()} FAILED ({first}); logs: {sub.paths.folder}")
    if not wait and not local:
        log(f"{len(todo)} jobs submitted; logs under {folder}; run `status` to follow them")
    return failed
