"""Several processes, one run (``--distributed``): JAX's distributed runtime, one writer.

Every process runs the same program on the same data (each builds them alike from the
seeds) over a mesh of all processes' devices. Process 0 alone writes the run folder
(results, done markers, checkpoints) and speaks; the others read what it wrote, so every
process must see the same folder (one machine, or a shared filesystem). Where they read what
it may have just written or moved (a folder check with ``--overwrite``, a checkpoint to
resume), :func:`writer_first` runs process 0 first.

On CPUs the processes' collectives go through gloo (``jax_cpu_collectives_implementation``);
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` gives each process N devices.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
import numpy as np

from hjax.errors import ConfigError

T = TypeVar("T")
# The settings of a process of a run, named as the command lines' flags.
SETTINGS = ("distributed", "coordinator_address", "num_processes", "process_id")


class ProcessZeroFailed(ConfigError):
    """Process 0 stopped before the others could go on (its own error says why)."""


def check_settings(distributed: bool, coordinator_address: str | None,
                   num_processes: int | None, process_id: int | None) -> None:
    """ConfigError (one line naming the flag) for distributed settings that cannot work."""
    given = [f"--{name}" for name, value in (("coordinator_address", coordinator_address),
                                            ("num_processes", num_processes),
                                            ("process_id", process_id)) if value is not None]
    if not distributed:
        if given:
            raise ConfigError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} "
                              "for --distributed runs only")
        return
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num_processes={num_processes} must be a positive integer")
    if process_id is not None and num_processes is not None and \
            not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id={process_id} must be in 0..{num_processes - 1} "
                          f"(--num_processes={num_processes})")
    if coordinator_address is None:
        return          # detected on TPU, Slurm or MPI (jax.distributed.initialize)
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT "
                          "(process 0's host and a free port, e.g. 127.0.0.1:12355)")
    if num_processes is None or process_id is None:
        raise ConfigError("--distributed with --coordinator_address also needs "
                          "--num_processes and --process_id")


def initialize(distributed: bool, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
    """Joins the run's processes (``jax.distributed.initialize``) when ``distributed``; must
    come before any other JAX call. Calling it again, or after the command line did, is a
    no-op."""
    check_settings(distributed, coordinator_address, num_processes, process_id)
    if not distributed or _joined():
        return
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        # Older JAX had no CPU collectives by default: a CPU mesh over processes needs them.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError as e:
        if coordinator_address is None:
            raise ConfigError(f"--distributed found no TPU, Slurm or MPI cluster to take the "
                              f"processes from ({e}): give --coordinator_address=HOST:PORT, "
                              "--num_processes and --process_id") from None
        raise ConfigError(f"--distributed: {e}") from None
    except RuntimeError as e:       # JAX already in use, or the others never came
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--distributed: could not join the run's processes at "
                          f"{coordinator_address or 'the detected coordinator'} ({first})"
                          ) from None


def _joined() -> bool:
    is_initialized = getattr(jax.distributed, "is_initialized", None)
    if is_initialized is not None:
        return is_initialized()
    from jax._src.distributed import global_state     # JAX before is_initialized()
    return global_state.client is not None


def is_writer() -> bool:
    """Whether this process writes the run folder and speaks (process 0)."""
    return jax.process_index() == 0


def _broadcast_flag(ok: bool) -> bool:
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def writer_first(fn: Callable[[], T]) -> T:
    """``fn()`` on process 0, then on the others once it has returned, so that they read the
    folder as it left it (what it moved aside, the checkpoint it chose). ``fn`` must not
    write on the other processes. When it raised on process 0, the others raise
    :class:`ProcessZeroFailed` instead of waiting for it forever."""
    if jax.process_count() == 1:
        return fn()
    if is_writer():
        try:
            result = fn()
        except BaseException:
            _broadcast_flag(False)
            raise
        _broadcast_flag(True)
        return result
    if not _broadcast_flag(False):
        raise ProcessZeroFailed("process 0 stopped (its error says why); this process stops "
                                "too")
    return fn()
