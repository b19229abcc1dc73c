"""The programs of image-dataset jobs: one job or a group of jobs of one shape
(``--vmap_trials``), fed from the device-resident decoded cache or from the host pipeline.

Where the batches come from (``--data_on_device``, :func:`resolve_data_on_device`):

- **resident**: the decoded cache is placed on the device(s) once
  (:mod:`hjax.data.images.resident`); each step the host sends the cache rows of the batch
  (the sampling of the host pipeline: the same images) and the device gathers and augments
  them; evaluation is one compiled scan over every split's rows.
- **host**: the host pipeline decodes (or copies from the cache) and sends uint8 canvases
  (hjax.data.images.pipeline, prefetch), or with ``--augment=host`` float32 images that PIL
  augmented.

A group's members share the shapes (dataset, algorithm, test envs, batch size, image size,
arch, dtype, probe counts) and differ in values: learning rate, weight decay, penalty
weights, dropout rate (traced: :class:`hjax.models.resnet.Dropout`), trial seed (splits,
init, batches, augmentation, keys). Their states, optimizer states and keys are per member;
the frozen BatchNorm statistics are constants of the model, the same for every member (as in
each member's own job). A group of one runs the single job's unbatched program.
"""

from __future__ import annotations

import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from hjax.data import sharding as data_sharding
from hjax.data.images import decoded_cache, device_transforms, pipeline, prefetch, resident
from hjax.data.images.decode import canvas_size
from hjax.errors import ConfigError
from hjax.protocols.domainbed import algorithms
from hjax.protocols.domainbed.algorithms import Batch
from hjax.protocols.domainbed.config import RunConfig
from hjax.protocols.domainbed.hparams import seed_hash
from hjax.protocols.domainbed.programs import (ImageJobData, MemberProgram,
                                               single_accuracies)
from hjax.protocols.domainbed.trainer import (base_key, make_batch_evaluator,
                                              make_canvas_evaluator, make_host_batch_step)
from hjax.protocols.domainbed.vmapped import hp_arrays, is_static_hparam, over_trials
from hjax.protocols.runs.members import member, over_members

_LOG = logging.getLogger("hjax")


def augment_seed(config: RunConfig) -> int:
    """The seed of a job's batch sampling and augmentation."""
    return seed_hash("domainbed-images", config.trial_seed)


def _open_cache(config: RunConfig, data: ImageJobData):
    """(the verified decoded cache or None, why there is none)."""
    if not config.decoded_cache:
        return None, "--decoded_cache=false"
    if data.dataset is None or data.dataset.name not in decoded_cache.CACHED_DATASETS:
        return None, f"{config.dataset} streams from its files (no decoded cache)"
    cache = decoded_cache.open_or_build(data.dataset, data.data_dir,
                                        canvas_size(config.image_size), config.workers)
    return cache, "its data folder is not writable, so no decoded cache was built"


def resolve_data_on_device(config: RunConfig, data: ImageJobData, log=_LOG.info):
    """(the decoded cache or None, whether it goes on the device); says what it chose."""
    if config.augment == "host":
        if config.data_on_device == "on":
            raise ConfigError("--data_on_device=on augments on the device; it cannot go "
                              "with --augment=host")
        return None, False
    cache, why = _open_cache(config, data)
    on, sentence = resident.choose(config.data_on_device, cache, config.dataset, why)
    log(f"note: data on the device: {sentence}")
    return cache, on


def _mesh():
    return data_sharding.make_mesh() if len(jax.devices()) > 1 else None


def _mapped(fn, size: int, batching: str, shared: tuple[int, ...], argcount: int):
    """``fn`` over the leading member axis of the arguments not in ``shared``: the unbatched
    program for one member, else vmapped (or unrolled on CPU: vmapped.resolve_trial_batching)."""
    if size == 1:
        return over_members(fn, 1, tuple(None if i in shared else 0 for i in range(argcount)))
    return over_trials(fn, batching, shared)


