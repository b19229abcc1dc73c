"""DomainBed data protocol: 80/20 in/out splits and in-graph minibatch sampling.

- Each environment e is split by a permutation drawn from
  ``np.random.SeedSequence([trial_seed, e])``: the first ``int(n * holdout_fraction)``
  permuted examples are "out" (validation), the rest "in" (docs/protocols.md).
- The "in" splits of the training environments are stacked (zero-padded to the largest)
  into one ``TrainArrays`` that is passed whole to the compiled step; every step samples
  ``batch_size`` indices per environment *with replacement* below that environment's real
  size, with ``jax.random`` (:func:`sample_batches`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hjax.data.protocols import Environment
from hjax.protocols.domainbed.config import HOLDOUT_FRACTION



class Split(NamedTuple):
    name: str            # e.g. "env0_in"
    images: np.ndarray
    labels: np.ndarray


def split_environment(env: Environment, env_index: int, trial_seed: int,
                      holdout_fraction: float = HOLDOUT_FRACTION) -> tuple[Split, Split]:
    """(in, out) splits of one environment, deterministic in (trial_seed, env_index)."""
    n = len(env.labels)
    perm = np.random.default_rng(np.random.SeedSequence([trial_seed, env_index])).permutation(n)
    n_out = int(n * holdout_fraction)
    out_idx, in_idx = perm[:n_out], perm[n_out:]
    return (Split(f"env{env_index}_in", env.images[in_idx], env.labels[in_idx]),
            Split(f"env{env_index}_out", env.images[out_idx], env.labels[out_idx]))


def split_environments(envs: Sequence[Environment], trial_seed: int,
                       holdout_fraction: float = HOLDOUT_FRACTION
                       ) -> tuple[list[Split], list[Split]]:
    """([in split of every env], [out split of every env]), in environment order."""
    pairs = [split_environment(e, i, trial_seed, holdout_fraction) for i, e in enumerate(envs)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


class TrainArrays(NamedTuple):
    """Training environments' in-splits: images [E, N, ...], labels [E, N], sizes [E]."""
    images: jax.Array
    labels: jax.Array
    sizes: jax.Array


def stack_train(splits: Sequence[Split]) -> TrainArrays:
    n = max(len(s.labels) for s in splits)
    images = np.zeros((len(splits), n) + splits[0].images.shape[1:], np.float32)
    labels = np.zeros((len(splits), n), np.int32)
    for i, s in enumerate(splits):
        images[i, :len(s.labels)] = s.images
        labels[i, :len(s.labels)] = s.labels
    sizes = np.asarray([len(s.labels) for s in splits], np.int32)
    return TrainArrays(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(sizes))


def sample_batches(key: jax.Array, data: TrainArrays, batch_size: int):
    """One minibatch per environment, with replacement: (images [E, B, ...], labels [E, B])."""
    keys = jax.random.split(key, data.sizes.shape[0])

    def one(k, images, labels, size):
        idx = jax.random.randint(k, (batch_size,), 0, size)
        return images[idx], labels[idx]

    return jax.vmap(one)(keys, data.images, data.labels, data.sizes)
