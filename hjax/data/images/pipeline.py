"""Input pipeline for DomainBed's image datasets, on grain: decode + augment in worker processes.

- :func:`train_batches`: an infinite iterator of per-domain minibatches, ``images [E, B, H, W, 3]``
  float32 and ``labels [E, B]`` int32. Step t draws B indices per training domain uniformly WITH
  replacement (DomainBed's InfiniteDataLoader with replacement) from
  ``np.random.default_rng([seed, t])`` and augments image i of domain e with
  ``np.random.default_rng([seed, t, e, i])``. So the batch of step t depends on (seed, t) only:
  not on ``start_step``, the worker count or the prefetch depth; a run resumed at step t sees
  exactly what the uninterrupted run saw. It is a grain ``MapDataset`` over steps whose element
  t is the whole batch, prefetched by ``mp_prefetch`` in ``workers`` processes (0: in-process,
  no threads); batches arrive in step order.
- :func:`eval_batches`: a finite iterator over ``(images [b, H, W, 3], labels [b], mask [b])``
  with the eval transform, padded to full batches (padding is zeros, label 0, mask False), in
  example order, every example exactly once.

Decoding is PIL's ``convert("RGB")``. A file that does not decode raises
:class:`~hjax.data.image_datasets.ImageDecodeError` naming it (files PIL cannot identify are
already skipped when the dataset is scanned; see :mod:`hjax.data.image_datasets`).

Call ``close()`` on an iterator (or use it as a context manager) to stop its worker processes.
"""

from __future__ import annotations

import sys
from typing import Iterator, Sequence

import numpy as np

from hjax.data.images import pil_transforms as T
from hjax.data.images.registry import ImageDecodeError
from hjax.errors import ConfigError


def decode(path: str):
    """The image at ``path`` as an RGB PIL image, fully decoded; ImageDecodeError otherwise."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # any decode failure names the file, in one line
        raise ImageDecodeError(f"cannot decode image {path} ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:200]}); remove or replace the file"
                               ) from None


def _as_domains(domains) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i, (paths, labels) in enumerate(domains):
        paths = np.asarray(paths, dtype=str)
        labels = np.asarray(labels, dtype=np.int32)
        if paths.ndim != 1 or paths.shape != labels.shape:
            raise ConfigError(f"domain {i}: paths {paths.shape} and labels {labels.shape} "
                              f"must be 1-D of one length")
        if len(paths) == 0:
            raise ConfigError(f"domain {i} has no images")
        out.append((paths, labels))
    if not out:
        raise ConfigError("train_batches needs at least one domain")
    return out


class TrainBatch:
    """Element t of the training MapDataset: the whole [E, B] batch of step t (picklable)."""

    def __init__(self, domains, batch_size: int, image_size: int, seed: int, augment: bool):
        self.domains = domains
        self.batch_size = batch_size
        self.image_size = image_size
        self.seed = seed
        self.augment = augment

    def indices(self, step: int) -> np.ndarray:
        """[E, B] example indices of step ``step`` (with replacement, per domain)."""
        rng = np.random.default_rng([self.seed, step])
        return np.stack([rng.integers(0, len(p), self.batch_size) for p, _ in self.domains])

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        step = int(step)
        idx = self.indices(step)
        s = self.image_size
        images = np.empty((len(self.domains), self.batch_size, s, s, 3), np.float32)
        labels = np.empty((len(self.domains), self.batch_size), np.int32)
        for e, (paths, labs) in enumerate(self.domains):
            for i, j in enumerate(idx[e]):
                img = decode(paths[j])
                if self.augment:
                    rng = np.random.default_rng([self.seed, step, e, i])
                    images[e, i] = T.train_transform(img, s, rng)
                else:
                    images[e, i] = T.eval_transform(img, s)
                labels[e, i] = labs[j]
        return images, labels


class EvalBatch:
    """Element k of the eval MapDataset: examples [k b, (k + 1) b), padded (picklable)."""

    def __init__(self, paths, labels, image_size: int, batch_size: int):
        self.paths = paths
        self.labels = labels
        self.image_size = image_size
        self.batch_size = batch_size

    def __call__(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, s = self.batch_size, self.image_size
        lo = int(k) * b
        hi = min(lo + b, len(self.paths))
        images = np.zeros((b, s, s, 3), np.float32)
        labels = np.zeros((b,), np.int32)
        mask = np.zeros((b,), bool)
        for i in range(hi - lo):
            images[i] = T.eval_transform(decode(self.paths[lo + i]), s)
        labels[:hi - lo] = self.labels[lo:hi]
        mask[:hi - lo] = True
        return images, labels, mask


class Batches:
    """An iterator over a grain pipeline's elements; ``close()`` stops its workers."""

    def __init__(self, it, length: int | None = None):
        self._it = it
        self._length = length

    def __iter__(self) -> "Batches":
        return self

    def __next__(self):
        return next(self._it)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("the training iterator is infinite")
        return self._length

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _allow_unparsed_grain_flags() -> None:
    """Works around google/grain#1355 in grain 0.2.18 (fixed upstream by #1362, not released).

    With JAX installed, ``mp_prefetch`` reads grain's own command-line flag
    ``grain_enable_multiprocess_worker_profiling`` and fails with UnparsedFlagAccessError in
    any program that has not parsed command-line flags (tests, notebooks, library use). Like
    the upstream fix, which falls back to the flag's default, this marks only that one grain
    flag as present (keeping its default, False) when flags are unparsed; grain does the same
    for its debug flags in its workers. hjax defines and parses no flags here.
    """
    from grain._src.core import profiler
    holder = getattr(profiler, "_GRAIN_ENABLE_MULTIPROCESS_WORKER_PROFILING", None)
    registry = getattr(getattr(profiler, "flags", None), "FLAGS", None)
    if holder is None or registry is None or registry.is_parsed():
        return
    registry[holder.name].present = True


