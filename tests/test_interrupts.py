"""Ctrl-C (SIGINT to the process group, as a terminal sends it) on an image job and on a sweep:
exit 130 with one line, no tracebacks (the input pipeline's worker processes included), no
leaked shared memory, and a sweep's stopped jobs reported as interrupted, not failed.

Subprocesses in their own session, signalled once their first checkpoint is complete (between
checkpoints, as most Ctrl-Cs land); XLA's cheap compile mode (plumbing: see tests/conftest.py).
"""

from __future__ import annotations

import glob
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from hjax.data.images import IMAGE_DATASETS

from image_tree import make_tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fast_compile


def _checkpointed(job_glob: str) -> bool:
    """Whether a job folder matching ``job_glob`` holds a finished checkpoint (orbax renames
    its temporary folder to the step number when the save is complete)."""
    return any(name.isdigit() for path in glob.glob(os.path.join(job_glob, "checkpoints"))
               for name in os.listdir(path))


def _as_from_a_shell() -> None:
    """A command a shell starts takes Ctrl-C: SIGINT's default action, unblocked, whatever
    this test process (a pytest-xdist worker) inherited or set."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _interrupt_after_first_checkpoint(cmd, job_glob: str, timeout: float = 300):
    """Starts ``cmd``, sends SIGINT to its process group once a job folder matching
    ``job_glob`` has a complete checkpoint, and returns (returncode, stdout, stderr)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_as_from_a_shell)
    deadline = time.time() + timeout
    while not _checkpointed(job_glob) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the command ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:          # never leave it running
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"no exit within 120 s of SIGINT:\n{out[-2000:]}\n{err[-2000:]}")
    return proc.returncode, out, err


def test_ctrl_c_on_an_image_job_exits_130_without_tracebacks_or_leaked_shared_memory(
        tmp_path):
    info = IMAGE_DATASETS["pacs"]
    make_tree(tmp_path / "data" / info.dir, domains=info.domains, classes=info.classes,
              per_class=1)
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "hjax.cli.domainbed_train", "--dataset=pacs",
           f"--data_dir={tmp_path / 'data'}", "--algorithm=erm", "--arch=resnet18",
           "--image_size=32", "--steps=300", "--checkpoint_freq=100", "--batch_size=4",
           "--workers=2", "--data_on_device=off",    # the host pipeline's workers
           f"--output_dir={out}"]                            # the default --augment=device
    code, _, err = _interrupt_after_first_checkpoint(cmd, str(out))
    assert code == 130, err[-3000:]
    assert "interrupted: re-run the same command" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "leaked shared_memory" not in err, err[-3000:]


def test_ctrl_c_on_a_sweep_reports_its_jobs_interrupted_and_status_reads_the_folder(
        tmp_path, cli):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "hjax.cli.sweep", "launch", f"--output_dir={sweep}",
           "--launcher=local_parallel", "--fake_data", "--steps=1000000",
           "--checkpoint_freq=999999",     # no job can end before the Ctrl-C
           "--width_multiplier=0.25", "--batch_size=8", "--n_trials=1", "--n_hparams=1",
           "--algorithms=erm", "--datasets=domainbed_colored_mnist"]
    code, out, err = _interrupt_after_first_checkpoint(cmd, str(sweep / "*"))
    assert code == 130, out + err
    assert err.strip().splitlines() == [
        "interrupted: re-run the same command to resume "
        "(3 jobs: 0 done, 2 incomplete, 1 not_launched)"], err
    assert out.count("] interrupted ") == 2 and "FAILED" not in out, out
    # status reads the launch's settings from the sweep folder: no flags repeated.
    status = cli("sweep", "status", f"--output_dir={sweep}")
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == "3 jobs: 0 done, 2 incomplete, 1 not_launched"
