r"""Benchmark: median full-batch train-step time per method, relative to ERM, in one process.

    python experiments/bench_train.py [--methods=erm,hgp,...] [--steps=5 --rounds=3] \
        [--restarts=10] [--output=FILE.md]

The IRM-protocol ColoredMNIST step (2 domains x 25,000 examples, MLP 392-390-390-1) exactly
as experiments/run.py compiles it. Compile time is measured from ``lower().compile()`` and
reported separately; the first timed step is a warm-up and is not counted. Each timed step
of a method is paired with an adjacent timed ERM step and the ratio is taken per pair.

``plain_erm`` is always timed too: an independent, minimal JAX/optax ERM step on the same
data and model (:func:`plain_erm_step`), so that every run prints "hjax erm / plain erm",
the overhead of hjax's protocol step over plain JAX on the same machine in the same run.

``--restarts=R`` times the step as ``make reproduce`` runs it: R restarts (R data draws, R
initializations) as one ``vmap``ped program (hjax.protocols.irm_cmnist.loop); a timed
step is then one step of all R restarts, for every method and for ``plain_erm`` alike.
"""

from __future__ import annotations

import statistics
import sys

import jax
import jax.numpy as jnp
from absl import flags

from hjax.cli import exit_usage, parse_flags

from hjax import data
from hjax.data import sharding
from hjax.protocols.irm_cmnist import train
from hjax.models import irm_mlp
from hjax.io.provenance import machine_line

from _bench import call_seconds, compile_timed, emit_table

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["erm", "irm", "vrex", "fishr", "hgp", "hutchinson",
                   "hutchinson_shared", "exact_diag"],
                  "methods to time (erm is always included as the reference)")
flags.DEFINE_integer("steps", 5, "timed steps per method and round")
flags.DEFINE_integer("rounds", 3, "rounds over all methods (median of all timed steps)")
flags.DEFINE_integer("num_devices", None, "devices (default: all visible)")
flags.DEFINE_string("curvature", "closed_form", "closed_form or autodiff")
flags.DEFINE_integer("restarts", 1, "restarts per program: R > 1 vmaps the step over R "
                     "restarts (R data draws and initializations), as run.py does")
flags.DEFINE_bool("fake_data", False, "small synthetic data (tests)")
flags.DEFINE_string("output", None, "also write the Markdown table here")


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def compile_method(method, batch, mesh, curvature, restarts=1):
    """(run one step, compile seconds): the compiled step with its own state and key.
    ``restarts > 1``: ``batch`` is [R, E, n, ...] and the step is vmapped over R."""
    model = irm_mlp()
    hp = train.method_hparams(method, curvature=curvature)
    init, step_fn = train.make_init_and_step(model, method, hp,
                                          merge_domains=mesh.devices.size == 1)
    shape = (1,) + batch.images.shape[2 if restarts == 1 else 3:]
    if restarts == 1:
        state, key = init(model.init(jax.random.key(0), jnp.zeros(shape))), jax.random.key(1)
    else:
        step_fn = jax.vmap(step_fn)
        state = _stack([init(model.init(jax.random.fold_in(jax.random.key(0), r),
                                        jnp.zeros(shape))) for r in range(restarts)])
        key = jax.random.split(jax.random.key(1), restarts)
    holder = {"state": sharding.replicate(mesh, state)}
    key = sharding.replicate(mesh, key)
    compiled, compile_s = compile_timed(jax.jit(step_fn, donate_argnums=0), holder["state"],
                                        batch, key)

    def one_step():
        holder["state"], m = compiled(holder["state"], batch, key)
        jax.block_until_ready(m)

    one_step()                                            # warm-up
    return one_step, compile_s


def plain_erm_step(envs, lr, l2_weight, hidden=(390, 390), restarts=None):
    """(run one step, compile seconds) of an independent, minimal JAX/optax ERM step.

    The reference that hjax's ERM step is measured against: nothing from hjax but the data.
    The same examples (every domain's, as one [sum_e n_e, 392] array), the IRM-protocol MLP
    392-390-390-1 (Xavier-uniform kernels, zero biases), logistic loss averaged per domain
    and then over domains, l2_weight * sum of squares of all params, full-batch Adam,
    jit with the state donated. No padding, weights, sharding or metrics.
    ``restarts``: a list of R such lists of environments (equal sizes), the step vmapped
    over them with R initializations (``envs`` is then ignored).
    """
    import numpy as np
    import optax

    def arrays(envs):
        return (np.concatenate([e.images.reshape(len(e.labels), -1) for e in envs]),
                np.concatenate([e.labels for e in envs]))

    def init(key):
        keys = jax.random.split(key, len(dims) - 1)
        return [(jax.nn.initializers.xavier_uniform()(k, (a, b)), jnp.zeros((b,)))
                for k, a, b in zip(keys, dims[:-1], dims[1:])]

    parts = restarts or [envs]
    sizes = [len(e.labels) for e in parts[0]]
    xs, ys = zip(*[arrays(p) for p in parts])
    x, y = jnp.asarray(np.stack(xs), jnp.float32), jnp.asarray(np.stack(ys), jnp.float32)
    bounds = np.cumsum([0] + sizes)
    dims = (x.shape[-1],) + tuple(hidden) + (1,)
    if restarts is None:
        x, y, params = x[0], y[0], init(jax.random.key(0))
    else:
        params = _stack([init(jax.random.fold_in(jax.random.key(0), r))
                         for r in range(len(restarts))])
    optimizer = optax.adam(lr)

    def loss_fn(params, x, y):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        nll = optax.sigmoid_binary_cross_entropy(h[:, 0], y)
        if len(set(sizes)) == 1:              # equal domains: one reshape, no slicing
            risk = jnp.mean(jnp.mean(nll.reshape(len(sizes), -1), axis=1))
        else:
            risk = jnp.mean(jnp.stack([jnp.mean(nll[a:b])
                                       for a, b in zip(bounds[:-1], bounds[1:])]))
        l2 = sum(jnp.sum(p ** 2) for p in jax.tree_util.tree_leaves(params))
        return risk + l2_weight * l2

    def step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    if restarts is None:
        holder = {"state": (params, optimizer.init(params))}
    else:
        holder = {"state": (params, jax.vmap(optimizer.init)(params))}
        step = jax.vmap(step)
    compiled, compile_s = compile_timed(jax.jit(step, donate_argnums=0), holder["state"], x, y)

    def one_step():
        holder["state"], loss = compiled(holder["state"], x, y)
        jax.block_until_ready(loss)

    one_step()                                            # warm-up
    return one_step, compile_s


