"""``--distributed``: the ColoredMNIST and DomainBed commands as two processes on 127.0.0.1
(JAX's distributed runtime, gloo CPU collectives, simulated host devices per process) write
the records that one process writes, process 0 alone writing and speaking; bad distributed
flags are one line and exit 2.

The one-process references run in this process (the ``cli`` fixture); the two-process runs
are subprocesses started as a shell would (SIGINT default), killed if they outlive the
timeout. XLA's cheap compile mode (plumbing: tests/conftest.py).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fast_compile

COLORED_MNIST = ["--dataset=colored_mnist", "--method=hgp", "--fake_data", "--restarts=2",
                 "--steps=4", "--hidden_dim=16", "--log_every=2", "--progress=off",
                 "--checkpoint_every=2"]     # process 0 saves a checkpoint mid-group
DOMAINBED = ["--dataset=domainbed_colored_mnist", "--algorithm=erm", "--test_envs=0",
             "--fake_data", "--steps=3", "--checkpoint_freq=2", "--width_multiplier=0.125",
             "--batch_size=8", "--progress=off"]
# Two processes against one: the same steps, except that examples split over devices sum in
# another order (ColoredMNIST); float32 rounding.
TOLERANCE = 1e-5
# What differs between the runs by design: timings, the device count, provenance.
NOT_COMPARED = {"provenance", "step_time", "step_time_s", "compile_time_s", "num_devices"}
TIMEOUT_S = 120


def _as_from_a_shell() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """``python -m hjax.cli.<module> ARGS --distributed ...`` as ``num_processes`` processes
    on 127.0.0.1, started at once (the test works meanwhile); :meth:`wait` gives each one's
    (returncode, stdout, stderr). All are killed when one outlives :data:`TIMEOUT_S`, or
    when the ``with`` block ends with them still running."""

    def __init__(self, module: str, args: list[str], devices_per_process: int = 1,
                 num_processes: int = 2):
        address = f"127.0.0.1:{_free_port()}"
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
            os.environ.get("XLA_FLAGS", "") +
            f" --xla_force_host_platform_device_count={devices_per_process}").strip())
        self.deadline = time.time() + TIMEOUT_S
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", f"hjax.cli.{module}", *args, "--distributed",
             f"--coordinator_address={address}", f"--num_processes={num_processes}",
             f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
            preexec_fn=_as_from_a_shell) for i in range(num_processes)]

    def wait(self) -> list[tuple[int, str, str]]:
        results = []
        try:
            for p in self.procs:
                out, err = p.communicate(timeout=max(1.0, self.deadline - time.time()))
                results.append((p.returncode, out, err))
        except subprocess.TimeoutExpired:
            self.kill()
            tails = [p.communicate()[1][-1500:] for p in self.procs]
            raise AssertionError(f"no exit within {TIMEOUT_S} s:\n" + "\n---\n".join(tails))
        return results

    def kill(self) -> None:
        for p in self.procs:          # never leave one waiting for the other
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        for p in self.procs:
            p.communicate()


def records(folder: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def differences(a, b, path: str = "") -> tuple[list[str], float]:
    """(paths whose values differ beyond :data:`TOLERANCE` or in kind, the largest absolute
    difference of the numbers) of two JSON values, :data:`NOT_COMPARED` keys left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - NOT_COMPARED
        found, worst = [], 0.0
        for k in sorted(keys):
            if k not in a or k not in b:
                found.append(f"{path}/{k} (in one only)")
                continue
            f, w = differences(a[k], b[k], f"{path}/{k}")
            found, worst = found + f, max(worst, w)
        return found, worst
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        found, worst = [], 0.0
        for i, (x, y) in enumerate(zip(a, b)):
            f, w = differences(x, y, f"{path}[{i}]")
            found, worst = found + f, max(worst, w)
        return found, worst
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return [], 0.0
        gap = abs(a - b)
        return ([f"{path}: {a} vs {b}"] if gap > TOLERANCE else []), gap
    return ([] if a == b else [f"{path}: {a!r} vs {b!r}"]), 0.0


def assert_same_records(two: pathlib.Path, one: pathlib.Path) -> None:
    got, want = records(two), records(one)
    assert [r["run_id"] for r in got] == [r["run_id"] for r in want]
    assert [r["identity"] for r in got] == [r["identity"] for r in want]
    found, worst = differences(got, want)
    assert not found, found[:10]
    print(f"{two.name}: max |2 processes - 1 process| = {worst:.3g}")


