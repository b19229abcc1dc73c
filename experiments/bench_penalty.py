r"""Benchmark: the Hessian-alignment penalty plus its gradient, per method and head size.

    python experiments/bench_penalty.py [--repeats=5] [--cases=a,b,c] [--output=FILE.md]

Times jax.value_and_grad of the penalty w.r.t. the head and the features (what a train step
pays), median of --repeats runs after a warm-up; compile time is measured separately from
``lower().compile()``. Cases: (a) 390 -> 1 logistic head, 2 domains x 25,000;
(b) 2048 x 65 softmax head, 3 domains x 32; (c) 2048 x 345 softmax head, 5 domains x 32.
exact_diag by autodiff needs P basis HVPs per domain: where that is too slow to run, it is
timed on one chunk of basis vectors and extrapolated (marked ~).
"""

from __future__ import annotations

import statistics
import sys

import jax
import jax.numpy as jnp
from absl import flags

from hjax.cli import parse_flags

import hjax
from hjax.core import linear_head
from hjax.io.provenance import machine_line
from hjax.io.results import write_atomic

from _bench import call_seconds, compile_timed

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 5, "timed runs per entry (median reported)")
flags.DEFINE_list("cases", ["a", "b", "c"], "which cases to run")
flags.DEFINE_string("output", None, "also write the Markdown table here")
flags.DEFINE_integer("autodiff_exact_max_params", 5000,
                     "run exact_diag by autodiff in full only up to this head size")

CASES = {
    "a": dict(d=390, c=1, e=2, n=25_000, loss="logistic", label="(a) 390x1 logistic, 2x25,000"),
    "b": dict(d=2048, c=65, e=3, n=32, loss="softmax", label="(b) 2048x65 softmax, 3x32"),
    "c": dict(d=2048, c=345, e=5, n=32, loss="softmax", label="(c) 2048x345 softmax, 5x32"),
}


def make_case(d, c, e, n, loss, **_):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    head = {"kernel": 0.02 * jax.random.normal(k1, (d, c)), "bias": jnp.zeros((c,))}
    feats = jax.nn.relu(jax.random.normal(k2, (e, n, d)))
    labels = jax.random.randint(k3, (e, n), 0, max(c, 2))
    return head, feats, labels


def penalty_fn(variant, loss):
    """(head, feats, labels, key) -> penalty for one benchmark row."""
    method, path, k = variant

    if path == "closed":
        def f(head, feats, labels, key):
            return hjax.linear_head_penalty(head, feats, labels, loss=loss, method=method,
                                            num_probes=k or 1, key=key)
        return f

    def loss_fn(head, batch):
        return linear_head.loss_value(head, batch["features"], batch["labels"], loss)

    def f(head, feats, labels, key):
        return hjax.hessian_penalty(loss_fn, head, {"features": feats, "labels": labels},
                                    method=method, num_probes=k or 1, key=key)
    return f


VARIANTS = [("hgp", "autodiff", None), ("hgp", "closed", None)] + \
    [("hutchinson", p, k) for k in (1, 10, 100, 300) for p in ("autodiff", "closed")] + \
    [("exact_diag", "autodiff", None), ("exact_diag", "closed", None)]


def variant_name(v):
    method, path, k = v
    via = "closed form" if path == "closed" else "autodiff"
    return f"{method}{f' K={k}' if k else ''} ({via})"


def time_compiled(fn, args, repeats):
    compiled, compile_s = compile_timed(jax.jit(fn), *args)
    jax.block_until_ready(compiled(*args))                 # warm-up
    times = [call_seconds(compiled, *args)[0] for _ in range(repeats)]
    return statistics.median(times), compile_s, compiled


def exact_autodiff_extrapolated(head, feats, labels, loss, chunk=1024):
    """Time value_and_grad of one chunk of basis HVPs on one domain; scale to P x E."""
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(head))

    def one_chunk(head, feats):
        def f(p):
            return linear_head.loss_value(p, feats[0], labels[0], loss)
        _, hvp_fn = jax.linearize(jax.grad(f), head)
        flat_idx = jnp.arange(chunk)

        def basis(i):
            flat, unravel = jax.flatten_util.ravel_pytree(head)
            return jax.flatten_util.ravel_pytree(
                hvp_fn(unravel(jnp.zeros_like(flat).at[i].set(1.0))))[0][i]
        return jnp.sum(jax.vmap(basis)(flat_idx) ** 2)

    med, compile_s, _ = time_compiled(jax.value_and_grad(one_chunk, argnums=(0, 1)),
                                      (head, feats), 3)
    return med * num_params / chunk * feats.shape[0], compile_s


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    del argv
    import jax.flatten_util  # noqa: F401  (used in exact_autodiff_extrapolated)
    rows, compile_rows = {}, {}
    key = jax.random.key(1)
    for case in FLAGS.cases:
        spec = CASES[case]
        head, feats, labels = make_case(**spec)
        num_params = sum(x.size for x in jax.tree_util.tree_leaves(head))
        for v in VARIANTS:
            name = variant_name(v)
            if v == ("exact_diag", "autodiff", None) and num_params > FLAGS.autodiff_exact_max_params:
                sec, comp = exact_autodiff_extrapolated(head, feats, labels, spec["loss"])
                rows.setdefault(name, {})[case] = f"~{sec:.3g} s (extrapolated)"
                compile_rows.setdefault(name, {})[case] = f"{comp:.2f}"
                print(f"{spec['label']:32s} {name:32s} ~{sec:.4g} s (extrapolated)", flush=True)
                continue
            fn = jax.value_and_grad(penalty_fn(v, spec["loss"]), argnums=(0, 1))
            med, comp, _ = time_compiled(fn, (head, feats, labels, key), FLAGS.repeats)
            rows.setdefault(name, {})[case] = f"{1e3 * med:.3g} ms"
            compile_rows.setdefault(name, {})[case] = f"{comp:.2f}"
            print(f"{spec['label']:32s} {name:32s} {1e3 * med:9.3f} ms  (compile {comp:.2f} s)",
                  flush=True)

    memory_lines = []
    if "c" in FLAGS.cases:
        head, feats, labels = make_case(**CASES["c"])
        for label, chunk in (("default chunks", None), ("one chunk of 300", 300)):
            def f(head, feats, labels, key, chunk=chunk):
                return hjax.linear_head_penalty_terms(
                    head, feats, labels, method="hutchinson", num_probes=300, key=key,
                    chunk_size=chunk).hessian
            compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(
                head, feats, labels, key).compile()
            mem = compiled.memory_analysis()
            temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
            if temp is not None:
                memory_lines.append(f"- (c) Hutchinson K=300 with {label}: XLA temporary "
                                    f"buffers {temp / 2**20:.0f} MiB")
        print("\n".join(memory_lines), flush=True)

    cases = FLAGS.cases
    header = ("| penalty + gradient | " + " | ".join(CASES[c]["label"] for c in cases)
              + " |\n|---|" + "---|" * len(cases) + "\n")
    body = "".join(f"| {name} | " + " | ".join(r.get(c, "") for c in cases) + " |\n"
                   for name, r in rows.items())
    comp = "".join(f"| {name} | " + " | ".join(r.get(c, "") for c in cases) + " |\n"
                   for name, r in compile_rows.items())
    table = (f"Median of {FLAGS.repeats} runs on {machine_line()}.\n\n{header}{body}\n"
             f"Compile time (s):\n\n{header}{comp}\n" + "\n".join(memory_lines) + "\n")
    print("\n" + table)
    if FLAGS.output:
        write_atomic(FLAGS.output, table)


if __name__ == "__main__":
    main()
