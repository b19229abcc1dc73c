"""Checkpoints, one format for both protocols: an orbax checkpoint of the train state (a
single run's, or a group's stacked along the member axis) and a JSON ``meta`` beside it (the
run identity, and whatever host-side progress the protocol needs to resume exactly: records
so far, history rows, per-member status).

One orbax ``CheckpointManager`` under ``<folder>/checkpoints`` keeps the latest step
(synchronous saves; orbax writes each step to a temporary directory and renames it when
complete, so a kill leaves the previous checkpoint intact).

Several processes (hjax.protocols.runs.processes): process 0 alone saves, host copies of the
(replicated) state; every process restores the files it wrote into host arrays. Each
process's manager spans only that process, so no save or restore waits for the others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading

CHECKPOINT_DIR = "checkpoints"


def _multi_process() -> bool:
    import jax        # lazily: the sweep's folder checks read CHECKPOINT_DIR without JAX
    return jax.process_count() > 1


def _manager(folder: str):
    import orbax.checkpoint as ocp       # optional dependency (the experiments extra)
    path = os.path.abspath(os.path.join(folder, CHECKPOINT_DIR))
    options = {"max_to_keep": 1, "create": True, "enable_async_checkpointing": False}
    if _multi_process():
        import jax
        me = jax.process_index()
        os.makedirs(path, exist_ok=True)        # orbax creates none for a subset of processes
        options.update(create=False, multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}))
    return ocp, ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(**options))


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
    """Saves ``state`` and ``meta`` (JSON-able) as step ``step`` (updates done). Several
    processes: only process 0 calls this."""
    if _multi_process():
        import jax
        state = jax.device_get(state)
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
    structure (host arrays when several processes run), or None when there is none."""
    if not exists(folder):
        return None
    if _multi_process():
        import jax
        template = jax.device_get(template)
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