def written_by(record: dict) -> tuple[int, int]:
    """(process index, process count) of the process that wrote ``record``."""
    return record["provenance"]["process_index"], record["provenance"]["process_count"]


def assert_process_zero_alone_wrote(results, two: pathlib.Path, one: pathlib.Path) -> None:
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    (_, out0, _), (_, out1, err1) = results
    assert "results.jsonl" in out0 or "step " in out0         # process 0 speaks
    # Process 1 does not (gloo's C++ runtime prints its connection line on each process).
    assert [line for line in out1.splitlines() if not line.startswith("[Gloo]")] == [], out1
    assert "Traceback" not in err1 and "warning" not in err1, err1[-2000:]
    # Process 1 left nothing of its own: the folder holds what one process leaves.
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))


def two_processes_against_one(cli, module: str, args: list[str], two: pathlib.Path,
                              one: pathlib.Path, devices_per_process: int = 1) -> str:
    """Runs ``module ARGS`` as two processes into ``two`` and, meanwhile, as this one into
    ``one``; checks that process 0 alone wrote, the same records; process 0's stdout."""
    with Processes(module, [*args, f"--output_dir={two}"], devices_per_process) as processes:
        assert cli(module, *args, f"--output_dir={one}").returncode == 0
        results = processes.wait()
    assert_process_zero_alone_wrote(results, two, one)
    assert_same_records(two, one)
    return results[0][1]


def test_colored_mnist_as_two_processes_writes_the_one_process_records(tmp_path, cli):
    one, two = tmp_path / "one", tmp_path / "two"
    out0 = two_processes_against_one(cli, "colored_mnist", COLORED_MNIST, two, one)
    assert "2 cpu device(s) of 2 processes" in out0
    assert [r["restart"] for r in records(two)] == [0, 1]
    assert [written_by(r) for r in records(two)] == [(0, 2), (0, 2)]
    assert (two / "summary.md").read_text() == (one / "summary.md").read_text()


def test_domainbed_job_as_two_processes_resumes_and_writes_the_one_process_records(
        tmp_path, cli):
    # Two devices per process: the job runs on one of each process's (its step replicated).
    one, two = tmp_path / "one", tmp_path / "two"
    # The two processes resume a job killed after step 0: each restores the checkpoint.
    stopped = cli("domainbed_train", *DOMAINBED, f"--output_dir={two}", "--stop_after_step=0")
    assert stopped.returncode == 0 and len(records(two)) == 1
    out0 = two_processes_against_one(cli, "domainbed_train", DOMAINBED, two, one,
                                     devices_per_process=2)
    assert "resuming at step 1" in out0
    assert [r["step"] for r in records(two)] == [0, 2]
    assert [written_by(r) for r in records(two)] == [(0, 1), (0, 2)]   # resumed at step 1
    assert json.loads((two / "done").read_text())["status"] == "done"


def test_distributed_without_a_coordinator_off_a_cluster_is_one_line_and_exit_2(tmp_path):
    # A subprocess: JAX joins processes only before its first use, which this one is past.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR"))}
    result = subprocess.run(
        [sys.executable, "-m", "hjax.cli.colored_mnist", *COLORED_MNIST,
         f"--output_dir={tmp_path / 'out'}", "--distributed"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: --distributed found no TPU, Slurm or MPI cluster")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("module,args,message", [
    ("colored_mnist", ["--distributed", "--coordinator_address=127.0.0.1:1",
                       "--num_processes=2", "--process_id=2"],
     "--process_id=2 must be in 0..1 (--num_processes=2)"),
    ("domainbed_train", ["--process_id=1"], "--process_id is for --distributed runs only"),
    ("domainbed_train", ["--distributed", "--coordinator_address=localhost",
                         "--num_processes=2", "--process_id=0"], "must be HOST:PORT"),
])
def test_bad_distributed_flags_are_one_line_and_exit_2(tmp_path, cli, module, args, message):
    common = COLORED_MNIST if module == "colored_mnist" else DOMAINBED
    result = cli(module, *common, f"--output_dir={tmp_path / 'out'}", *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr
