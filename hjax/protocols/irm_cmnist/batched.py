"""Several restarts of one method as one compiled program: the train step, the evaluation and
the alignment tracking ``vmap``ped over a leading restart axis.

The restarts of the protocol differ only in their data draws and initial params, which are
stacked along that axis ([R, E, n, ...] batches, [R, ...] TrainStates); their steps are
independent, so member r of the vmapped step computes what :func:`train.run_restart`
computes for restart r, to float rounding (XLA may order a batched reduction differently).
One compile per (method, shapes) instead of one per restart, and one dispatch a step for
all R restarts.

Divergence stays per restart: a member whose loss is not finite is marked diverged at that
step and from then on neither logged nor checkpointed (its NaNs stay in its own slice of
the state, as no op mixes members), exactly where the looped run would have stopped it.

The group's state is checkpointed every K steps (:class:`GroupCheckpoint`), so a killed
run loses at most the steps since the last checkpoint.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable, NamedTuple, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from hjax.data import irm_draws
from hjax.errors import ConfigError
from hjax.io.results import write_atomic
from hjax.protocols import sharding
from hjax.protocols.irm_cmnist import train

RESTART_BATCHINGS = ("auto", "vmap", "loop")
# auto on a CPU: measured on 2 cores (docs/benchmarks.md, "Restarts in one program").
CPU_DEFAULT = "vmap"


def resolve_batching(mode: str, platform: str | None = None) -> str:
    """``auto`` -> ``vmap`` on accelerators, :data:`CPU_DEFAULT` on a CPU."""
    if mode not in RESTART_BATCHINGS:
        raise ConfigError(f"--restart_batching={mode!r} is not valid; choose one of "
                          f"{', '.join(RESTART_BATCHINGS)}")
    if mode != "auto":
        return mode
    platform = platform or jax.devices()[0].platform
    return CPU_DEFAULT if platform == "cpu" else "vmap"


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
    """The restarts' environments (``make_environments(dataset, seed)`` for each seed) as
    stacked batches, the draws made on the host and the images gathered on the device
    (``hjax.data.irm_draws``). ``images_u8``: :func:`irm_draws.device_images` of
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
        if n_dev > 1:     # examples (axis 2) split over the devices, as run_restart does
            b = sharding.shard_examples(mesh, jax.device_get(b), axis=2)
        return b

    return GroupData(batch(info.train_envs), batch(info.test_envs + info.gray_envs))


# Compiled programs that do not depend on the method (the evaluation and the alignment
# tracking), kept for the process's later runs of the same model and shapes: `make
# reproduce`'s eight ColoredMNIST methods then compile them once. Keyed by what determines
# the program, including XLA's optimization mode (the test suite switches it).
_SHARED: dict = {}


def _shared_program(kind: str, model, fn: Callable, *args):
    """(compiled fn(*args), seconds spent compiling now: 0 when it was already there)."""
    key = (kind, repr(model.featurizer), model.num_outputs,
           bool(jax.config.read("jax_disable_most_optimizations")),
           str(jax.tree_util.tree_map(lambda x: (x.shape, str(x.dtype),
                                                 str(getattr(x, "sharding", None))), args)))
    if key in _SHARED:
        return _SHARED[key], 0.0
    t0 = time.perf_counter()
    _SHARED[key] = jax.jit(fn).lower(*args).compile()
    return _SHARED[key], time.perf_counter() - t0


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, r):
    return jax.tree_util.tree_map(lambda x: x[r], tree)


