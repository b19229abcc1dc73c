"""Batches put on the device ahead of the step: a thread fetches host batches and issues their
``jax.device_put`` while the current step runs, keeping ``depth`` (2: double buffering)
batches in flight.

Several devices: :func:`batch_sharding` splits the batch axis over all of them (a 1-D mesh;
in a multi-process run, every process's devices),
and :func:`hjax.data.sharding.replicate` copies the train state to each, so the jitted step runs data-parallel
(XLA partitions it; the results are those of one device, to float rounding). One device:
plain ``device_put`` to it.

Order and errors: one thread, one queue, so batches come out in the order the iterator gives
them; an exception in the iterator (e.g. ImageDecodeError) is raised by ``next`` in the
caller's thread, once the batches before it are consumed.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hjax.data.sharding import DATA_AXIS, put as put_global

_END = object()


def batch_sharding(batch_axis_size: int, axis: int = 1, ndim: int | None = None,
                   devices=None) -> NamedSharding | None:
    """A sharding that splits array axis ``axis`` over every device, or None on one device
    (or when ``batch_axis_size`` does not divide evenly: then nothing is split)."""
    devices = list(devices if devices is not None else jax.devices())
    if len(devices) < 2 or batch_axis_size % len(devices):
        return None
    spec = [None] * (axis + 1)
    spec[axis] = DATA_AXIS
    return NamedSharding(Mesh(np.asarray(devices), (DATA_AXIS,)), PartitionSpec(*spec))


class DevicePrefetch:
    """Iterator of ``put(element)`` for the elements of ``it``, ``depth`` ahead."""

    def __init__(self, it: Iterator, put, depth: int = 2):
        self._it = it
        self._put = put
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            for element in self._it:
                item = (True, self._put(element))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put((True, _END))
        except BaseException as e:  # handed to the consumer, raised in its thread
            self._queue.put((False, e))

    def __iter__(self) -> "DevicePrefetch":
        return self

    def __next__(self):
        ok, item = self._queue.get()
        if not ok:
            raise item
        if item is _END:
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        while True:                          # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "DevicePrefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefetch_to_device(it: Iterator, depth: int = 2, sharding: NamedSharding | None = None,
                       device=None) -> DevicePrefetch:
    """Each element (a tuple of arrays) of ``it`` put on the device(s) ``depth`` ahead.

    With ``sharding`` every array of an element is split by it (arrays of lower rank than its
    spec, e.g. labels [E, B] against [E, B, ...], are split by the leading part of the spec);
    else they go to ``device`` (default: this process's first device). A sharding over the
    devices of several processes (a multi-process run, where every process's iterator yields
    the same batches) takes from each process only its own devices' part.
    """
    device = device if device is not None else jax.local_devices()[0]

    def put(element):
        if sharding is None:
            return jax.device_put(element, device)
        return tuple(put_global(x, _fit(sharding, np.ndim(x))) for x in element)

    return DevicePrefetch(iter(it), put, depth)


def _fit(sharding: NamedSharding, ndim: int) -> NamedSharding:
    spec = tuple(sharding.spec)[:ndim]
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))
