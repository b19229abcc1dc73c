"""The one host loop of the IRM-protocol ColoredMNIST: a group of restarts of one method
stepped together, the train step, the evaluation and the alignment tracking mapped over a
leading restart axis (:func:`hjax.protocols.runs.members.over_members`: ``jax.vmap`` for a
group of several, the plain program for a group of one, so a single restart costs what it
costs alone). ``--restart_batching=loop`` runs groups of one.

The restarts differ only in their data draws and initial params, which are stacked along
that axis ([R, E, n, ...] batches, [R, ...] TrainStates); their steps are independent, so
member r of a group computes what a group of one computes for restart r, to float rounding
(XLA may order a batched reduction differently).

Metrics of step t are those of the parameters *before* update t, as in the original
scripts. Divergence stays per restart: a member whose loss is not finite is marked diverged
at that step and from then on neither logged nor checkpointed (its NaNs stay in its own slice
of the state, as no op mixes members).

A group's state is checkpointed every K steps (hjax.protocols.runs.checkpoint, with the
host-side progress in its meta), so a killed run loses at most the steps since the last one.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hjax.data import irm_draws
from hjax.data import sharding
from hjax.protocols.irm_cmnist import train
from hjax.protocols.runs import checkpoint as run_checkpoint
from hjax.protocols.runs import processes
from hjax.protocols.runs.members import member, over_members, stack

# The checkpoint of a group in the format of hjax before one run machinery (msgpack): read,
# so that a run killed then resumes; never written.
LEGACY_CHECKPOINT = "restart_group.ckpt"


def groups(restarts: Sequence[int], size: int | None) -> list[list[int]]:
    """Consecutive groups of at most ``size`` restarts (None: one group)."""
    restarts = list(restarts)
    size = size or max(1, len(restarts))
    return [restarts[i:i + size] for i in range(0, len(restarts), size)]


class GroupData(NamedTuple):
    train: train.DomainBatch       # [R, E_train, n, ...]
    evals: train.DomainBatch       # [R, E_held_out, n', ...]


def prepare_group(mnist, dataset: str, seeds: Sequence[int], info, mesh,
                  split: str | None = None, images_u8=None) -> GroupData:
    """The restarts' environments (``make_environments(dataset, seed)`` for each seed, bit
    for bit) as stacked batches, the draws made on the host and the images gathered on the
    device (``hjax.data.irm_draws``). ``images_u8``: :func:`irm_draws.device_images` of
    ``mnist``, to reuse over groups."""
    draws = [irm_draws.draw_irm(mnist.train_labels, dataset, s, split or "intended")
             for s in seeds]
    if images_u8 is None:
        images_u8 = irm_draws.device_images(mnist.train_images)
    n_dev = mesh.devices.size

    def batch(envs):
        d = irm_draws.stack_draws(draws, envs, n_dev)
        images = irm_draws.materialize(images_u8, d.index, d.colors, d.weights, d.gray)
        b = train.DomainBatch(images, jnp.asarray(d.labels), jnp.asarray(d.weights))
        if n_dev > 1:     # examples (axis 2) split over the devices
            b = sharding.shard_examples(mesh, jax.device_get(b), axis=2)
        return b

    return GroupData(batch(info.train_envs), batch(info.test_envs + info.gray_envs))


# Compiled programs that do not depend on the method (the evaluation and the alignment
# tracking), kept for the process's later runs of the same model and shapes: `make
# reproduce`'s eight ColoredMNIST methods then compile them once. Keyed by what determines
# the program, including XLA's optimization mode (the test suite switches it).
_SHARED: dict = {}


def _shared_program(kind: str, model, fn: Callable, *args, donate: tuple[int, ...] = ()):
    """(compiled fn(*args), seconds spent compiling now: 0 when it was already there)."""
    key = (kind, repr(model.featurizer), model.num_outputs,
           bool(jax.config.read("jax_disable_most_optimizations")),
           str(jax.tree_util.tree_map(lambda x: (x.shape, str(x.dtype),
                                                 str(getattr(x, "sharding", None))), args)))
    if key in _SHARED:
        return _SHARED[key], 0.0
    t0 = time.perf_counter()
    _SHARED[key] = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    return _SHARED[key], time.perf_counter() - t0


class GroupCheckpoint:
    """Where and how often a group is checkpointed, and the ``fingerprint`` (a JSON-able dict
    of everything that determines the group: run id, restarts, device count) that must match
    for it to be resumed. Several processes: only the ``writer`` (process 0) saves and
    removes; every process loads what it saved."""

    def __init__(self, folder: str, every: int, fingerprint: dict, writer: bool = True):
        self.folder, self.every, self.writer = folder, every, writer
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))

    @property
    def path(self) -> str:
        return os.path.join(self.folder, run_checkpoint.CHECKPOINT_DIR)

    def due(self, next_step: int, steps: int) -> bool:
        return self.every > 0 and next_step % self.every == 0 and next_step < steps

    def save(self, state, progress: dict) -> None:
        if self.writer:
            run_checkpoint.save(self.folder, progress["step"], jax.device_get(state),
                                {"fingerprint": self.fingerprint, "progress": progress})

    def load(self, target_state):
        """(state, progress, where) of a matching checkpoint, else None. Process 0 reads
        first: the others read once it is done with the folder (an earlier group's
        checkpoint removed)."""
        return processes.writer_first(lambda: self._load(target_state))

    def _load(self, target_state):
        meta = run_checkpoint.load_meta(self.folder)
        if meta is not None and meta.get("fingerprint") == self.fingerprint:
            state, meta = run_checkpoint.load(self.folder, jax.device_get(target_state))
            return state, meta["progress"], self.path
        return load_legacy(os.path.join(self.folder, LEGACY_CHECKPOINT), self.fingerprint,
                           target_state)

    def remove(self) -> None:
        if not self.writer:
            return
        run_checkpoint.remove(self.folder)
        legacy = os.path.join(self.folder, LEGACY_CHECKPOINT)
        if os.path.exists(legacy):
            os.unlink(legacy)


def _legacy_meta(path: str):
    import flax.serialization
    with open(path, "rb") as f:
        raw = flax.serialization.msgpack_restore(f.read())
    return raw, json.loads(raw["meta"])


def legacy_run_id(path: str) -> str | None:
    """The run_id a legacy group checkpoint was written for, or None when unreadable."""
    try:
        return _legacy_meta(path)[1]["fingerprint"]["run_id"]
    except Exception:  # noqa: BLE001  (any unreadable checkpoint belongs to no known run)
        return None


def load_legacy(path: str, fingerprint: dict, target_state):
    """(state, progress, path) of a legacy msgpack group checkpoint of this group, or None."""
    import flax.serialization
    if not os.path.exists(path):
        return None
    try:
        raw, meta = _legacy_meta(path)
        if meta.pop("fingerprint") != fingerprint:
            return None
        saved = dict(raw["state"], alg_state=None)      # the old state had no alg_state
        state = flax.serialization.from_state_dict(jax.device_get(target_state), saved)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state, meta, path


class Hooks(NamedTuple):
    """What the loop tells its caller: ``row(i, row)`` for each logged history row of
    member i (as it is logged), ``step(t)`` after every group step, ``end(i, params)`` with
    member i's final params if it did not diverge, and ``log`` for notes and progress."""
    row: Callable[[int, dict], None] = lambda i, row: None
    step: Callable[[int], None] = lambda t: None
    end: Callable[[int, object], None] | None = None
    log: Callable[[str], None] = lambda message: None


