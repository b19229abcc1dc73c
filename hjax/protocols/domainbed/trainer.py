"""The compiled DomainBed train step and the evaluation of every split.

Randomness: one base key per run (:func:`base_key`); step t uses ``fold_in(base, t)`` split
into a data key (minibatch sampling) and an algorithm key (e.g. Hutchinson probes), so a run
resumed from a checkpoint at step t draws exactly what the uninterrupted run drew.

Data paths: MNIST datasets live on the device and each step samples its minibatches in the
compiled step (:func:`make_train_step`). Image jobs (hjax.protocols.domainbed.image_programs)
take uint8 canvases, gathered from the device-resident decoded cache or sent by the host
pipeline (deterministic per step as well), and augment them in the step, compiled with the
update (:func:`make_canvas_evaluator` evaluates host batches); the PIL reference path
augments on the host and the step takes float32 images (:func:`make_host_batch_step`,
:func:`make_batch_evaluator`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hjax.data.images import device_transforms
from hjax.protocols.domainbed import algorithms
from hjax.protocols.domainbed.algorithms import Batch
from hjax.protocols.domainbed.data import Split, TrainArrays, sample_batches
from hjax.protocols.domainbed.hparams import seed_hash
from hjax.protocols.runs.state import TrainState  # noqa: F401  (re-exported)


def base_key(trial_seed: int) -> jax.Array:
    return jax.random.key(seed_hash("domainbed-train", trial_seed))


def init_state(algorithm_name: str, model, hp, example_images, num_domains: int,
               key: jax.Array) -> TrainState:
    """The initial state, built in one compiled call (eager init compiles op by op)."""
    def build(key, example_images):
        params = model.init(key, example_images)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=algorithms.make_optimizer(hp).init(params),
                          alg_state=algorithms.init_alg_state(algorithm_name, params, hp,
                                                               num_domains))

    # Imported weights would become constants of the compiled init: build those eagerly.
    if getattr(model, "featurizer_params", None) is None:
        build = jax.jit(build)
    return build(key, example_images)


def make_train_step(algorithm_name: str, model, hp, base: jax.Array):
    """A jitted ``(state, train: TrainArrays) -> (state, logs)``."""
    update = algorithms.make_update(algorithm_name, model, hp)
    batch_size = int(hp["batch_size"])

    @jax.jit
    def train_step(state: TrainState, train: TrainArrays):
        data_key, alg_key = jax.random.split(jax.random.fold_in(base, state.step))
        images, labels = sample_batches(data_key, train, batch_size)
        return update(state, Batch(images, labels), alg_key)

    return train_step


def make_host_batch_step(algorithm_name: str, model, hp, base: jax.Array):
    """A jitted ``(state, images [E, B, ...], labels [E, B]) -> (state, logs)`` for batches
    that the host pipeline made; the algorithm key is drawn as in :func:`make_train_step`."""
    update = algorithms.make_update(algorithm_name, model, hp)

    @jax.jit
    def train_step(state: TrainState, images, labels):
        _, alg_key = jax.random.split(jax.random.fold_in(base, state.step))
        return update(state, Batch(images, labels), alg_key)

    return train_step


def make_canvas_evaluator(model, image_size: int):
    """``evaluate(params, batches) -> accuracy`` over (canvases, hw, labels, mask) batches:
    the eval transform (resize, normalise) runs in the compiled forward pass."""
    @jax.jit
    def correct(params, canvases, hw, labels, mask):
        images = device_transforms.eval_batch(canvases, hw, image_size)
        pred = jnp.argmax(model.apply(params, images), axis=-1)
        return jnp.sum((pred == labels) & mask), jnp.sum(mask)

    def evaluate(params, batches) -> float:
        right = total = 0
        for canvases, hw, labels, mask in batches:
            c, n = correct(params, canvases, hw, labels, mask)
            right, total = right + int(c), total + int(n)
        return right / max(total, 1)

    return evaluate


def make_batch_evaluator(model):
    """``evaluate(params, batches) -> accuracy`` over (images, labels, mask) batches."""
    @jax.jit
    def correct(params, images, labels, mask):
        pred = jnp.argmax(model.apply(params, images), axis=-1)
        return jnp.sum((pred == labels) & mask), jnp.sum(mask)

    def evaluate(params, batches) -> float:
        right = total = 0
        for images, labels, mask in batches:
            c, n = correct(params, images, labels, mask)
            right, total = right + int(c), total + int(n)
        return right / max(total, 1)

    return evaluate


class EvalSplit(NamedTuple):
    """A split on the device, zero-padded into [chunks, chunk, ...] with a validity mask."""
    images: jax.Array
    labels: jax.Array
    mask: jax.Array
    size: int


def to_eval_split(split: Split, chunk: int) -> EvalSplit:
    n = len(split.labels)
    k = max(1, -(-n // chunk))
    images = np.zeros((k * chunk,) + split.images.shape[1:], np.float32)
    labels = np.zeros((k * chunk,), np.int32)
    images[:n], labels[:n] = split.images, split.labels
    mask = np.arange(k * chunk) < n
    return EvalSplit(jnp.asarray(images.reshape((k, chunk) + images.shape[1:])),
                     jnp.asarray(labels.reshape(k, chunk)), jnp.asarray(mask.reshape(k, chunk)),
                     n)


def make_evaluator(model):
    """``evaluate(params, EvalSplit) -> accuracy``, one compiled chunk at a time."""
    @jax.jit
    def correct(params, images, labels, mask):
        pred = jnp.argmax(model.apply(params, images), axis=-1)
        return jnp.sum((pred == labels) & mask)

    def evaluate(params, split: EvalSplit) -> float:
        total = sum(correct(params, split.images[i], split.labels[i], split.mask[i])
                    for i in range(split.images.shape[0]))
        return int(total) / max(split.size, 1)

    return evaluate
