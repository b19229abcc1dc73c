"""Benchmark: median full-batch train-step time per method, relative to ERM, in one process.

    python experiments/bench_train.py [--methods=erm,hgp,...] [--steps=20] [--output=FILE.md]

The IRM-protocol ColoredMNIST step (2 domains x 25,000 examples, MLP 392-390-390-1) exactly
as experiments/run.py compiles it. Compile time is measured from ``lower().compile()`` and
reported separately; the first timed step is a warm-up and is not counted.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from hjax import data, parallel, train  # noqa: E402
from hjax.models import irm_mlp  # noqa: E402
from hjax.results import write_atomic  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["erm", "irm", "vrex", "fishr", "hgp", "hutchinson",
                   "hutchinson_shared", "exact_diag"],
                  "methods to time (erm is always included as the reference)")
flags.DEFINE_integer("steps", 20, "timed steps per method (median reported)")
flags.DEFINE_integer("num_devices", None, "devices (default: all visible)")
flags.DEFINE_string("curvature", "closed_form", "closed_form or autodiff")
flags.DEFINE_bool("fake_data", False, "small synthetic data (tests)")
flags.DEFINE_string("output", None, "also write the Markdown table here")


def time_method(method, batch, mesh, steps, curvature):
    model = irm_mlp()
    hp = train.method_hparams(method, curvature=curvature)
    init, step_fn = train.make_train_step(model, method, hp)
    params = model.init(jax.random.key(0), jnp.zeros((1,) + batch.images.shape[2:]))
    state = parallel.replicate(mesh, init(params))
    key = parallel.replicate(mesh, jax.random.key(1))
    t0 = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=0).lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch, key)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compile_s


def main(argv):
    del argv
    mnist = data.fake_mnist() if FLAGS.fake_data else data.load_mnist()
    envs = data.make_environments("colored_mnist", seed=0, mnist=mnist)
    mesh = parallel.make_mesh(FLAGS.num_devices)
    batch = parallel.shard_examples(
        mesh, train.stack_domains([envs[0], envs[1]], mesh.devices.size))
    methods = ["erm"] + [m for m in FLAGS.methods if m != "erm"]
    results = {}
    for method in methods:
        results[method] = time_method(method, batch, mesh, FLAGS.steps, FLAGS.curvature)
        print(f"{method:12s} {1e3 * results[method][0]:9.1f} ms/step  "
              f"(compile {results[method][1]:.2f} s)", flush=True)
    erm = results["erm"][0]
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
               f"{mesh.devices.size} {jax.devices()[0].platform} device(s)")
    lines = [f"Median of {FLAGS.steps} steps, {FLAGS.curvature} head curvature, on {machine}.",
             "", "| method | step time | relative to ERM | compile time |", "|---|---|---|---|"]
    lines += [f"| {m} | {1e3 * t:.0f} ms | {t / erm:.2f}x | {c:.1f} s |"
              for m, (t, c) in results.items()]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if FLAGS.output:
        write_atomic(FLAGS.output, table)


if __name__ == "__main__":
    app.run(main)
