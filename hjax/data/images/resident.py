"""A decoded cache held on the device(s) (``--data_on_device``): each step's batch is an
index gather there, and the host sends only the indices.

The host still draws the indices, with the sampling every image path uses
(:func:`hjax.data.images.pipeline.step_indices`: step t of a job depends on (seed, t) only),
and maps them to cache rows; the device gathers the uint8 canvases and their sizes and
augments them (:mod:`hjax.data.images.device_transforms`). The batches are thus the ones the
host pipeline would have sent, and a resumed job sees what the uninterrupted one saw.

Placement: on one device the cache is copied there whole; over several (a mesh axis
``data``, one or more processes) its rows are split evenly (padded with zero rows that no
index reaches), each process putting only the rows of its own devices, and XLA's gather
reads across them. Evaluation walks every split's rows in fixed-size chunks
(:func:`eval_table`), so it is one compiled program as well.

:func:`choose` decides ``auto`` from the cache's size against the free memory of the device
(on CPU: the host's available memory) and says why.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hjax.data.images.pipeline import step_indices
from hjax.data.sharding import DATA_AXIS
from hjax.errors import ConfigError

MODES = ("auto", "on", "off")
# auto: at most this fraction of the free memory (the rest: activations, the state).
AUTO_FRACTION = 0.5


class ResidentImages(NamedTuple):
    """The cache on the device(s): ``images`` uint8 [N', C, C, 3], ``hw`` int32 [N', 2]
    (N' >= N: zero rows pad it to a multiple of the devices it is split over)."""
    images: jax.Array
    hw: jax.Array


class MemberRows(NamedTuple):
    """What one job samples from: its seed, and per training domain the cache rows of its
    images and their labels."""
    seed: int
    rows: list[np.ndarray]
    labels: list[np.ndarray]


def cache_bytes(cache) -> int:
    return int(cache.images.nbytes + cache.hw.nbytes)


def free_device_bytes(devices=None) -> tuple[int | None, str]:
    """(bytes free on the fullest local device, what was measured), or (None, why not)."""
    devices = list(devices if devices is not None else jax.local_devices())
    stats = [d.memory_stats() if hasattr(d, "memory_stats") else None for d in devices]
    if all(s and "bytes_limit" in s for s in stats):
        free = min(s["bytes_limit"] - s.get("bytes_in_use", 0) for s in stats)
        return int(free), f"{devices[0].platform.upper()} memory free"
    if devices[0].platform == "cpu" and hasattr(os, "sysconf"):
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES")
            return int(pages * os.sysconf("SC_PAGE_SIZE")), "host memory available"
        except (ValueError, OSError):
            pass
    return None, "the device reports no memory figures"


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def choose(mode: str, cache, dataset: str, why_no_cache: str = "", devices=None
           ) -> tuple[bool, str]:
    """(whether the cache goes on the device, a sentence saying why). ``cache``: the
    verified decoded cache or None (``why_no_cache`` says why). ConfigError for a mode not
    in MODES, or ``on`` without a cache."""
    if mode not in MODES:
        raise ConfigError(f"--data_on_device={mode!r} is not valid; choose one of: "
                          f"{', '.join(MODES)}")
    if mode == "off":
        return False, "off (--data_on_device=off): batches from the host pipeline"
    if cache is None:
        if mode == "on":
            raise ConfigError(f"--data_on_device=on needs {dataset}'s decoded cache, and "
                              f"there is none: {why_no_cache}")
        return False, f"off: {why_no_cache}; batches from the host pipeline"
    devices = list(devices if devices is not None else jax.devices())
    need = -(-cache_bytes(cache) // len(devices))
    free, measured = free_device_bytes([d for d in devices
                                        if d.process_index == jax.process_index()])
    size = f"{dataset}'s decoded cache, {_gb(need)} per device"
    if mode == "on":
        return True, f"on (--data_on_device=on): {size}"
    if free is None:
        return False, f"off: {measured}, so auto cannot tell whether {size} fits"
    if need > AUTO_FRACTION * free:
        return False, (f"off: {size} is more than {AUTO_FRACTION:.0%} of the "
                       f"{_gb(free)} {measured}; batches from the host pipeline")
    return True, f"on: {size}, {_gb(free)} {measured}"


def _split_rows(host: np.ndarray, mesh: Mesh) -> jax.Array:
    """``host`` [N, ...] on the mesh, rows split over its devices (zero rows pad N)."""
    n = mesh.devices.size
    padded = -(-host.shape[0] // n) * n
    shape = (padded,) + host.shape[1:]

    def rows(index):
        lo, hi, _ = index[0].indices(padded)
        out = np.zeros((hi - lo,) + host.shape[1:], host.dtype)
        real = max(0, min(hi, host.shape[0]) - lo)
        out[:real] = host[lo:lo + real]
        return out[(slice(None),) + tuple(index[1:])]

    return jax.make_array_from_callback(shape, NamedSharding(mesh, P(DATA_AXIS)), rows)


def place(cache, mesh: Mesh | None = None) -> ResidentImages:
    """The decoded ``cache`` (memory maps) on the device, or split over ``mesh``'s."""
    if mesh is None or mesh.devices.size == 1:
        device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
        return ResidentImages(jax.device_put(np.asarray(cache.images), device),
                              jax.device_put(np.asarray(cache.hw, np.int32), device))
    return ResidentImages(_split_rows(cache.images, mesh),
                          _split_rows(np.asarray(cache.hw, np.int32), mesh))


def gather(resident: ResidentImages, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(canvases uint8 [..., C, C, 3], hw int32 [..., 2]) of cache rows ``rows`` [...]."""
    return resident.images[rows], resident.hw[rows]


def step_rows(members: Sequence[MemberRows], step: int, batch_size: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels), int32 [T, E, B]: the batch of step ``step`` of every member."""
    rows, labels = [], []
    for m in members:
        idx = step_indices(m.seed, step, [len(r) for r in m.rows], batch_size)
        rows.append(np.stack([r[i] for r, i in zip(m.rows, idx)]))
        labels.append(np.stack([y[i] for y, i in zip(m.labels, idx)]))
    return np.asarray(rows, np.int32), np.asarray(labels, np.int32)


def train_rows(members: Sequence[MemberRows], batch_size: int, start_step: int = 0):
    """Infinite (rows, labels) of :func:`step_rows`, step ``start_step`` on."""
    step = start_step
    while True:
        yield step_rows(members, step, batch_size)
        step += 1


class EvalTable(NamedTuple):
    """Every split of a job in one table of chunks: ``rows``, ``labels`` and ``split`` (the
    split's index; -1 pads the last chunk), each int32 [K, chunk]; ``sizes`` [S]."""
    rows: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    sizes: np.ndarray


def eval_table(splits: Sequence[tuple[np.ndarray, np.ndarray]], chunk: int) -> EvalTable:
    """:class:`EvalTable` of ``splits`` ([(cache rows, labels)]), in chunks of ``chunk``."""
    rows = np.concatenate([np.asarray(r, np.int64) for r, _ in splits])
    labels = np.concatenate([np.asarray(y, np.int64) for _, y in splits])
    split = np.concatenate([np.full(len(y), s) for s, (_, y) in enumerate(splits)])
    k = max(1, -(-len(rows) // chunk))
    pad = k * chunk - len(rows)

    def table(x, fill):
        return np.concatenate([x, np.full(pad, fill)]).astype(np.int32).reshape(k, chunk)

    return EvalTable(table(rows, 0), table(labels, 0), table(split, -1),
                     np.asarray([len(y) for _, y in splits], np.int64))