def _hp_split(hps: Sequence[dict]) -> tuple[dict, dict]:
    """(the hparams every member shares as Python values, the others as [T] arrays)."""
    if len(hps) == 1:
        return dict(hps[0]), {}
    static = {k: v for k, v in hps[0].items() if is_static_hparam(k)}
    return static, hp_arrays(hps, [k for k in hps[0] if not is_static_hparam(k)])


def _augment_step_body(algorithm: str, model, static_hp: dict, image_size: int, mesh):
    """``(state, canvases, hw, labels, hp_values, base, augment_key) -> (state, logs)``: the
    single job's device-augment step (trainer.make_device_augment_step) with the
    non-shared hparams, the base key and the augmentation key as arguments."""
    def one(state, canvases, hw, labels, hp_values, base, augment_key):
        hp = {**static_hp, **hp_values}
        update = algorithms.make_update(algorithm, model, hp)
        _, alg_key = jax.random.split(jax.random.fold_in(base, state.step))
        if mesh is not None and canvases.shape[1] % mesh.devices.size == 0:
            # Data parallel: the examples of each domain split over the devices.
            canvases = jax.lax.with_sharding_constraint(
                canvases, NamedSharding(mesh, P(None, data_sharding.DATA_AXIS)))
        images = device_transforms.augment_batch(augment_key, state.step, canvases, hw,
                                                 image_size)
        return update(state, Batch(images, labels), alg_key)
    return one


def _member_keys(configs: Sequence[RunConfig]):
    return (jnp.stack([base_key(c.trial_seed) for c in configs]),
            jnp.stack([jax.random.key(augment_seed(c)) for c in configs]))


