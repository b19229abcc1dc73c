"""One writer per run folder (hjax.protocols.runs.claim): a second writer is refused in one
line naming the holder, a claim whose holder is provably gone is taken over (and said), and
both protocols' commands hold their folder for the run's lifetime."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from hjax.protocols.runs import claim
from hjax.protocols.runs.claim import CLAIM_NAME, FolderClaim, FolderClaimed


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_claim(folder, **holder):
    (folder / CLAIM_NAME).write_text(json.dumps(holder))


def test_a_second_writer_is_refused_naming_the_holder_and_the_first_keeps_its_claim(tmp_path):
    with FolderClaim(str(tmp_path)):
        with pytest.raises(FolderClaimed) as e:
            FolderClaim(str(tmp_path)).acquire()
        message = str(e.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        assert "being written by another run" in message and "\n" not in message
        assert (tmp_path / CLAIM_NAME).exists()
    assert not (tmp_path / CLAIM_NAME).exists()       # released at the end


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_and_said(tmp_path):
    pid = _dead_pid()
    _write_claim(tmp_path, host=socket.gethostname(), pid=pid, started=time.time() - 60,
                 heartbeat=time.time(), token="old")
    notes = []
    with FolderClaim(str(tmp_path), log=notes.append):
        holder = claim.read_claim(str(tmp_path))
        assert holder["pid"] == os.getpid() and holder["token"] != "old"
    assert len(notes) == 1 and f"pid {pid}" in notes[0] and "no longer running" in notes[0]


def test_a_claim_from_another_host_is_refused_while_its_heartbeat_is_fresh_then_taken(tmp_path):
    _write_claim(tmp_path, host="node-elsewhere", pid=12345, started=time.time() - 60,
                 heartbeat=time.time() - 5, token="remote")
    with pytest.raises(FolderClaimed, match="pid 12345 on node-elsewhere"):
        FolderClaim(str(tmp_path)).acquire()
    _write_claim(tmp_path, host="node-elsewhere", pid=12345, started=time.time() - 4000,
                 heartbeat=time.time() - claim.STALE_S - 1, token="remote")
    notes = []
    with FolderClaim(str(tmp_path), log=notes.append):
        pass
    assert "heartbeat stopped" in notes[0]


def test_release_leaves_a_claim_that_is_not_its_own(tmp_path):
    mine = FolderClaim(str(tmp_path)).acquire()
    _write_claim(tmp_path, host="other", pid=1, started=0, heartbeat=time.time(), token="x")
    mine.release()
    assert claim.read_claim(str(tmp_path))["token"] == "x"


def test_live_holder_tells_a_sweep_which_folders_are_being_written(tmp_path):
    assert claim.live_holder(str(tmp_path)) is None
    with FolderClaim(str(tmp_path)):
        assert claim.live_holder(str(tmp_path))["pid"] == os.getpid()
    _write_claim(tmp_path, host=socket.gethostname(), pid=_dead_pid(), started=0,
                 heartbeat=time.time(), token="gone")
    assert claim.live_holder(str(tmp_path)) is None


TINY = ["--fake_data", "--restarts=1", "--steps=2", "--hidden_dim=8", "--log_every=1"]


@pytest.mark.fast_compile
def test_a_colored_mnist_run_into_a_folder_being_written_exits_2_and_changes_nothing(tmp_path,
                                                                                     cli):
    out = tmp_path / "run"
    with FolderClaim(str(out)):
        before = sorted(os.listdir(out))
        proc = cli("colored_mnist", "--method=erm", *TINY, f"--output_dir={out}")
        assert proc.returncode == 2, proc.stderr
        assert "is being written by another run" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert sorted(os.listdir(out)) == before
    proc = cli("colored_mnist", "--method=erm", *TINY, f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert not (out / CLAIM_NAME).exists()


@pytest.mark.fast_compile
def test_a_domainbed_job_into_a_folder_being_written_exits_2(tmp_path, cli):
    out = tmp_path / "job"
    with FolderClaim(str(out)):
        proc = cli("domainbed_train", "--dataset=domainbed_colored_mnist", "--fake_data",
                   "--steps=2", "--width_multiplier=0.25", f"--output_dir={out}")
    assert proc.returncode == 2 and "is being written by another run" in proc.stderr
    assert not (out / "results.jsonl").exists()


def test_ctrl_c_while_a_checkpoint_is_written_takes_effect_once_it_is_written(tmp_path,
                                                                              monkeypatch):
    import signal

    import numpy as np

    from hjax.protocols.runs import checkpoint
    real = checkpoint._manager

    def interrupted_manager(folder):
        ocp, manager = real(folder)
        save = manager.save

        def save_then_interrupt(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)        # Ctrl-C in the middle of the save
            return save(*args, **kwargs)
        manager.save = save_then_interrupt
        return ocp, manager

    monkeypatch.setattr(checkpoint, "_manager", interrupted_manager)
    state = {"w": np.arange(3.0)}
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(str(tmp_path), 4, state, {"records": [1]})
    monkeypatch.setattr(checkpoint, "_manager", real)
    restored, meta = checkpoint.load(str(tmp_path), state)
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert meta == {"records": [1]}
