#!/usr/bin/env bash
# ColoredMNIST with every restart of a method in one compiled program, on one accelerator.
#
#   OUT=/some/dir HJAX_DATA_DIR=/dir/with/mnist bash experiments/gpu/colored_mnist.sh
#
# Run from the repository root; writes only under "$OUT/cmnist/" and /tmp. About 4 minutes at
# most (each part under its own timeout):
#   (a) one method (hgp), 10 restarts x 501 steps, vmapped: wall including compile, compile
#       count (experiments/bench_restarts.py)                  -> a_hgp.md, a_hgp.log
#   (b) make reproduce's runs in one process (8 methods x 10 restarts, both label-shift
#       splits x 5), one line per run with its ETA, persistent compile cache in /tmp;
#       then the table compared with the committed results/  -> b_reproduce.log, b_compare.md
#   (c) bench_train.py with 10 restarts per program: HGP, exact_diag, Hutchinson (150
#       probes) relative to ERM                                 -> c_bench_train.md
# CMNIST_TINY=1: synthetic data and tiny sizes (a check of the script on a CPU), with the
# timeouts multiplied by TIMEOUT_SCALE (default 1; a loaded CPU needs more).
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/hjax-out}"
DIR="$OUT/cmnist"
mkdir -p "$DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
S="${TIMEOUT_SCALE:-1}"
if [ "${CMNIST_TINY:-0}" = 1 ]; then
  A="--fake_data --hidden_dim=16 --restarts=3 --steps=12"
  B="--fake_data --hidden_dim=16 --num_probes=4 --restarts=3 --label_shift_restarts=2 --steps=12"
  C="--fake_data --restarts=3 --steps=1 --rounds=1"
else
  A="--restarts=10 --steps=501"
  B=""
  C="--restarts=10 --steps=5 --rounds=3"
fi
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$DIR/devices.txt"

echo "== (a) hgp, restarts vmapped"
t0=$(date +%s%N)
timeout $((45 * S)) "$PY" experiments/bench_restarts.py --methods=hgp --modes=vmap $A \
  --scratch_dir=/tmp/cmnist-a --output="$DIR/a_hgp.md" > "$DIR/a_hgp.log" 2>&1
echo "rc=$? process wall $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$DIR/a_hgp.log"
cat "$DIR/a_hgp.md" 2>/dev/null

echo "== (b) every table run in one process"
rm -rf /tmp/cmnist-jax-cache
t0=$(date +%s%N)
timeout $((125 * S)) "$PY" -m hjax.cli.reproduce --output_root="$DIR/reproduce" \
  --compilation_cache_dir=/tmp/cmnist-jax-cache $B 2>&1 | grep -v "^WARNING" > "$DIR/b_reproduce.log"
echo "rc=${PIPESTATUS[0]} process wall $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$DIR/b_reproduce.log"
cat "$DIR/b_reproduce.log"
timeout 20 "$PY" - "$DIR/reproduce" > "$DIR/b_compare.md" 2>&1 <<'PYEOF'
import json, os, sys
def load(path):
    if not os.path.exists(path):
        return None
    return [json.loads(l) for l in open(path) if l.strip()]
root = sys.argv[1]
print("| run | restarts | test acc here / committed (mean, %) | max per-restart test-acc diff |")
print("|---|---|---|---|")
for folder in sorted(os.listdir(root)):
    for method in sorted(os.listdir(os.path.join(root, folder))):
        new = load(os.path.join(root, folder, method, "results.jsonl"))
        old = load(os.path.join("results", folder, method, "results.jsonl"))
        if not new:
            continue
        pairs = [(a, b) for a, b in zip(new, old or []) if a["status"] == b["status"] == "ok"]
        ok = [r["test_acc"] for r in new if r["status"] == "ok"]
        mean = 100 * sum(ok) / max(1, len(ok))
        ref = [b["test_acc"] for _, b in pairs]
        ref_mean = f"{100 * sum(ref) / len(ref):.1f}" if ref else "-"
        diff = f"{max(abs(a['test_acc'] - b['test_acc']) for a, b in pairs):.4f}" if pairs else "-"
        print(f"| {folder}/{method} | {len(ok)}/{len(new)} | {mean:.1f} / {ref_mean} | {diff} |")
PYEOF
cat "$DIR/b_compare.md"

echo "== (c) bench_train.py, restarts batched"
timeout $((55 * S)) "$PY" experiments/bench_train.py --methods=erm,hgp,exact_diag,hutchinson $C \
  --output="$DIR/c_bench_train.md" > "$DIR/c_bench_train.log" 2>&1
echo "rc=$?" | tee -a "$DIR/c_bench_train.log"
cat "$DIR/c_bench_train.md" 2>/dev/null || tail -5 "$DIR/c_bench_train.log"
