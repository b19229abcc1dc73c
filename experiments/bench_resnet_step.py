r"""Step time and memory of DomainBed's image protocol: ResNet, 3 domains x 32 images per step.

    python experiments/bench_resnet_step.py --arch=resnet50 --image_size=64 \
        --output=results/bench_resnet_step.md

One compiled training step (the DomainBed step of hjax.protocols.domainbed: forward, the
algorithm's objective, Adam) per algorithm, on random images and labels (speed does not
depend on the values). Each timed step of an algorithm is paired with an adjacent ERM step
and the ratio is taken per pair (as experiments/bench_train.py does), so load changes on a
shared machine cancel. Compile times are reported separately. Memory: XLA's buffer
assignment of each compiled step (temporaries plus outputs and arguments), and the extra
temporaries of each penalty over ERM for a DomainNet-sized head (345 classes) at the same
batch. Hutchinson uses the authors' DomainBed setting, 300 probes.

The paper's setting is 224 px; on a CPU use a reduced --image_size and say so (the table
records it). The backbone's cost grows with the pixels while the head terms do not, so
ratios at 224 are at most those at reduced resolution.
"""

from __future__ import annotations

import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from hjax.cli import parse_flags
from hjax.io.provenance import machine_line

from _bench import call_seconds, compile_timed, emit_table

FLAGS = flags.FLAGS
flags.DEFINE_enum("arch", "resnet50", ["resnet18", "resnet50"], "the ResNet")
flags.DEFINE_integer("image_size", 64, "input resolution (DomainBed: 224)")
flags.DEFINE_integer("batch_size", 32, "images per domain per step")
flags.DEFINE_integer("domains", 3, "training domains per step")
flags.DEFINE_integer("classes", 7, "classes of the timed runs (PACS: 7)")
flags.DEFINE_integer("memory_classes", 345, "classes for the penalty-memory table (DomainNet)")
flags.DEFINE_list("algorithms", ["hgp", "hutchinson", "exact_diag", "fishr"],
                  "algorithms timed against ERM")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
flags.DEFINE_integer("rounds", 3, "timing rounds")
flags.DEFINE_integer("steps", 3, "timed steps per algorithm per round")
flags.DEFINE_string("output", None, "write the Markdown table here")


def build(algorithm, num_classes):
    """(compiled step, state, images, labels, compile seconds, memory stats)."""
    from hjax.models import resnet_model
    from hjax.protocols.domainbed.hparams import default_hparams
    from hjax.protocols.domainbed.trainer import base_key, init_state, make_host_batch_step

    hp = default_hparams(algorithm, "domain_net" if num_classes == 345 else "pacs")
    dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
    model = resnet_model(FLAGS.arch, num_classes, dtype=dtype)
    s, e, b = FLAGS.image_size, FLAGS.domains, FLAGS.batch_size
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(e, b, s, s, 3)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, num_classes, size=(e, b)).astype(np.int32))
    state = init_state(algorithm, model, hp, images[0, :2], e, jax.random.key(0))
    step = make_host_batch_step(algorithm, model, hp, base_key(0))
    compiled, compile_s = compile_timed(step, state, images, labels)
    mem = compiled.memory_analysis()
    return compiled, state, images, labels, compile_s, mem


def penalty_memory(algorithm, num_classes):
    """(XLA memory stats, compile seconds) of one penalty's value and gradient on features."""
    from hjax.objectives import DOMAINBED_FORM, Inputs, get_objective
    from hjax.protocols.domainbed.algorithms import objective_hparams
    from hjax.protocols.domainbed.hparams import default_hparams

    d = 2048 if FLAGS.arch == "resnet50" else 512
    e, b = FLAGS.domains, FLAGS.batch_size
    objective = get_objective(algorithm)
    hp = objective_hparams(algorithm, default_hparams(algorithm, "domain_net"))
    head = {"kernel": jnp.zeros((d, num_classes)), "bias": jnp.zeros((num_classes,))}
    feats = jnp.ones((e, b, d))
    labels = jnp.zeros((e, b), jnp.int32)
    state = objective.init_state(head, e, hp, DOMAINBED_FORM)

    def penalty(head, feats, key):
        logits = feats @ head["kernel"] + head["bias"]
        return objective.penalty_fn(Inputs(head, feats, logits, labels), state, key, hp,
                                    DOMAINBED_FORM).penalty

    fn = jax.jit(jax.value_and_grad(penalty, argnums=(0, 1)))
    compiled, seconds = compile_timed(fn, head, feats, jax.random.key(0))
    return compiled.memory_analysis(), seconds


