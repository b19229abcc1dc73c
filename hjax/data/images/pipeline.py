"""Input pipeline for DomainBed's image datasets, on grain: per-step batches that depend on
(seed, step) only.

Two forms of the same sampling:

- :func:`train_canvases` / :func:`eval_canvases` (the default): the host only reads and
  decodes. A training element is ``(canvases uint8 [E, B, C, C, 3], hw int32 [E, B, 2],
  labels int32 [E, B])``: each image decoded onto a fixed canvas (:mod:`~hjax.data.images.
  decode`), or copied from the decoded cache (:mod:`~hjax.data.images.decoded_cache`);
  augmentation happens on the device (:mod:`~hjax.data.images.device_transforms`), and the
  batches cross to it as uint8, a quarter of float32's bytes (:mod:`~hjax.data.images.
  prefetch`).
- :func:`train_batches` / :func:`eval_batches`: the PIL reference, decoding and augmenting on
  the host (:mod:`~hjax.data.images.pil_transforms`) into float32 ``[E, B, S, S, 3]``.

Sampling (both): step t draws B indices per training domain uniformly WITH replacement
(DomainBed's InfiniteDataLoader with replacement) from ``np.random.default_rng([seed, t])``;
the PIL path augments image i of domain e with ``np.random.default_rng([seed, t, e, i])``,
the device path with a key folded from (seed, t, e, i). So the batch of step t depends on
(seed, t) only: not on ``start_step``, the worker count or the prefetch depth; a run resumed at
step t sees exactly what the uninterrupted run saw. Each is a grain ``MapDataset`` over steps
whose element t is the whole batch, prefetched by ``mp_prefetch`` in ``workers`` processes
(0: in-process, no threads); batches arrive in step order. Eval iterators cover every
example once, in order, padded to full batches (padding: zeros, label 0, mask False).

A file that does not decode raises :class:`~hjax.data.images.registry.ImageDecodeError`
naming it (files PIL cannot identify are already skipped when the dataset is scanned).
Call ``close()`` on an iterator (or use it as a context manager) to stop its workers.

Ctrl-C and shared memory: the workers never see SIGINT (they are started from a thread that
blocks it, and processes inherit the mask; a worker started otherwise ignores it), so Ctrl-C
raises KeyboardInterrupt in the main process only, which closes the iterator and so stops
them: no worker tracebacks. grain hands each batch over in shared-memory blocks; their names
are unlinked as soon as a batch arrives (the arrays stay valid until dropped), so neither a
finished nor an interrupted run leaves blocks for the resource tracker to report as leaked.
"""

from __future__ import annotations

import signal
import sys
import threading
from multiprocessing import shared_memory
from typing import Sequence

import numpy as np

from hjax.data.images import pil_transforms as T
from hjax.data.images.decode import decode_into, decode_rgb
from hjax.errors import ConfigError

decode = decode_rgb