def _eval_batch(config: RunConfig, data: ImageJobData) -> int:
    # One evaluation batch size for every split (one compiled program), no larger than the
    # largest split needs.
    largest = max(len(labels) for _, labels in data.eval_ins + data.eval_outs)
    return min(config.eval_chunk, 128, -(-largest // 8) * 8)


def _splits(data: ImageJobData) -> list[tuple[str, int]]:
    return [(kind, i) for i in range(data.num_envs) for kind in ("in", "out")]


def _replicated(states, mesh):
    """The states on the device the batches go to (committed there, as the step's outputs
    will be: uncommitted first inputs would compile the step a second time), or copied to
    every device of ``mesh``."""
    if mesh is None:
        return jax.device_put(states, jax.devices()[0])
    return data_sharding.replicate(mesh, states)


# ------------------------------------------------------------------------------ resident

def resident_program(members, model, cache, batching: str, start: int) -> MemberProgram:
    """A group (or one job) stepping on the device-resident ``cache``."""
    configs = [m.config for m in members]
    first = configs[0]
    size = len(members)
    batch_size = int(members[0].hp["batch_size"])
    mesh = _mesh()
    on_device = resident.place(cache, mesh)
    static_hp, hp_values = _hp_split([m.hp for m in members])
    bases, augment_keys = _member_keys(configs)
    one = _augment_step_body(first.algorithm, model, static_hp, first.image_size, mesh)

    def step_fn(state, rows, labels, hp_values, base, augment_key, images, hw):
        canvases, canvas_hw = resident.gather(resident.ResidentImages(images, hw), rows)
        return one(state, canvases, canvas_hw, labels, hp_values, base, augment_key)

    step = jax.jit(_mapped(step_fn, size, batching, (6, 7), 8))
    rows = [resident.MemberRows(
        augment_seed(m.config),
        [s.rows for s in pipeline.cached_sources(cache, m.data.dataset,
                                                 m.data.train_domains)],
        [y for _, y in m.data.train_domains]) for m in members]
    batches = prefetch.prefetch_to_device(
        resident.train_rows(rows, batch_size, start),
        sharding=None if mesh is None else NamedSharding(mesh, P()))
    evaluate = _resident_evaluator(members, model, cache, batching, mesh)
    return MemberProgram(
        lambda states: step(states, *next(batches), hp_values, bases, augment_keys,
                            on_device.images, on_device.hw),
        lambda params: evaluate(params, on_device),
        lambda states: _replicated(states, mesh), batches.close)


def _resident_evaluator(members, model, cache, batching: str, mesh):
    """``evaluate(params, on_device) -> {(kind, env): [T] accuracies}``: every split of every
    member in one compiled scan over chunks of rows."""
    first, data0 = members[0].config, members[0].data
    splits = _splits(data0)
    chunk = _eval_batch(first, data0)
    tables = []
    for m in members:
        parts = {"in": m.data.eval_ins, "out": m.data.eval_outs}
        sources = {k: pipeline.cached_sources(cache, m.data.dataset, v)
                   for k, v in parts.items()}
        tables.append(resident.eval_table(
            [(sources[k][i].rows, parts[k][i][1]) for k, i in splits], chunk))
    sizes = tables[0].sizes
    stacked = [jnp.asarray(np.stack([getattr(t, f) for t in tables]))
               for f in ("rows", "labels", "split")]
    num_splits, image_size = len(splits), first.image_size

    def correct(params, rows, labels, split, images, hw):
        def body(counts, chunk_of):
            r, y, s = chunk_of
            canvases, canvas_hw = resident.gather(resident.ResidentImages(images, hw), r)
            x = device_transforms.eval_batch(canvases, canvas_hw, image_size)
            right = jnp.argmax(model.apply(params, x), axis=-1) == y
            return counts + jnp.sum(jax.nn.one_hot(s, num_splits, dtype=jnp.int32)
                                    * right[:, None], axis=0), None
        counts, _ = jax.lax.scan(body, jnp.zeros(num_splits, jnp.int32), (rows, labels, split))
        return counts

    program = jax.jit(_mapped(correct, len(members), batching, (4, 5), 6))

    def evaluate(params, on_device) -> dict:
        counts = np.asarray(jax.device_get(program(params, *stacked, on_device.images,
                                                   on_device.hw)))
        return {key: counts[:, s] / max(int(sizes[s]), 1) for s, key in enumerate(splits)}

    return evaluate


# ---------------------------------------------------------------------------------- host

def _host_sources(config: RunConfig, data: ImageJobData, cache):
    """(train sources, eval sources by kind, eval workers): decoded-cache rows when there is
    a cache (gathers in-process), else the files."""
    if cache is not None:
        train = pipeline.cached_sources(cache, data.dataset, data.train_domains)
        splits = {k: pipeline.cached_sources(cache, data.dataset, v)
                  for k, v in (("in", data.eval_ins), ("out", data.eval_outs))}
        return train, splits, 0
    train = [paths for paths, _ in data.train_domains]
    splits = {k: [paths for paths, _ in v] for k, v in (("in", data.eval_ins),
                                                         ("out", data.eval_outs))}
    return train, splits, config.workers


def _host_evaluator(config: RunConfig, model, data: ImageJobData, splits, workers: int):
    """``evaluate(params, kind, env) -> accuracy`` of one job's params, batches from the host
    pipeline."""
    canvas = canvas_size(config.image_size)
    evaluate_batches = make_canvas_evaluator(model, config.image_size)
    eval_batch = _eval_batch(config, data)
    eval_sharding = prefetch.batch_sharding(eval_batch, axis=0)
    labels = {"in": [y for _, y in data.eval_ins], "out": [y for _, y in data.eval_outs]}

    def evaluate(params, kind, i):
        with prefetch.prefetch_to_device(pipeline.eval_canvases(
                splits[kind][i], labels[kind][i], canvas, eval_batch, workers=workers),
                sharding=eval_sharding) as eval_iter:
            return evaluate_batches(params, eval_iter)

    return evaluate


def host_program(members, model, cache, batching: str, start: int) -> MemberProgram:
    """A group (or one job) fed uint8 canvases by the host pipeline, augmented on the
    device."""
    configs = [m.config for m in members]
    first = configs[0]
    size = len(members)
    batch_size = int(members[0].hp["batch_size"])
    canvas = canvas_size(first.image_size)
    sources = [_host_sources(c, m.data, cache) for c, m in zip(configs, members)]
    domains = [[(images, y) for images, (_, y) in zip(train, m.data.train_domains)]
               for (train, _, _), m in zip(sources, members)]
    seeds = [augment_seed(c) for c in configs]
    sharding = prefetch.batch_sharding(batch_size, axis=2 if size > 1 else 1)
    if size == 1:     # one job's batches, no member axis: shared by the unbatched program
        host = pipeline.train_canvases(domains[0], batch_size, canvas, seed=seeds[0],
                                       start_step=start, workers=first.workers)
    else:
        host = pipeline.group_train_canvases(domains, batch_size, canvas, seeds,
                                             start_step=start, workers=first.workers)
    batches = prefetch.prefetch_to_device(host, sharding=sharding)
    static_hp, hp_values = _hp_split([m.hp for m in members])
    bases, augment_keys = _member_keys(configs)
    one = _augment_step_body(first.algorithm, model, static_hp, first.image_size, None)
    step = jax.jit(_mapped(one, size, batching, (1, 2, 3) if size == 1 else (), 7))
    evaluators = [_host_evaluator(c, model, m.data, splits, workers)
                  for c, m, (_, splits, workers) in zip(configs, members, sources)]

    def accuracies(params) -> dict:
        out = {key: np.zeros(size) for key in _splits(members[0].data)}
        for t, evaluate in enumerate(evaluators):
            one_params = member(params, t)
            for kind, i in out:
                out[kind, i][t] = evaluate(one_params, kind, i)
        return out

    return MemberProgram(
        lambda states: step(states, *next(batches), hp_values, bases, augment_keys),
        accuracies, lambda states: _replicated(states, None if sharding is None
                                               else sharding.mesh), batches.close)


def host_augment_program(config: RunConfig, hp: dict, model, data: ImageJobData,
                         start: int) -> MemberProgram:
    """One job on the PIL reference path: decode and augment on the host, float32 batches."""
    batch_size = int(hp["batch_size"])
    batches = pipeline.train_batches(
        data.train_domains, batch_size, config.image_size, seed=augment_seed(config),
        start_step=start, augment=True, workers=config.workers)
    step_fn = make_host_batch_step(config.algorithm, model, hp, base_key(config.trial_seed))
    step = jax.jit(over_members(step_fn, 1, (0, None, None)))
    evaluate_batches = make_batch_evaluator(model)
    splits = {"in": data.eval_ins, "out": data.eval_outs}
    eval_batch = _eval_batch(config, data)

    def evaluate(params, kind, i):
        paths, labels = splits[kind][i]
        with pipeline.eval_batches(paths, labels, config.image_size,
                                   eval_batch) as eval_iter:
            return evaluate_batches(params, eval_iter)

    return MemberProgram(lambda states: step(states, *next(batches)),
                         single_accuracies(evaluate, data.num_envs), close=batches.close)


def image_program(members, model, batching: str = "auto", start: int = 0,
                  log=_LOG.info) -> MemberProgram:
    """The program of a group of image jobs of one shape (a single job: a group of one)."""
    first = members[0].config
    if first.augment == "host":
        if len(members) > 1:
            raise ConfigError("--augment=host trains one job at a time (PIL augments on the "
                              "host); vmapped groups augment on the device")
        m = members[0]
        return host_augment_program(m.config, m.hp, model, m.data, start)
    cache, on = resolve_data_on_device(first, members[0].data, log)
    if on:
        return resident_program(members, model, cache, batching, start)
    return host_program(members, model, cache, batching, start)
