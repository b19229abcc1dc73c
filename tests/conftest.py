"""Suite-wide test set-up: where XLA compiles cheaply, and in-process CLI calls.

XLA's optimization level (the rule):

* By default the suite runs with XLA's optimizations ON, as users run the library. Every
  numerical test (penalties, curvature, heads, diagnostics, objectives, models, ...) runs so.
* A test module that only checks the plumbing of end-to-end training runs (sweeps, resume
  after a kill, launchers, vmapped groups, CLI runs) opts into XLA's cheapest compile mode
  with ``pytestmark = pytest.mark.fast_compile`` (one test: ``@pytest.mark.fast_compile``);
  so may a numerical test whose cost is compiling a dense oracle (``jax.hessian`` of a small
  network), not the code under test.
  Those tests are dominated by compiling many small programs (each run, sweep job and
  vmapped group compiles its own), and the mode cuts that ~2.5x on CPU without changing what
  they check (the same programs, less optimized). While such a module (or test) runs,
  ``jax_disable_most_optimizations`` is on in this process and JAX_DISABLE_MOST_OPTIMIZATIONS=1
  is in os.environ, so the scripts it starts as subprocesses (and the jobs those launch)
  compile cheaply too; both are restored afterwards, and JAX's in-memory compile caches are
  cleared at each switch, so no executable compiled in one mode is reused in the other.
* JAX_DISABLE_MOST_OPTIMIZATIONS=1 in the environment runs the whole suite in the cheap mode,
  =0 runs everything optimized (the marker is then ignored).

``pytest -n 2`` (pytest-xdist, what ``make test`` runs) and plain ``pytest`` both work.

Precision: every test runs at full float32 precision, on CPU and GPU alike (tests/precision.py).
Backends: a test about XLA:CPU itself (several fake host devices) runs its subprocess with
``JAX_PLATFORMS=cpu``, so it checks the same thing on a GPU machine; a test whose expectation
depends on the backend states both (e.g. ``resolve_batching("auto")``).
"""

from __future__ import annotations

import collections
import importlib
import os
import shutil
import sys
import tempfile

import pytest

import jax

import precision

# Full float32 matmuls and convolutions on every backend (no TF32 on GPUs): tests/precision.py.
precision.configure_jax()

_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"
_FORCED = os.environ.get(_ENV)           # the user's choice for the whole suite, if any
if _FORCED is not None:
    jax.config.update("jax_disable_most_optimizations", _FORCED not in ("0", "false", "False"))

# One persistent compilation cache for the session (a fresh folder per run, shared with the
# xdist workers and the subprocesses tests start, through the environment): end-to-end runs
# build fresh closures and compile the same programs again, and a hit skips XLA. Results are
# unchanged: the key covers the program and every compile option.
_SESSION_CACHE = "HJAX_TEST_JAX_CACHE"
if _SESSION_CACHE not in os.environ:
    os.environ[_SESSION_CACHE] = tempfile.mkdtemp(prefix="hjax-test-jax-cache-")
    _OWN_CACHE = True
else:
    _OWN_CACHE = False
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ[_SESSION_CACHE])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_unconfigure(config):
    # The process that made the session cache (the xdist controller) removes it.
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ[_SESSION_CACHE], ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fast_compile: plumbing of end-to-end runs; XLA's cheapest compile mode "
        "for this module or test and the subprocesses it starts (see tests/conftest.py)")


class _FastCompile:
    """Switches XLA's cheap compile mode on (in-process and for subprocesses) and back, with
    a persistent compilation cache shared by the runs it covers: end-to-end runs build fresh
    closures per run (and subprocesses start cold), so the same program would otherwise be
    compiled again by every run. The cache key covers the program and the compile options
    (the cheap mode included), so results are unchanged."""

    SETTINGS = {"jax_compilation_cache_dir": ("JAX_COMPILATION_CACHE_DIR", None),
                "jax_persistent_cache_min_compile_time_secs":
                    ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0)}

    def __init__(self):
        self.depth = 0
        self.saved = {}

    def enter(self, cache_dir):
        from jax._src import compilation_cache
        self.depth += 1
        if self.depth > 1:
            return
        jax.clear_caches()
        if _FORCED is None:
            jax.config.update("jax_disable_most_optimizations", True)
            os.environ[_ENV] = "1"
        self.saved = {k: (getattr(jax.config, k), os.environ.get(env))
                      for k, (env, _) in self.SETTINGS.items()}
        for k, (env, value) in self.SETTINGS.items():
            value = cache_dir if value is None else value
            jax.config.update(k, value)
            os.environ[env] = str(value)
        compilation_cache.reset_cache()

    def exit(self):
        from jax._src import compilation_cache
        self.depth -= 1
        if self.depth > 0:
            return
        jax.clear_caches()
        if _FORCED is None:
            jax.config.update("jax_disable_most_optimizations", False)
            os.environ.pop(_ENV, None)
        for k, (env, _) in self.SETTINGS.items():
            value, env_value = self.saved[k]
            jax.config.update(k, value)
            if env_value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = env_value
        compilation_cache.reset_cache()


_fast_compile = _FastCompile()


@pytest.fixture(scope="session")
def _fast_compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fast-compile-jax-cache"))


def _fast_compile_if_marked(request, cache):
    marked = request.node.get_closest_marker("fast_compile") is not None
    if marked:
        _fast_compile.enter(cache)
    yield
    if marked:
        _fast_compile.exit()


@pytest.fixture(scope="module", autouse=True)
def _fast_compile_module(request, _fast_compile_cache):
    # Module scope (and autouse, so before the module's other module-scoped fixtures):
    # expensive module-scoped set-ups of a marked module compile cheaply too.
    yield from _fast_compile_if_marked(request, _fast_compile_cache)


@pytest.fixture(autouse=True)
def _fast_compile_test(request, _fast_compile_cache):
    yield from _fast_compile_if_marked(request, _fast_compile_cache)


CliResult = collections.namedtuple("CliResult", "returncode stdout stderr")


def _release_cli_flags(only: str | None = None) -> None:
    """Remove hjax.cli modules' flags from absl's global FLAGS (several modules define the
    same names, e.g. --output_dir, so two of them cannot be registered at once)."""
    from absl import flags
    registered = flags.FLAGS.flags_by_module_dict()
    for module, module_flags in list(registered.items()):
        if module.startswith("hjax.cli.") and (only is None or module == only):
            for f in list(module_flags):
                for name in (f.name, f.short_name):
                    if name and name in flags.FLAGS:
                        delattr(flags.FLAGS, name)


@pytest.fixture
def cli(capsys):
    """``cli("sweep", "status", "--output_dir=D")`` runs ``hjax.cli.sweep.main`` in this
    process, as ``python experiments/sweep.py status --output_dir=D`` would: returns
    (returncode, stdout, stderr) like subprocess.run. It skips a Python start-up and the
    imports, and compiled programs are shared with the test. The module is imported afresh
    for each call (its absl flags start unparsed) and its flags are removed afterwards."""

    def call(module: str, *args: str) -> CliResult:
        name = f"hjax.cli.{module}"
        _release_cli_flags()
        sys.modules.pop(name, None)
        capsys.readouterr()
        try:
            main = importlib.import_module(name).main
            try:
                main([f"{module}.py", *args])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):            # as the interpreter prints it
                    print(e.code, file=sys.stderr)
        finally:
            _release_cli_flags(name)
            sys.modules.pop(name, None)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return call
