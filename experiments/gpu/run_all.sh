#!/usr/bin/env bash
# Every GPU measurement of this phase in one prepared run (the device is lent for minutes):
# ColoredMNIST restart batching, the image pipeline and ResNet steps, then the test suite.
# Run from the repository root with OUT set; wheels missing on the machine in .whl/, MNIST as
# a compressed .gpudata/mnist.npz. Each part runs under its own timeout and is packed into one
# archive under $OUT, so that a part that runs out of time still leaves the others' results.
set -u
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
exec > >(tee "$OUT/run_all.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HJAX_DATA_DIR="$PWD/.gpudata" XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/hjax-jax-cache
{ nvidia-smi -L; nproc; python3 -c "import jax, flax, optax; print('jax', jax.__version__,
  'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } > "$OUT/machine.txt" 2>&1
part() {   # part NAME SECONDS SCRIPT: run one part, pack its folder into $OUT/NAME.tgz
  local name=$1 seconds=$2 script=$3 start=$SECONDS
  mkdir -p "$OUT/$name"
  echo "== $name (limit ${seconds}s)"
  OUT_PART="$OUT/$name" timeout -k 10 "$seconds" bash "$script" > "$OUT/$name/log.txt" 2>&1
  echo "== $name: exit $? after $((SECONDS - start))s"
  tail -n 25 "$OUT/$name/log.txt"
  tar -czf "$OUT/$name.tgz" -C "$OUT" "$name" && rm -rf "${OUT:?}/$name"
}
part cmnist "${CMNIST_S:-200}" experiments/gpu/colored_mnist.sh
part images "${IMAGES_S:-135}" experiments/gpu/images.sh
export SUITE_TIMEOUT=${SUITE_TIMEOUT:-185} WORKERS=${WORKERS:-8}
part tests "${TESTS_S:-200}" experiments/gpu/test_suite.sh