def timed(compiled, state, images, labels):
    seconds, (state, _) = call_seconds(compiled, state, images, labels)
    return seconds, state


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    names = ["erm"] + [a for a in FLAGS.algorithms if a != "erm"]
    runs = {a: list(build(a, FLAGS.classes)) for a in names}
    for a in names:                                   # one untimed step each (warm-up)
        _, runs[a][1] = timed(*[runs[a][i] for i in range(4)])
    ratios = {a: [] for a in names[1:]}
    erm_times = []
    if len(names) == 1:               # --algorithms= : ERM's host-batch step alone
        for _ in range(FLAGS.rounds * FLAGS.steps):
            t, runs["erm"][1] = timed(*[runs["erm"][j] for j in range(4)])
            erm_times.append(t)
    for r in range(FLAGS.rounds):
        for a in names[1:]:
            for i in range(FLAGS.steps):
                order = (a, "erm") if i % 2 else ("erm", a)
                t = {}
                for m in order:
                    t[m], runs[m][1] = timed(*[runs[m][j] for j in range(4)])
                ratios[a].append(t[a] / t["erm"])
                erm_times.append(t["erm"])
        if len(names) == 1:
            break
        print(f"round {r + 1}/{FLAGS.rounds}: " + ", ".join(
            f"{a} {statistics.median(ratios[a]):.2f}x" for a in names[1:]), flush=True)

    def quartiles(xs):
        if len(xs) < 2:
            return xs[0], xs[0], xs[0]
        q1, med, q3 = statistics.quantiles(xs, n=4)
        return med, q1, q3

    def temp_mb(mem):
        return mem.temp_size_in_bytes / 2 ** 20 if mem is not None else float("nan")

    lines = [f"{FLAGS.arch}, {FLAGS.domains} domains x {FLAGS.batch_size} images at "
             f"{FLAGS.image_size} px ({FLAGS.dtype}), {FLAGS.classes} classes; "
             f"{machine_line()}. " + (
                 f"{FLAGS.rounds} rounds x {FLAGS.steps} steps, each paired with an adjacent "
                 "ERM step; relative = median of the paired ratios [quartiles]." if names[1:]
                 else f"ERM alone: median of {FLAGS.rounds * FLAGS.steps} steps."), "",
             "| algorithm | step (median) | relative to ERM | compile | XLA temporaries |",
             "|---|---|---|---|---|"]
    erm_med = statistics.median(erm_times)
    print(f"erm_step_ms={1e3 * erm_med:.3f}", flush=True)     # read by bench_pipeline.py
    lines.append(f"| erm | {1e3 * erm_med:.0f} ms | 1.00x | {runs['erm'][4]:.1f} s | "
                 f"{temp_mb(runs['erm'][5]):.0f} MiB |")
    for a in names[1:]:
        med, q1, q3 = quartiles(ratios[a])
        lines.append(f"| {a} | {1e3 * med * erm_med:.0f} ms | {med:.2f}x [{q1:.2f}, {q3:.2f}] "
                     f"| {runs[a][4]:.1f} s | {temp_mb(runs[a][5]):.0f} MiB |")
    if FLAGS.memory_classes and names[1:]:
        lines += ["", f"The penalty alone with a {FLAGS.memory_classes}-class head (DomainNet), "
                  f"{FLAGS.domains} x {FLAGS.batch_size} features of width "
                  f"{2048 if FLAGS.arch == 'resnet50' else 512}: XLA temporaries of its "
                  "value and gradient (head and features), and its compile time.", "",
                  "| algorithm | temporaries | compile |", "|---|---|---|"]
        for a in names[1:]:
            mem, seconds = penalty_memory(a, FLAGS.memory_classes)
            lines.append(f"| {a} | {temp_mb(mem):.1f} MiB | {seconds:.1f} s |")
    emit_table(lines, FLAGS.output)


if __name__ == "__main__":
    main()
