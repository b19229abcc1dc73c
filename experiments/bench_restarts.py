r"""Benchmark: a method's restarts one after another (loop) vs as one program (vmap), end to end.

    python experiments/bench_restarts.py [--methods=erm,hgp] [--restarts=10] [--steps=501] \
        [--modes=loop,vmap] [--output=FILE.md]

Runs the ColoredMNIST protocol (hjax.protocols.irm_cmnist.experiment.run_experiment, with the
paper's hyperparameters) per method and restart batching, into a scratch folder, and reports
for each: wall time of the whole run (data, compiles, steps, evaluation, writing), the
number of XLA compilations of the protocol's programs (train step, evaluation, alignment
tracking; JAX's backend-compile events by function name, so not the many tiny ones of eager
array ops; a persistent-cache hit is not one), the number and seconds of all compilations, the steady step time per restart (median group step / restarts), and
the largest difference of a restart's final test accuracy between the modes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from absl import flags

from hjax.cli import parse_flags

from _bench import emit_table

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["erm", "hgp", "hutchinson"], "methods to run")
flags.DEFINE_list("modes", ["loop", "vmap"], "restart batchings: loop, vmap")
flags.DEFINE_integer("restarts", 10, "restarts per run")
flags.DEFINE_integer("steps", 501, "steps per restart")
flags.DEFINE_string("dataset", "colored_mnist", "colored_mnist or colored_mnist_label_shift")
flags.DEFINE_integer("track_alignment_every", 0, "as experiments/run.py (0 = off)")
flags.DEFINE_integer("hidden_dim", None, "MLP width (default the protocol's 390)")
flags.DEFINE_bool("fake_data", False, "small synthetic data (tests)")
flags.DEFINE_string("scratch_dir", None, "where the runs write (default a temporary folder)")
flags.DEFINE_string("output", None, "also write the Markdown table here")

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# The jitted functions' names: train.make_init_and_step's step, make_eval's evaluate and
# alignment_tracking.make_alignment_fn's fn (vmap keeps a function's name).
_PROGRAMS = ("jit(step)", "jit(evaluate)", "jit(fn)")


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    import jax

    from hjax.io.provenance import machine_line
    from hjax.protocols.irm_cmnist.experiment import (Callbacks, ExperimentConfig,
                                                      run_experiment)

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiles.append((secs, kw.get("fun_name")))
        if name == _COMPILE_EVENT else None)
    scratch = FLAGS.scratch_dir or tempfile.mkdtemp(prefix="bench-restarts-")
    rows, finals = [], {}
    for method in FLAGS.methods:
        for mode in FLAGS.modes:
            config = ExperimentConfig(
                dataset=FLAGS.dataset, method=method, restarts=FLAGS.restarts,
                steps=FLAGS.steps, fake_data=FLAGS.fake_data, restart_batching=mode,
                track_alignment_every=FLAGS.track_alignment_every,
                hidden_dim=FLAGS.hidden_dim, checkpoint_every=0,
                output_dir=os.path.join(scratch, f"{method}-{mode}"))
            first = len(compiles)
            t0 = time.perf_counter()
            records = run_experiment(config, Callbacks(log=lambda m: None,
                                                       warn=lambda m: None))
            wall = time.perf_counter() - t0
            n = sum(f in _PROGRAMS for _, f in compiles[first:])
            n_all, secs = len(compiles) - first, sum(s for s, _ in compiles[first:])
            step = sorted(r["step_time_s"] for r in records)[len(records) // 2]
            finals[(method, mode)] = [r["test_acc"] for r in records]
            rows.append((method, mode, wall, n, n_all, secs, step))
            print(f"{method} {mode}: {wall:.1f} s wall, {n} programs compiled ({n_all} "
                  f"compilations in all, {secs:.1f} s), "
                  f"{1e3 * step:.1f} ms a step per restart", flush=True)

    def diff(method):
        runs = [finals.get((method, m)) for m in FLAGS.modes]
        if len(runs) < 2 or None in runs or None in sum(runs, []):
            return "-"
        return f"{max(abs(a - b) for a, b in zip(*runs[:2])):.1e}"

    lines = [f"{FLAGS.dataset}, {FLAGS.restarts} restarts x {FLAGS.steps} steps per method "
             f"on {machine_line()}; tracking every "
             f"{FLAGS.track_alignment_every or 'never'}.", "",
             "| method | restarts | wall | programs compiled | all compilations (seconds) | "
             "step per restart | "
             "max test-acc diff |", "|---|---|---|---|---|---|---|"]
    for method, mode, wall, n, n_all, secs, step in rows:
        lines.append(f"| {method} | {mode} | {wall:.1f} s | {n} | {n_all} ({secs:.1f} s) | "
                     f"{1e3 * step:.1f} ms | {diff(method)} |")
    emit_table(lines, FLAGS.output)


if __name__ == "__main__":
    main()