def train_restarts(model, data: GroupData, info, method: str, hp: dict, *, keys: Sequence,
                   steps: int, mesh, log_every: int = 100, fault_step: int | None = None,
                   track_every: int = 0, checkpoint: GroupCheckpoint | None = None,
                   hooks: Hooks = Hooks(), label: str = "") -> list[dict]:
    """Train the restarts of ``keys`` (restart r's key) together; returns their records.

    Timings in the records: the group's median step time and tracking time divided by R
    (the cost per restart), its compile time. ``fault_step`` makes every restart's loss NaN
    at that step (testing divergence handling).
    """
    n_dev = mesh.devices.size
    size = len(keys)
    init, step_fn = train.make_init_and_step(model, method, hp, merge_domains=n_dev == 1)
    split_keys = [jax.random.split(k) for k in keys]
    states = [init(model.init(k[0], data.train.images[i, 0, :1]))
              for i, k in enumerate(split_keys)]
    state = sharding.replicate(mesh, stack(states))
    step_keys = sharding.replicate(mesh, stack([k[1] for k in split_keys]))

    # The step of a method and its hparams: shared by the groups of a run of one shape
    # (--restart_batching=loop compiles it once, not once per restart).
    compiled, compile_time = _shared_program(
        f"step {method} {json.dumps(hp, sort_keys=True)}", model,
        over_members(step_fn, size, (0, 0, 0)), state, data.train, step_keys, donate=(0,))
    compiles = int(compile_time > 0)
    evaluate, seconds = _shared_program(
        "evaluate", model, over_members(train.make_eval(model), size, (0, 0)),
        state.params, data.evals)
    compile_time += seconds
    compiles += seconds > 0

    track, tracker, track_compile, track_keys = None, None, 0.0, None
    if track_every:
        from hjax.analysis.alignment_tracking import make_alignment_fn
        # Keys of their own, so that tracking leaves init and step keys (and results) alone.
        track_keys = sharding.replicate(mesh, stack([jax.random.fold_in(k, 0x7A11)
                                                     for k in keys]))
        track = over_members(make_alignment_fn(model, len(info.test_envs)), size,
                             (0, 0, 0, 0, None))

    progress = {"step": 0, "history": [[] for _ in keys], "status": ["ok"] * size,
                "diverged_step": [None] * size, "step_times": [], "track_times": []}
    if checkpoint is not None:
        loaded = checkpoint.load(state)
        if loaded is not None:
            state, progress = sharding.replicate(mesh, loaded[0]), loaded[1]
            hooks.log(f"{label}resuming from its checkpoint at step {progress['step']} "
                      f"({loaded[2]}); steps after it were lost")
            for i, rows in enumerate(progress["history"]):
                for row in rows:
                    hooks.row(i, row)
    history, status, diverged = (progress["history"], progress["status"],
                                 progress["diverged_step"])
    step_times, track_times = progress["step_times"], progress["track_times"]
    alive = np.array([s == "ok" for s in status])
    start = progress["step"]
    # The ETA is measured over 20 steps after the compile (fewer in a shorter run).
    eta_at = min(start + 20, steps - 1)

    for t in range(start, steps):
        if not alive.any():
            break
        tracked = bool(track_every) and (t % track_every == 0 or t == steps - 1)
        logged = t % log_every == 0 or t == steps - 1 or tracked
        if logged:
            held = evaluate(state.params, data.evals)        # pre-update params
        if tracked:
            step_arg = jnp.asarray(t, jnp.int32)
            if tracker is None:
                tracker, track_compile = _shared_program(
                    f"track{len(info.test_envs)}", model, track, state.params, data.train,
                    data.evals, track_keys, step_arg)
                compiles += track_compile > 0
            tc = time.perf_counter()
            alignment = jax.device_get(tracker(state.params, data.train, data.evals,
                                             track_keys, step_arg))
            track_times.append(time.perf_counter() - tc)
        ts = time.perf_counter()
        state, metrics = compiled(state, data.train, step_keys)
        losses = np.asarray(metrics["loss"])          # one sync per step: NaN found at once
        if fault_step is not None and t == fault_step:
            losses = np.full_like(losses, np.nan)
        step_times.append(time.perf_counter() - ts)
        for i in np.flatnonzero(alive & ~np.isfinite(losses)):
            status[i], diverged[i] = "diverged", t
            alive[i] = False
        if logged and alive.any():
            m, h = jax.device_get(metrics), jax.device_get(held)
            for i in np.flatnonzero(alive):
                row = train.log_row(t, member(m, i), member(h, i), info)
                if tracked:
                    row.update({k: float(v[i]) for k, v in alignment.items()})
                history[i].append(row)
                hooks.row(int(i), row)
        hooks.step(t)
        if t == eta_at and t > start:
            per_step = statistics.median(step_times[-(t - start):][1:] or step_times[-1:])
            hooks.log(f"{label}{size} restart{'s' * (size > 1)} in one program: compiled in "
                      f"{compile_time + track_compile:.1f} s ({compiles} new programs), "
                      f"{1e3 * per_step:.0f} ms a step, ETA "
                      f"{per_step * (steps - t - 1):.0f} s")
        if checkpoint is not None and checkpoint.due(t + 1, steps):
            progress["step"] = t + 1
            checkpoint.save(state, progress)

    step_time = statistics.median(step_times[1:] or step_times) / size
    records = []
    for i in range(size):
        rec = {"status": status[i], "diverged_step": diverged[i], "steps": steps,
               "step_time_s": step_time, "compile_time_s": compile_time,
               "num_devices": n_dev, "history": history[i]}
        if track_every:
            rec["track_every"] = track_every
            rec["track_compile_time_s"] = track_compile
            rec["track_time_s"] = (statistics.median(track_times) / size
                                   if track_times else None)
        last = history[i][-1] if status[i] == "ok" else {}
        rec.update({k: last.get(k) for k in ("train_acc", "test_acc", "gray_test_acc",
                                             "train_nll", "penalty")})
        records.append(rec)
        if hooks.end is not None and status[i] == "ok":
            hooks.end(i, jax.device_get(member(state.params, i)))
    return records