def _iterate(ds, workers: int, buffer: int):
    import grain
    if workers < 0:
        raise ConfigError(f"workers={workers} must be >= 0")
    if workers > 0:
        _allow_unparsed_grain_flags()
    # In each process one thread builds elements (the work is per batch, already parallel
    # across processes); workers=0 runs everything in the calling thread.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if workers == 0 else 1,
                                                 prefetch_buffer_size=0 if workers == 0 else 1))
    if workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=buffer))
    return iter(it_ds)


def train_batches(domains: Sequence[tuple[Sequence[str], Sequence[int]]], batch_size: int,
                  image_size: int, seed: int, start_step: int = 0, augment: bool = True,
                  workers: int = 2, buffer: int = 2) -> Batches:
    """Infinite (images [E, B, H, W, 3] float32, labels [E, B] int32), step ``start_step`` on.

    ``domains``: [(paths, labels)] of the training domains (e.g. the "in" splits). ``buffer``:
    batches each worker keeps ready.
    """
    import grain
    for name, value in (("batch_size", batch_size), ("image_size", image_size)):
        if value < 1:
            raise ConfigError(f"{name}={value} must be a positive integer")
    if seed < 0 or start_step < 0:
        raise ConfigError(f"seed={seed} and start_step={start_step} must be >= 0")
    fn = TrainBatch(_as_domains(domains), batch_size, image_size, int(seed), augment)
    ds = grain.MapDataset.range(int(start_step), sys.maxsize).map(fn)
    return Batches(_iterate(ds, workers, buffer))


def eval_batches(paths: Sequence[str], labels: Sequence[int], image_size: int,
                 batch_size: int, workers: int = 0, buffer: int = 2) -> Batches:
    """Finite (images [b, H, W, 3], labels [b], mask [b]) over every example once, in order."""
    import grain
    paths = np.asarray(paths, dtype=str)
    labels = np.asarray(labels, dtype=np.int32)
    if paths.shape != labels.shape or paths.ndim != 1:
        raise ConfigError(f"paths {paths.shape} and labels {labels.shape} must be 1-D of one "
                          f"length")
    if batch_size < 1 or image_size < 1:
        raise ConfigError(f"batch_size={batch_size} and image_size={image_size} must be "
                          f"positive")
    n_batches = -(-len(paths) // batch_size)
    ds = grain.MapDataset.range(n_batches).map(EvalBatch(paths, labels, image_size, batch_size))
    return Batches(_iterate(ds, workers, buffer), n_batches)
