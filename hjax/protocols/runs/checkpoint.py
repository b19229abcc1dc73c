"""Checkpoints, one format for both protocols: an orbax checkpoint of the train state (a
single run's, or a group's stacked along the member axis) and a JSON ``meta`` beside it (the
run identity, and whatever host-side progress the protocol needs to resume exactly: records
so far, history rows, per-member status).

One orbax ``CheckpointManager`` under ``<folder>/checkpoints`` keeps the latest step
(synchronous saves; orbax writes each step to a temporary directory and renames it when
complete, so a kill leaves the previous checkpoint intact).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading

CHECKPOINT_DIR = "checkpoints"


def _manager(folder: str):
    import orbax.checkpoint as ocp       # optional dependency (the experiments extra)
    return ocp, ocp.CheckpointManager(
        os.path.abspath(os.path.join(folder, CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             enable_async_checkpointing=False))


@contextlib.contextmanager
def _ctrl_c_deferred():
    """Ctrl-C while a checkpoint is written takes effect once it is written: an interrupt
    inside orbax's save leaves its worker threads running into interpreter shutdown (a
    traceback after the command's own one line)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def save(folder: str, step: int, state, meta: dict) -> None:
    """Saves ``state`` and ``meta`` (JSON-able) as step ``step`` (updates done)."""
    ocp, manager = _manager(folder)
    with _ctrl_c_deferred(), manager:
        manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()


def exists(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, CHECKPOINT_DIR))


def load_meta(folder: str) -> dict | None:
    """The meta of the latest checkpoint (no state restored), or None when there is none or
    it cannot be read."""
    if not exists(folder):
        return None
    try:
        ocp, manager = _manager(folder)
        with manager:
            step = manager.latest_step()
            if step is None:
                return None
            return manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta
    except Exception:  # noqa: BLE001  (an unreadable checkpoint belongs to no known run)
        return None


def load(folder: str, template):
    """(state, meta) of the latest checkpoint, the state restored into ``template``'s
    structure, or None when there is none."""
    if not exists(folder):
        return None
    ocp, manager = _manager(folder)
    with manager:
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta


def remove(folder: str) -> None:
    path = os.path.join(folder, CHECKPOINT_DIR)
    if os.path.isdir(path):
        shutil.rmtree(path)
