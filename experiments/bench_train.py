"""Benchmark: median full-batch train-step time per method, relative to ERM, in one process.

    python experiments/bench_train.py [--methods=erm,hgp,...] [--steps=5 --rounds=3] [--output=FILE.md]

The IRM-protocol ColoredMNIST step (2 domains x 25,000 examples, MLP 392-390-390-1) exactly
as experiments/run.py compiles it. Compile time is measured from ``lower().compile()`` and
reported separately; the first timed step is a warm-up and is not counted. Each timed step
of a method directly follows a timed ERM step and the ratio is taken per pair.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time


import jax
import jax.numpy as jnp
from absl import flags

from hjax.cli import parse_flags

from hjax import data
from hjax.protocols import sharding
from hjax.protocols.irm_cmnist import train
from hjax.models import irm_mlp
from hjax.io.results import write_atomic

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["erm", "irm", "vrex", "fishr", "hgp", "hutchinson",
                   "hutchinson_shared", "exact_diag"],
                  "methods to time (erm is always included as the reference)")
flags.DEFINE_integer("steps", 5, "timed steps per method and round")
flags.DEFINE_integer("rounds", 3, "rounds over all methods (median of all timed steps)")
flags.DEFINE_integer("num_devices", None, "devices (default: all visible)")
flags.DEFINE_string("curvature", "closed_form", "closed_form or autodiff")
flags.DEFINE_bool("fake_data", False, "small synthetic data (tests)")
flags.DEFINE_string("output", None, "also write the Markdown table here")


def compile_method(method, batch, mesh, curvature):
    """(run one step, compile seconds): the compiled step with its own state and key."""
    model = irm_mlp()
    hp = train.method_hparams(method, curvature=curvature)
    init, step_fn = train.make_train_step(model, method, hp)
    params = model.init(jax.random.key(0), jnp.zeros((1,) + batch.images.shape[2:]))
    holder = {"state": sharding.replicate(mesh, init(params))}
    key = sharding.replicate(mesh, jax.random.key(1))
    t0 = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=0).lower(holder["state"], batch, key).compile()
    compile_s = time.perf_counter() - t0

    def one_step():
        holder["state"], m = compiled(holder["state"], batch, key)
        jax.block_until_ready(m)

    one_step()                                            # warm-up
    return one_step, compile_s


def time_steps(one_step, steps):
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    del argv
    for name in ("steps", "rounds"):
        if getattr(FLAGS, name) < 1:
            print(f"error: --{name}={getattr(FLAGS, name)} must be a positive integer",
                  file=sys.stderr)
            sys.exit(2)
    mnist = data.fake_mnist() if FLAGS.fake_data else data.load_mnist()
    envs = data.make_environments("colored_mnist", seed=0, mnist=mnist)
    mesh = sharding.make_mesh(FLAGS.num_devices)
    batch = sharding.shard_examples(
        mesh, train.stack_domains([envs[0], envs[1]], mesh.devices.size))
    methods = ["erm"] + [m for m in FLAGS.methods if m != "erm"]
    compiled = {m: compile_method(m, batch, mesh, FLAGS.curvature) for m in methods}
    # Every timed step of a method follows an ERM step, and the ratio is taken per pair:
    # this machine's speed drifts by 10% over minutes (other tenants, frequency scaling),
    # which biased ratios of separately taken medians by as much; adjacent steps share it.
    times = {m: [] for m in methods}
    ratios = {m: [] for m in methods[1:]}
    for r in range(FLAGS.rounds):
        for m in methods[1:]:
            for _ in range(FLAGS.steps):
                t_erm, t_m = time_steps(compiled["erm"][0], 1) + time_steps(compiled[m][0], 1)
                times["erm"].append(t_erm)
                times[m].append(t_m)
                ratios[m].append(t_m / t_erm)
        print(f"round {r + 1}/{FLAGS.rounds}: " + ", ".join(
            f"{m} {1e3 * statistics.median(times[m]):.0f} ms" for m in methods), flush=True)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
               f"{mesh.devices.size} {jax.devices()[0].platform} device(s)")
    lines = [f"{FLAGS.rounds} rounds x {FLAGS.steps} steps per method, each step paired with "
             f"an ERM step just before it; {FLAGS.curvature} head curvature, on {machine}. "
             "Relative: median of the paired ratios (their quartiles in brackets).",
             "", "| method | step time (median) | relative to ERM | compile time |",
             "|---|---|---|---|"]
    for m in methods:
        t, c = statistics.median(times[m]), compiled[m][1]
        if m == "erm":
            rel = "1.00x"
        else:
            q1, _, q3 = statistics.quantiles(ratios[m], n=4) if len(ratios[m]) > 1 else (
                ratios[m] * 3)
            rel = f"{statistics.median(ratios[m]):.2f}x [{q1:.2f}, {q3:.2f}]"
        lines.append(f"| {m} | {1e3 * t:.0f} ms | {rel} | {c:.1f} s |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if FLAGS.output:
        write_atomic(FLAGS.output, table)


if __name__ == "__main__":
    main()