class FileImages:
    """Images decoded from their files at each request (picklable: paths only)."""

    def __init__(self, paths: Sequence[str], canvas: int):
        self.paths = np.asarray(paths, dtype=str)
        self.canvas = int(canvas)

    def __len__(self) -> int:
        return len(self.paths)

    def gather(self, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Decodes images ``idx`` into ``out`` [len(idx), C, C, 3] (zeros); their hw [n, 2]."""
        hw = np.empty((len(idx), 2), np.int32)
        for k, j in enumerate(idx):
            hw[k] = decode_into(self.paths[j], out[k])
        return hw


class CachedImages:
    """Rows ``rows`` of a decoded cache (picklable: the folder and rows; each process maps
    the arrays itself)."""

    def __init__(self, folder, rows: Sequence[int], canvas: int):
        self.folder = str(folder)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.canvas = int(canvas)
        self._arrays = None

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self._arrays is None:
            self._arrays = (np.load(f"{self.folder}/images.npy", mmap_mode="r"),
                            np.load(f"{self.folder}/hw.npy", mmap_mode="r"))
        images, hw = self._arrays
        rows = self.rows[np.asarray(idx)]
        out[...] = images[rows]
        return np.asarray(hw[rows], np.int32)


def cached_sources(cache, dataset, splits: Sequence[tuple[np.ndarray, np.ndarray]]
                   ) -> list[CachedImages]:
    """One CachedImages per ``(paths, labels)`` split of ``dataset``, by its scan order."""
    row_of = {p: i for i, p in enumerate(p for d in dataset.domains for p in d.paths)}
    return [CachedImages(cache.folder, [row_of[p] for p in paths], cache.canvas)
            for paths, _ in splits]


def step_indices(seed: int, step: int, sizes: Sequence[int], batch_size: int) -> np.ndarray:
    """[E, B] example indices of step ``step``: B per domain of ``sizes``, uniformly with
    replacement, from ``np.random.default_rng([seed, step])``: every image path (host,
    decoded cache, data on the device) draws these."""
    rng = np.random.default_rng([seed, step])
    return np.stack([rng.integers(0, n, batch_size) for n in sizes])


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
        return step_indices(self.seed, step, [len(p) for p, _ in self.domains],
                            self.batch_size)

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
    """An iterator over a grain pipeline's elements; ``close()`` stops its workers.

    ``workers``: the pipeline's worker processes; when there are any, the first element (when
    grain starts them) is fetched by :func:`_without_sigint`.
    """

    # How long close() waits for a first fetch still under way (the workers starting).
    _START_JOIN_S = 10.0

    def __init__(self, it, length: int | None = None, workers: int = 0):
        self._it = it
        self._length = length
        self._first_in_thread = workers > 0 and hasattr(signal, "pthread_sigmask")
        self._starter: threading.Thread | None = None

    def __iter__(self) -> "Batches":
        return self

    def __next__(self):
        if self._first_in_thread:
            self._first_in_thread = False
            element, self._starter = _without_sigint(lambda: next(self._it))
        else:
            element = next(self._it)
        return release_shared_memory(element)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("the training iterator is infinite")
        return self._length

    def close(self) -> None:
        if self._starter is not None:        # interrupted while the workers were starting
            self._starter.join(timeout=self._START_JOIN_S)
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _without_sigint(fn):
    """(fn(), the thread that ran it): fn run in a new thread that blocks SIGINT, so that the
    threads and processes it starts block it too (signal masks are inherited). The caller's
    wait is interruptible: Ctrl-C still reaches the main process at once."""
    outcome = {}

    def target():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            outcome["value"] = fn()
        except BaseException as e:  # raised in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="hjax-pipeline-start")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], thread


def _ignore_sigint(worker_index: int, worker_count: int) -> None:
    """grain's worker_init_fn: a worker started outside :func:`_without_sigint` ignores
    SIGINT too (the parent stops the workers when it is interrupted)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def release_shared_memory(element):
    """``element`` (a tuple of arrays, or one array) with the names of the shared-memory
    blocks behind its arrays unlinked now, their mappings kept.

    grain's receiving arrays unlink their block when garbage-collected (on a thread pool);
    arrays still referenced at exit (by device buffers aliasing host memory, a prefetch
    queue) never are, and the resource tracker then warns of leaked shared_memory objects.
    Unlinked at arrival, a block is freed once its arrays are gone, exit included.
    """
    for leaf in element if isinstance(element, tuple) else (element,):
        shm = getattr(leaf, "shm", None)
        # grain's SharedMemoryArray marks the array that owns its block's unlinking.
        if isinstance(shm, shared_memory.SharedMemory) and getattr(leaf, "_unlink_on_del",
                                                                   False):
            leaf._unlink_on_del = False
            shm.unlink()
    return element


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
            num_workers=workers, per_worker_buffer_size=buffer), worker_init_fn=_ignore_sigint)
        if hasattr(signal, "pthread_sigmask"):     # grain may start its threads here already
            return _without_sigint(lambda: iter(it_ds))[0]
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
    return Batches(_iterate(ds, workers, buffer), workers=workers)


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
    return Batches(_iterate(ds, workers, buffer), n_batches, workers=workers)


def _as_sources(domains, canvas: int) -> list[tuple[object, np.ndarray]]:
    """[(FileImages or CachedImages, labels)] from (paths or a source, labels) pairs."""
    out = []
    for i, (images, labels) in enumerate(domains):
        if not isinstance(images, (FileImages, CachedImages)):
            images = FileImages(images, canvas)
        labels = np.asarray(labels, dtype=np.int32)
        if labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(f"domain {i}: {len(images)} images and labels {labels.shape} "
                              f"must be of one length")
        if len(labels) == 0:
            raise ConfigError(f"domain {i} has no images")
        if images.canvas != canvas:
            raise ConfigError(f"domain {i}: images on a {images.canvas} px canvas, "
                              f"expected {canvas}")
        out.append((images, labels))
    if not out:
        raise ConfigError("train_canvases needs at least one domain")
    return out