class GroupCheckpoint:
    """The stacked TrainState of a group and its host-side progress (history rows, status,
    timings), written atomically every ``every`` steps to ``path``; ``fingerprint`` (a
    JSON-able dict of everything that determines the run) must match for it to be resumed."""

    def __init__(self, path: str, every: int, fingerprint: dict):
        self.path, self.every = path, every
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))

    def due(self, next_step: int, steps: int) -> bool:
        return self.every > 0 and next_step % self.every == 0 and next_step < steps

    def save(self, state, progress: dict) -> None:
        payload = {"meta": json.dumps({"fingerprint": self.fingerprint, **progress}),
                   "state": flax.serialization.to_state_dict(jax.device_get(state))}
        write_atomic(self.path, flax.serialization.msgpack_serialize(payload))

    def load(self, target_state):
        """(state, progress) of a matching checkpoint, else None."""
        if not os.path.exists(self.path):
            return None
        try:
            with open(self.path, "rb") as f:
                raw = flax.serialization.msgpack_restore(f.read())
            meta = json.loads(raw["meta"])
            if meta.pop("fingerprint") != self.fingerprint:
                return None
            state = flax.serialization.from_state_dict(jax.device_get(target_state),
                                                       raw["state"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return state, meta

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)


def run_group(model, data: GroupData, info, method: str, hp: dict, *, keys: Sequence,
              steps: int, mesh, log_every: int = 100, on_step: Callable | None = None,
              fault_step: int | None = None, track_every: int = 0,
              on_end: Callable | None = None, checkpoint: GroupCheckpoint | None = None,
              log: Callable[[str], None] | None = None, label: str = "") -> list[dict]:
    """Train the restarts of ``keys`` (restart r's key, as :func:`train.run_restart` takes
    it) together; returns their records, with the fields and numbers of run_restart's.

    ``on_step(t)`` after every group step; ``on_end(i, params)`` with member i's final params
    if it did not diverge; ``log`` gets the resume note and one progress line with the ETA
    (measured over the first steps after compiling). Timings in the records: the group's
    median step time and tracking time divided by R (the cost per restart), its compile time.
    """
    log = log or (lambda message: None)
    n_dev = mesh.devices.size
    size = len(keys)
    init, step_fn = train.make_train_step(model, method, hp, merge_domains=n_dev == 1)
    split_keys = [jax.random.split(k) for k in keys]
    states = [init(model.init(k[0], data.train.images[i, 0, :1]))
              for i, k in enumerate(split_keys)]
    state = sharding.replicate(mesh, _stack(states))
    step_keys = sharding.replicate(mesh, _stack([k[1] for k in split_keys]))

    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(step_fn), donate_argnums=0).lower(
        state, data.train, step_keys).compile()
    compile_time = time.perf_counter() - t0
    evaluate, seconds = _shared_program("evaluate", model, jax.vmap(train.make_eval(model)),
                                        state.params, data.evals)
    compile_time += seconds
    compiles = 1 + (seconds > 0)

    track, tracker, track_compile, track_keys = None, None, 0.0, None
    if track_every:
        from hjax.analysis.alignment_tracking import make_alignment_fn
        track_keys = sharding.replicate(mesh, _stack([jax.random.fold_in(k, 0x7A11)
                                                      for k in keys]))
        track = jax.vmap(make_alignment_fn(model, len(info.test_envs)),
                         in_axes=(0, 0, 0, 0, None))

    progress = {"step": 0, "history": [[] for _ in keys], "status": ["ok"] * size,
                "diverged_step": [None] * size, "step_times": [], "track_times": []}
    if checkpoint is not None:
        loaded = checkpoint.load(state)
        if loaded is not None:
            state, progress = sharding.replicate(mesh, loaded[0]), loaded[1]
            log(f"resuming this group of {size} restarts from its checkpoint at step "
                f"{progress['step']} ({checkpoint.path}); steps after it were lost")
    history, status, diverged = (progress["history"], progress["status"],
                                 progress["diverged_step"])
    step_times, track_times = progress["step_times"], progress["track_times"]
    alive = np.array([s == "ok" for s in status])
    start = progress["step"]
    eta_at = min(start + 6, steps - 1)

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
            losses = np.full_like(losses, np.nan)     # every restart, as run_restart does
        step_times.append(time.perf_counter() - ts)
        for i in np.flatnonzero(alive & ~np.isfinite(losses)):
            status[i], diverged[i] = "diverged", t
            alive[i] = False
        if logged and alive.any():
            m, h = jax.device_get(metrics), jax.device_get(held)
            for i in np.flatnonzero(alive):
                row = train._log_row(t, _member(m, i), _member(h, i), info)
                if tracked:
                    row.update({k: float(v[i]) for k, v in alignment.items()})
                history[i].append(row)
        if on_step:
            on_step(t)
        if t == eta_at:
            per_step = statistics.median(step_times[-5:])
            log(f"{label}{size} restarts in one program: compiled in "
                f"{compile_time + track_compile:.1f} s ({compiles} new programs), "
                f"{1e3 * per_step:.0f} ms a step, ETA {per_step * (steps - t - 1):.0f} s")
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
        rec["restart_batching"] = "vmap"
        rec["restarts_per_program"] = size
        records.append(rec)
        if on_end is not None and status[i] == "ok":
            on_end(i, jax.device_get(_member(state.params, i)))
    return records