def time_steps(one_step, steps):
    return [call_seconds(one_step)[0] for _ in range(steps)]


PLAIN = "plain_erm"


def _stack_host(trees):
    import numpy as np
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    del argv
    for name in ("steps", "rounds", "restarts"):
        if getattr(FLAGS, name) < 1:
            exit_usage(f"--{name}={getattr(FLAGS, name)} must be a positive integer")
    mnist = data.fake_mnist() if FLAGS.fake_data else data.load_mnist()
    envs = data.make_environments("colored_mnist", seed=0, mnist=mnist)
    mesh = sharding.make_mesh(FLAGS.num_devices)
    restarts = FLAGS.restarts
    if restarts == 1:
        batch = sharding.shard_examples(
            mesh, train.stack_domains([envs[0], envs[1]], mesh.devices.size))
        per_restart = None
    else:
        # R restarts' draws (data seeds 0..R-1), the images built on the device once.
        from hjax.data import irm_draws
        u8 = irm_draws.device_images(mnist.train_images)
        per_restart = [irm_draws.environments_from_draws(
            u8, irm_draws.draw_irm(mnist.train_labels, "colored_mnist", s))[:2]
            for s in range(restarts)]
        batch = sharding.shard_examples(mesh, _stack_host(
            [train.stack_domains(p, mesh.devices.size) for p in per_restart]), axis=2)
    methods = ["erm"] + [m for m in FLAGS.methods if m not in ("erm", PLAIN)] + [PLAIN]
    compiled = {m: compile_method(m, batch, mesh, FLAGS.curvature, restarts) for m in methods[:-1]}
    hp = train.method_hparams("erm")
    compiled[PLAIN] = plain_erm_step([envs[0], envs[1]], hp["lr"], hp["l2_weight"],
                                     restarts=per_restart)
    # Every timed step of a method is paired with an ERM step, and the ratio is taken per
    # pair: this machine's speed drifts by 10% over minutes (other tenants, frequency
    # scaling), which biased ratios of separately taken medians by as much; adjacent steps
    # share it. The order within a pair alternates, so that neither side always runs first.
    times = {m: [] for m in methods}
    ratios = {m: [] for m in methods[1:]}
    for r in range(FLAGS.rounds):
        for m in methods[1:]:
            for i in range(FLAGS.steps):
                if i % 2 == 0:
                    t_erm, t_m = time_steps(compiled["erm"][0], 1) + time_steps(compiled[m][0], 1)
                else:
                    t_m, t_erm = time_steps(compiled[m][0], 1) + time_steps(compiled["erm"][0], 1)
                times["erm"].append(t_erm)
                times[m].append(t_m)
                ratios[m].append(t_m / t_erm)
        print(f"round {r + 1}/{FLAGS.rounds}: " + ", ".join(
            f"{m} {1e3 * statistics.median(times[m]):.0f} ms" for m in methods), flush=True)

    def quartiles(xs):
        q1, q2, q3 = statistics.quantiles(xs, n=4) if len(xs) > 1 else xs * 3
        return statistics.median(xs), q1, q3

    vs_plain = quartiles([1.0 / x for x in ratios[PLAIN]])
    per = (f"a step: {restarts} restarts as one vmapped program, {restarts} data draws and inits"
           if restarts > 1 else "one restart per program")
    lines = [f"{FLAGS.rounds} rounds x {FLAGS.steps} steps per method ({per}), each step paired with "
             f"an ERM step (alternately just before and just after it); {FLAGS.curvature} "
             f"head curvature, on {machine_line(devices_used=mesh.devices.size)}. "
             "Relative: median of the paired ratios (their quartiles in brackets). "
             f"`{PLAIN}` is an independent minimal JAX/optax ERM step on the same data "
             "(experiments/bench_train.py, plain_erm_step).", "",
             f"**hjax erm / plain erm: {vs_plain[0]:.3f}x [{vs_plain[1]:.3f}, "
             f"{vs_plain[2]:.3f}]** (goal <= 1.05x)", "",
             "| method | step time (median) | relative to hjax ERM | compile time |",
             "|---|---|---|---|"]
    for m in methods:
        t, c = statistics.median(times[m]), compiled[m][1]
        if m == "erm":
            rel = "1.00x"
        else:
            med, q1, q3 = quartiles(ratios[m])
            rel = f"{med:.2f}x [{q1:.2f}, {q3:.2f}]"
        lines.append(f"| {m} | {1e3 * t:.0f} ms | {rel} | {c:.1f} s |")
    emit_table(lines, FLAGS.output)


if __name__ == "__main__":
    main()
