"""What the bench_*.py scripts share: compile time measured apart from the steps, and one
call's seconds with its arrays waited for. Their tables' machine line is
:func:`hjax.io.provenance.machine_line`."""

from __future__ import annotations

import time

import jax

from hjax.io.results import write_atomic


def compile_timed(jitted, *args):
    """(compiled program, seconds to lower and compile ``jitted`` for ``args``)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def call_seconds(fn, *args):
    """(seconds, outputs) of ``fn(*args)``; JAX dispatches asynchronously, so the clock
    stops only once every output array is ready."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, out


def emit_table(lines, output: str | None) -> str:
    """The Markdown table of ``lines``: printed, and written to ``output`` (atomically)."""
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if output:
        write_atomic(output, table)
    return table
