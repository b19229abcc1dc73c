r"""The ``--distributed`` flags of the training commands (colored_mnist, domainbed_train), and
what a command does with them before anything else touches JAX: join the run's processes
(hjax.protocols.runs.processes) and keep all but process 0 quiet.

Two processes on one machine (each its own terminal; PORT any free port)::

    python -m hjax.cli.colored_mnist ... --distributed \
        --coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=0   # and =1
"""

from __future__ import annotations

import logging
import sys

from absl import flags

from hjax.protocols.runs.processes import SETTINGS as NAMES


def define_flags(module_name: str) -> None:
    """Defines the flags as ``module_name``'s (its --help lists them); once per process."""
    if "distributed" in flags.FLAGS:
        return
    if module_name == "__main__":        # as absl names a script's own flags
        module_name = sys.argv[0]
    flags.DEFINE_bool("distributed", False,
                      "one of several processes of one run (jax.distributed.initialize; "
                      "docs/reproduction.md): process 0 writes --output_dir, which every "
                      "process must see, and prints; the others print only their errors",
                      module_name=module_name)
    flags.DEFINE_string("coordinator_address", None,
                        "with --distributed off TPU/Slurm/MPI: HOST:PORT of process 0",
                        module_name=module_name)
    flags.DEFINE_integer("num_processes", None, "with --distributed: number of processes",
                         module_name=module_name)
    flags.DEFINE_integer("process_id", None, "with --distributed: this process's index",
                         module_name=module_name)


def settings(flag_values) -> dict:
    """The distributed flags' values, by name."""
    return {name: getattr(flag_values, name) for name in NAMES}


def join(flag_values) -> bool:
    """Joins the run's processes when ``--distributed`` (a bad setting: ConfigError, one line,
    exit 2); whether this process speaks (process 0, or the only one). The others' hjax
    warnings are silenced: process 0 says the same."""
    from hjax.protocols.runs import processes
    processes.initialize(**settings(flag_values))
    if not flag_values.distributed or processes.is_writer():
        return True
    logging.getLogger("hjax").setLevel(logging.ERROR)
    return False
