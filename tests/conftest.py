"""Suite-wide test set-up.

XLA's cheapest compile mode: the suite is dominated by compiling many small programs (each
run, sweep job and vmapped group compiles its own), and this mode cuts that ~2.5x on CPU
without changing what the tests check (the same programs, less optimized). The env var
reaches the experiment scripts the tests start as subprocesses; set
JAX_DISABLE_MOST_OPTIMIZATIONS=0 to run the suite fully optimized.
"""

import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations",
                  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] not in ("0", "false", "False"))