class TrainCanvases:
    """Element t: step t's (canvases [E, B, C, C, 3] uint8, hw [E, B, 2], labels [E, B])."""

    def __init__(self, domains, batch_size: int, canvas: int, seed: int):
        self.domains = domains
        self.batch_size = batch_size
        self.canvas = canvas
        self.seed = seed

    def indices(self, step: int) -> np.ndarray:
        """[E, B] example indices of step ``step``: TrainBatch.indices, the same draws."""
        return step_indices(self.seed, step, [len(labels) for _, labels in self.domains],
                            self.batch_size)

    def __call__(self, step: int):
        idx = self.indices(int(step))
        e, b, c = len(self.domains), self.batch_size, self.canvas
        canvases = np.zeros((e, b, c, c, 3), np.uint8)
        hw = np.empty((e, b, 2), np.int32)
        labels = np.empty((e, b), np.int32)
        for k, (images, labs) in enumerate(self.domains):
            hw[k] = images.gather(idx[k], canvases[k])
            labels[k] = labs[idx[k]]
        return canvases, hw, labels


class EvalCanvases:
    """Element k: examples [k b, (k + 1) b) as (canvases, hw, labels, mask), padded."""

    def __init__(self, images, labels, batch_size: int):
        self.images = images
        self.labels = labels
        self.batch_size = batch_size

    def __call__(self, k: int):
        b, c = self.batch_size, self.images.canvas
        lo = int(k) * b
        hi = min(lo + b, len(self.labels))
        canvases = np.zeros((b, c, c, 3), np.uint8)
        hw = np.full((b, 2), c, np.int32)            # padding: a valid size, masked out
        labels = np.zeros((b,), np.int32)
        mask = np.zeros((b,), bool)
        hw[:hi - lo] = self.images.gather(np.arange(lo, hi), canvases[:hi - lo])
        labels[:hi - lo] = self.labels[lo:hi]
        mask[:hi - lo] = True
        return canvases, hw, labels, mask


class GroupCanvases:
    """Element t: the TrainCanvases elements of step t of several jobs (a vmapped group),
    stacked on a leading member axis: ([T, E, B, C, C, 3], [T, E, B, 2], [T, E, B])."""

    def __init__(self, members: Sequence[TrainCanvases]):
        self.members = list(members)

    def __call__(self, step: int):
        parts = [m(step) for m in self.members]
        return tuple(np.stack(xs) for xs in zip(*parts))


def _check_canvas_args(batch_size: int, canvas: int, seeds, start_step: int) -> None:
    for name, value in (("batch_size", batch_size), ("canvas", canvas)):
        if value < 1:
            raise ConfigError(f"{name}={value} must be a positive integer")
    if min(seeds) < 0 or start_step < 0:
        raise ConfigError(f"seed={min(seeds)} and start_step={start_step} must be >= 0")


def group_train_canvases(members, batch_size: int, canvas: int, seeds: Sequence[int],
                         start_step: int = 0, workers: int = 2, buffer: int = 2) -> Batches:
    """:func:`train_canvases` of several jobs at once (``members``: each job's domains, as
    ``train_canvases`` takes them; ``seeds``: each job's seed), stacked on a leading axis."""
    import grain
    _check_canvas_args(batch_size, canvas, seeds, start_step)
    fn = GroupCanvases([TrainCanvases(_as_sources(d, canvas), batch_size, canvas, int(s))
                        for d, s in zip(members, seeds)])
    ds = grain.MapDataset.range(int(start_step), sys.maxsize).map(fn)
    return Batches(_iterate(ds, workers, buffer), workers=workers)


def train_canvases(domains, batch_size: int, canvas: int, seed: int, start_step: int = 0,
                   workers: int = 2, buffer: int = 2) -> Batches:
    """Infinite (canvases uint8 [E, B, C, C, 3], hw int32 [E, B, 2], labels int32 [E, B]),
    step ``start_step`` on. ``domains``: [(paths or FileImages/CachedImages, labels)]."""
    import grain
    _check_canvas_args(batch_size, canvas, [seed], start_step)
    fn = TrainCanvases(_as_sources(domains, canvas), batch_size, canvas, int(seed))
    ds = grain.MapDataset.range(int(start_step), sys.maxsize).map(fn)
    return Batches(_iterate(ds, workers, buffer), workers=workers)


def eval_canvases(images, labels: Sequence[int], canvas: int, batch_size: int,
                  workers: int = 0, buffer: int = 2) -> Batches:
    """Finite (canvases [b, C, C, 3], hw [b, 2], labels [b], mask [b]) over every example
    once, in order. ``images``: paths or a FileImages/CachedImages."""
    import grain
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be positive")
    (source, labels), = _as_sources([(images, labels)], canvas)
    n_batches = -(-len(labels) // batch_size)
    ds = grain.MapDataset.range(n_batches).map(EvalCanvases(source, labels, batch_size))
    return Batches(_iterate(ds, workers, buffer), n_batches, workers=workers)
