#!/usr/bin/env bash
# The whole test suite on a GPU machine: several pytest workers sharing one GPU.
#
#   OUT=/some/dir experiments/gpu/test_suite.sh [pytest paths or options...]
#
# Run from the repository root, with PYTHONPATH (or an install) giving this checkout's hjax and
# the test dependencies importable by $PY (default python3); HJAX_DATA_DIR points at the MNIST
# cache if the machine cannot fetch it. Writes $OUT/tests/junit.xml, $OUT/tests/pytest.log
# (the whole output, with the devices and package versions first) and $OUT/tests/summary.txt
# (pytest's last line and the exit code). Without arguments it runs tests/; arguments replace
# that (e.g. two files, to try the script on a CPU). Exit code: pytest's, or 124 if the suite
# ran past SUITE_TIMEOUT seconds (default 240).
set -u
PY=${PY:-python3}
OUT=${OUT:?set OUT to the folder the results go to}
WORKERS=${WORKERS:-4}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-240}
dest="$OUT/tests"
mkdir -p "$dest"
log="$dest/pytest.log"

# Workers share the GPU: no process may take most of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

{
  echo "== $(date -u +%FT%TZ) on $(hostname)"
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  "$PY" - <<'PYEOF'
import importlib, jax
print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
for name in ("flax", "optax", "chex", "orbax.checkpoint", "grain", "PIL", "matplotlib",
             "torch", "torchvision", "xdist"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:                      # report, do not stop: the suite says the rest
        print(name, "missing:", type(e).__name__)
PYEOF
} >"$log" 2>&1

parallel=()
if "$PY" -c "import xdist" 2>/dev/null && [ "$WORKERS" -gt 1 ]; then
  parallel=(-n "$WORKERS" --dist loadfile)
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tests)

echo "== $PY -m pytest ${parallel[*]} ${targets[*]} (timeout ${SUITE_TIMEOUT}s)" >>"$log"
timeout -k 10 "$SUITE_TIMEOUT" "$PY" -m pytest "${parallel[@]}" -rfEs --durations=15 \
  --junitxml="$dest/junit.xml" "${targets[@]}" >>"$log" 2>&1
rc=$?
{ tail -n 1 "$log"; echo "exit code $rc"; } >"$dest/summary.txt"
cat "$dest/summary.txt"
exit $rc
