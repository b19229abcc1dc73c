"""Checkpoints with orbax: the train state, the run's identity and its results so far.

One orbax ``CheckpointManager`` under ``<output_dir>/checkpoints`` keeps the latest step
(synchronous saves; orbax writes each step to a temporary directory and renames it when
complete, so a kill leaves the previous checkpoint intact). The results records are saved in
the same checkpoint, so ``results.jsonl`` can be rewritten to exactly the checkpointed steps
on resume (a kill between writing results and the checkpoint cannot leave extra lines).
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def _manager(output_dir: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(output_dir, CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             enable_async_checkpointing=False))


def save(output_dir: str, state, identity: dict, records: list[dict]) -> None:
    """Saves under step ``state.step`` (the number of updates done)."""
    with _manager(output_dir) as manager:
        manager.save(int(state.step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave({"identity": identity, "records": records})))
        manager.wait_until_finished()


def load(output_dir: str, template):
    """(state, identity, records) of the latest checkpoint, or None when there is none."""
    if not os.path.isdir(os.path.join(output_dir, CHECKPOINT_DIR)):
        return None
    with _manager(output_dir) as manager:
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta["identity"], restored.meta["records"]
