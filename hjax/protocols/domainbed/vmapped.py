"""Several DomainBed jobs of one shape trained as ONE compiled program (``--vmap_trials``).

Jobs share a shape when they agree on everything that sets an array shape or the program:
dataset, algorithm, test envs, steps, checkpoint frequency, holdout fraction, CNN width, and
the shape-setting hyperparameters (``batch_size``, ``*_num_probes``). They may differ in trial
seed (data, splits, init, minibatches) and in every other hyperparameter (learning rate,
penalty weights, anneal steps, ...). Such a group runs as ``jax.vmap`` of the single-job step
over a leading trial axis: per-trial train states, per-trial base keys, per-trial hyperparameter
values passed as traced arrays; the data sets of the group's distinct trial seeds are stacked
once and each trial gathers its minibatches from its own (no per-trial copies). On an accelerator this turns T small programs into one T-times
wider one; ``experiments/bench_vmap_trials.py`` measures the speed-up.

Each job still gets its own directory with exactly the files ``train.py`` writes
(``results.jsonl``, orbax checkpoint, ``done``) and the same job identity, so a job started in a
vmapped group can be resumed alone by ``train.py`` and vice versa, and ``collect_results.py``
cannot tell the difference. The group runs through the same loop as a single job
(hjax.protocols.domainbed.run.run_group, hjax.protocols.domainbed.loop). Results equal the single-job ones up to float reassociation (the
batched kernels sum in another order); tests check the tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hjax.errors import ConfigError
from hjax.protocols.domainbed import algorithms
from hjax.protocols.domainbed.algorithms import Batch
from hjax.protocols.domainbed.config import RunConfig, job_run_config, resolve_hparams
from hjax.protocols.domainbed.data import TrainArrays
from hjax.protocols.domainbed.programs import MemberProgram
from hjax.protocols.domainbed.trainer import EvalSplit, base_key
from hjax.protocols.runs.members import stack

_LOG = logging.getLogger("hjax")


def is_static_hparam(name: str) -> bool:
    """Hyperparameters that set a shape: they must agree within a vmapped group."""
    return name == "batch_size" or name.endswith("_num_probes")


# Settings of image jobs that a group's members must share (the rest: trial seed, hparams).
IMAGE_SHAPE_FIELDS = ("arch", "image_size", "dtype", "pretrained", "augment", "data_dir",
                      "decoded_cache", "data_on_device", "workers")


def shape_signature(config: RunConfig, hp: dict) -> str:
    """Jobs with equal signatures can share one vmapped program."""
    return json.dumps({
        "dataset": config.dataset, "algorithm": config.algorithm,
        "test_envs": list(config.test_envs), "steps": config.steps,
        "checkpoint_freq": config.checkpoint_freq, "holdout": config.holdout_fraction,
        "width": config.width_multiplier, "fake_data": config.fake_data,
        "eval_chunk": config.eval_chunk, "stop_after_step": config.stop_after_step,
        # Image jobs: the model, the input and where the batches come from.
        **{name: getattr(config, name) for name in IMAGE_SHAPE_FIELDS},
        "hp_names": sorted(hp), "static": {k: hp[k] for k in sorted(hp) if is_static_hparam(k)},
    }, sort_keys=True)


def group_by_shape(configs: Sequence[RunConfig], hparams: Sequence[dict],
                   max_group: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` grouped by shape signature (first-seen order), each group cut
    into pieces of at most ``max_group`` jobs."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (c, hp) in enumerate(zip(configs, hparams)):
        groups[shape_signature(c, hp)].append(i)
    out = []
    for members in groups.values():
        size = max_group or len(members)
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return out


def _pad_to(x: jax.Array, n: int, axis: int) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - x.shape[axis])
    return jnp.pad(x, pad)


def _stack_train(datas: Sequence) -> TrainArrays:
    n = max(d.train.images.shape[1] for d in datas)
    return TrainArrays(jnp.stack([_pad_to(d.train.images, n, 1) for d in datas]),
                       jnp.stack([_pad_to(d.train.labels, n, 1) for d in datas]),
                       jnp.stack([d.train.sizes for d in datas]))


def _stack_eval(splits: Sequence[EvalSplit]) -> tuple:
    """(images [T, k, chunk, ...], labels [T, k, chunk], mask [T, k, chunk])."""
    k = max(s.images.shape[0] for s in splits)
    return (jnp.stack([_pad_to(s.images, k, 0) for s in splits]),
            jnp.stack([_pad_to(s.labels, k, 0) for s in splits]),
            jnp.stack([_pad_to(s.mask, k, 0) for s in splits]))


def sample_trial_batches(key: jax.Array, data: TrainArrays, trial_data: jax.Array,
                         batch_size: int):
    """``sample_batches`` on data set ``trial_data`` of the stacked [U, E, N, ...] ``data``.

    The same draws as ``sample_batches(key, data[trial_data], batch_size)``, gathered from
    the stacked array directly so that vmapping over trials never copies a whole data set.
    """
    keys = jax.random.split(key, data.sizes.shape[1])

    def one(k, e):
        idx = jax.random.randint(k, (batch_size,), 0, data.sizes[trial_data, e])
        return data.images[trial_data, e, idx], data.labels[trial_data, e, idx]

    return jax.vmap(one)(keys, jnp.arange(data.sizes.shape[1]))


BATCHINGS = ("auto", "vmap", "unroll")


def resolve_trial_batching(batching: str) -> str:
    """``auto``: ``vmap`` on GPU/TPU, ``unroll`` on CPU.

    ``vmap`` puts the trials side by side in every op. On XLA:CPU a convolution whose
    weights carry the trial axis becomes a grouped convolution, slower than T separate
    programs; ``unroll`` writes the T trial steps into the one program as independent ops
    (compile time grows with T), which XLA:CPU runs concurrently, with one compile instead
    of T. A ``lax.map`` loop over trials is slower still on XLA:CPU, so it is not offered.
    The figures: docs/benchmarks.md, "Figures behind the code".
    """
    if batching not in BATCHINGS:
        raise ConfigError(f"--trial_batching={batching!r} is not valid; choose one of: "
                          f"{', '.join(BATCHINGS)}")
    if batching == "auto":
        return "unroll" if jax.default_backend() == "cpu" else "vmap"
    return batching


def over_trials(fn, batching: str, shared: tuple[int, ...]):
    """``fn`` mapped over the leading axis of every argument not in ``shared``."""
    if resolve_trial_batching(batching) == "vmap":
        return jax.vmap(fn, in_axes=tuple(None if i in shared else 0 for i in range(
            fn.__code__.co_argcount)))

    def unrolled(*args):
        per_trial = [a for i, a in enumerate(args) if i not in shared]
        n = jax.tree_util.tree_leaves(per_trial)[0].shape[0]
        outs = []
        for t in range(n):
            it = iter(jax.tree_util.tree_map(lambda x, t=t: x[t], per_trial))
            outs.append(fn(*(args[i] if i in shared else next(it) for i in range(len(args)))))
        return stack(outs)

    return unrolled


def make_group_step(algorithm_name: str, model, static_hp: dict, batching: str = "auto"):
    """A jitted ``(states, train, trial_data, hp_values, bases) -> (states, logs)``.

    Mapped (``batching``: vmap, or unrolled on CPU) over the leading trial axis of ``states``, ``trial_data`` (each trial's index
    into the U stacked data sets of ``train``, [U, E, N, ...], shared by all trials),
    ``hp_values`` (every non-static hyperparameter as a [T] array) and ``bases`` (keys). The
    body is the single-job step of ``trainer`` with the hyperparameters as traced values.
    """
    batch_size = int(static_hp["batch_size"])

    def one(state, train, trial_data, hp_values, base):
        hp = {**static_hp, **hp_values}
        update = algorithms.make_update(algorithm_name, model, hp)
        data_key, alg_key = jax.random.split(jax.random.fold_in(base, state.step))
        images, labels = sample_trial_batches(data_key, train, trial_data, batch_size)
        return update(state, Batch(images, labels), alg_key)

    return jax.jit(over_trials(one, batching, shared=(1,)))


def make_group_evaluator(model, batching: str = "auto"):
    """``correct(params [T...], images, labels, mask, trial_data [T]) -> [T]`` correct counts
    of one chunk; ``images`` etc. are [U, chunk, ...], one chunk per data set."""
    def correct(params, images, labels, mask, u):
        pred = jnp.argmax(model.apply(params, images[u]), axis=-1)
        return jnp.sum((pred == labels[u]) & mask[u])

    return jax.jit(over_trials(correct, batching, shared=(1, 2, 3)))


def hp_arrays(hps: Sequence[dict], names: Sequence[str]) -> dict:
    out = {}
    for name in names:
        values = [hp[name] for hp in hps]
        dtype = jnp.int32 if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in values) else jnp.float32
        out[name] = jnp.asarray(values, dtype)
    return out


def group_program(model, members, batching: str):
    """The :class:`~hjax.protocols.domainbed.programs.MemberProgram` of a group of MNIST jobs
    of one shape (``members``: hjax.protocols.domainbed.loop.Member, at one step)."""
    configs = [m.config for m in members]
    hps = [m.hp for m in members]
    datas = [m.data for m in members]
    seeds = sorted({c.trial_seed for c in configs})       # one data set per trial seed
    unique = [datas[[c.trial_seed for c in configs].index(s)] for s in seeds]
    trial_data = jnp.asarray([seeds.index(c.trial_seed) for c in configs], jnp.int32)
    static_hp = {k: v for k, v in hps[0].items() if is_static_hparam(k)}
    dynamic = [k for k in hps[0] if not is_static_hparam(k)]
    bases = jnp.stack([base_key(c.trial_seed) for c in configs])
    hp_values = hp_arrays(hps, dynamic)
    train = _stack_train(unique)
    step_fn = make_group_step(configs[0].algorithm, model, static_hp, batching)
    correct = make_group_evaluator(model, batching)
    evals, sizes = {}, {}
    for kind in ("in", "out"):
        for i in range(datas[0].num_envs):
            evals[kind, i] = _stack_eval([getattr(d, f"eval_{kind}s")[i] for d in unique])
            sizes[kind, i] = np.asarray([getattr(d, f"eval_{kind}s")[i].size for d in datas])

    def accuracies(params) -> dict:
        out = {}
        for key, (images, labels, mask) in evals.items():
            total = sum(np.asarray(correct(params, images[:, c], labels[:, c], mask[:, c],
                                           trial_data))
                        for c in range(images.shape[1]))
            out[key] = total / np.maximum(sizes[key], 1)
        return out

    return MemberProgram(lambda states: step_fn(states, train, trial_data, hp_values, bases),
                         accuracies)


# ---------------------------------------------------------------------------- sweep side

# The sweep-job settings a vmapped group can take (others change what the job reads or how).
VMAPPABLE_SETTINGS = ("steps", "checkpoint_freq", "width_multiplier", "batch_size", "fake_data",
                      "data_dir", "arch", "image_size", "dtype", "pretrained", "workers",
                      "data_on_device")


def job_config(job, output_dir: str) -> RunConfig:
    """The ``RunConfig`` that ``domainbed_train`` builds from ``job.flags()``; ConfigError
    for a setting a vmapped group cannot take."""
    extra = sorted(name for name, _ in job.extra if name not in VMAPPABLE_SETTINGS)
    if extra:
        raise ConfigError(f"job settings {extra} cannot be vmapped")
    return job_run_config(job, output_dir)


def plan_groups(jobs, output_root: str, max_group: int | None = None,
                batching: str = "auto"):
    """The jobs not done yet, as ``VmapGroup``s of one shape (at most ``max_group`` each)."""
    from hjax.protocols.domainbed import jobs as jobs_lib
    todo = [j for j in jobs
            if jobs_lib.job_state(output_root, j) not in jobs_lib.SKIPPED_STATES]
    configs = [job_config(j, os.path.join(output_root, j.dirname())) for j in todo]
    hps = [resolve_hparams(c) for c in configs]
    return [jobs_lib.VmapGroup(tuple(todo[i] for i in members), batching)
            for members in group_by_shape(configs, hps, max_group)]


def load_spec_file(path: str) -> tuple[list[RunConfig], str]:
    """(configs, batching) of the group that ``VmapGroup.spec`` wrote (``train.py
    --vmap_jobs``)."""
    from hjax.protocols.domainbed.jobs import job_from_spec
    with open(path) as f:
        spec = json.load(f)
    batching = spec.get("batching", "auto")
    resolve_trial_batching(batching)
    overwrite = spec.get("overwrite", False) is True     # sweep.py launch --overwrite
    return [dataclasses.replace(job_config(*job_from_spec(e)), overwrite=overwrite)
            for e in spec["jobs"]], batching
