r"""Benchmark: T DomainBed trials as one vmapped program vs T separate programs.

    python experiments/bench_vmap_trials.py [--algorithm=hgp] [--trials=1,2,4,8] \
        [--batch_size=64] [--steps=10] [--output=FILE.md]

Trials differ in trial seed (data, splits, init, minibatches), as the trials of a sweep do.
"Separate" is what a sweep without --vmap_trials does: one compiled program per job, run one
after another, so its time per step of all T trials is T x the median single-job step time,
and it compiles T programs. "One program" is ``hjax.protocols.domainbed.vmapped.make_group_step`` over the
T trials, with the trials side by side in every op (``vmap``, the GPU/TPU default) or as
independent per-trial ops in the program (``unroll``, the CPU default): one compile, one
dispatch per step for all. Median over --rounds x --steps timed steps after a warm-up step,
the configurations taking turns round by round;
compile times from ``lower().compile()``, reported separately.
"""

from __future__ import annotations

import statistics
import sys

from absl import flags

from hjax.cli import UsageError, exit_usage, parse_flags
from hjax.io.provenance import machine_line

from _bench import call_seconds, compile_timed, emit_table

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "domainbed_colored_mnist", "domainbed_colored_mnist or rotated_mnist")
flags.DEFINE_string("algorithm", "hgp", "a DomainBed algorithm")
flags.DEFINE_list("trials", ["1", "2", "4", "8"], "group sizes T to time")
flags.DEFINE_integer("batch_size", 64, "examples per training env per step")
flags.DEFINE_float("width_multiplier", 1.0, "MNIST_CNN widths x this")
flags.DEFINE_integer("steps", 5, "timed steps per round")
flags.DEFINE_integer("rounds", 3, "rounds; each times every configuration in turn (so that "
                     "a slow spell of the machine hits all of them), median over all steps")
flags.DEFINE_list("batchings", ["vmap", "unroll"], "trial batchings to time: vmap, unroll")
flags.DEFINE_bool("fake_data", False, "small synthetic data (tests)")
flags.DEFINE_string("output", None, "also write the Markdown table here")


def _compile(fn, args):
    """(compiled, state, rest, compile seconds) after one warm-up step."""
    compiled, compile_s = compile_timed(fn, *args)
    _, (state, _) = call_seconds(compiled, *args)
    return [compiled, state, args[1:], compile_s]


def _run_steps(entry, steps) -> list[float]:
    compiled, state, rest, _ = entry
    times = []
    for _ in range(steps):
        seconds, (state, _) = call_seconds(compiled, state, *rest)
        times.append(seconds)
    entry[1] = state
    return times


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    del argv
    import jax.numpy as jnp

    from hjax.protocols.domainbed import vmapped
    from hjax.protocols.domainbed.config import RunConfig
    from hjax.protocols.domainbed.identity import job_identity
    from hjax.protocols.domainbed.programs import load_job_data, make_model
    from hjax.protocols.domainbed.run import (initial_state,
                                    resolve_hparams)
    from hjax.protocols.domainbed.trainer import base_key, make_train_step
    from hjax.protocols.runs.members import stack

    try:
        sizes = sorted({int(t) for t in FLAGS.trials})
    except ValueError:
        exit_usage(f"--trials={','.join(FLAGS.trials)} must be positive integers")
    if any(b not in ("vmap", "unroll") for b in FLAGS.batchings):
        exit_usage(f"--batchings={','.join(FLAGS.batchings)}: each must be vmap or unroll")
    if not sizes or sizes[0] < 1 or FLAGS.steps < 1 or FLAGS.rounds < 1 or FLAGS.batch_size < 2:
        exit_usage("need --trials >= 1, --steps >= 1, --rounds >= 1 and --batch_size >= 2")

    def config(trial):
        return RunConfig(dataset=FLAGS.dataset, algorithm=FLAGS.algorithm, test_envs=(0,),
                         output_dir="/nonexistent", trial_seed=trial,
                         hparams_overrides={"batch_size": FLAGS.batch_size},
                         width_multiplier=FLAGS.width_multiplier, fake_data=FLAGS.fake_data)

    try:
        hp = resolve_hparams(config(0))
    except UsageError as e:
        exit_usage(str(e))
    model = make_model(config(0))
    quiet = lambda m: None  # noqa: E731
    n_max = max(sizes)
    datas = [load_job_data(config(t), FLAGS.batch_size) for t in range(n_max)]
    states = [initial_state(config(t), hp, job_identity(config(t), hp), model, datas[t],
                            quiet)[0] for t in range(n_max)]

    static = {k: v for k, v in hp.items() if vmapped.is_static_hparam(k)}
    dynamic = [k for k in hp if not vmapped.is_static_hparam(k)]
    entries = {"single": _compile(make_train_step(FLAGS.algorithm, model, hp, base_key(0)),
                                  (states[0], datas[0].train))}
    for t in sizes:
        args = (stack(states[:t]), vmapped._stack_train(datas[:t]),
                jnp.arange(t, dtype=jnp.int32), vmapped.hp_arrays([hp] * t, dynamic),
                jnp.stack([base_key(i) for i in range(t)]))
        for batching in FLAGS.batchings:
            step = vmapped.make_group_step(FLAGS.algorithm, model, static, batching)
            entries[t, batching] = _compile(step, args)
    times = {k: [] for k in entries}
    for r in range(FLAGS.rounds):
        for k, entry in entries.items():
            times[k] += _run_steps(entry, FLAGS.steps)
        print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)
    single_s, single_compile = statistics.median(times["single"]), entries["single"][3]
    print(f"single job: {1e3 * single_s:.1f} ms/step (compile {single_compile:.1f} s)")
    rows = []
    for t in sizes:
        for batching in FLAGS.batchings:
            group_s, group_compile = statistics.median(times[t, batching]), entries[t, batching][3]
            rows.append((t, batching, t * single_s, group_s, t * single_compile, group_compile))
            print(f"T={t} {batching}: separate {1e3 * t * single_s:.0f} ms, one program "
                  f"{1e3 * group_s:.0f} ms per step of all trials ({t * single_s / group_s:.2f}x);"
                  f" compile {t * single_compile:.1f} s vs {group_compile:.1f} s", flush=True)

    lines = [f"{FLAGS.dataset} / {FLAGS.algorithm}, batch {FLAGS.batch_size} per env, "
             f"width x{FLAGS.width_multiplier:g}, median of {FLAGS.rounds} x {FLAGS.steps} steps "
             f"(configurations interleaved), on {machine_line()}.",
             "", "| trials T | trial batching | separate programs: time per step of all T "
             "| one program | speed-up | compile: separate (T programs) | compile: one program |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {t} | {b} | {1e3 * sep:.0f} ms | {1e3 * vm:.0f} ms | {sep / vm:.2f}x | "
              f"{csep:.1f} s | {cvm:.1f} s |" for t, b, sep, vm, csep, cvm in rows]
    emit_table(lines, FLAGS.output)


if __name__ == "__main__":
    main()
