r"""Where the DomainBed penalties lose precision when the ResNet computes in bfloat16.

    python experiments/bf16_precision.py [--image_size=32] [--batch_size=8] \
        [--output=results/bf16_precision_cpu.md]

One ResNet-18 (random weights), one batch of 3 domains x --batch_size random images, 7
classes; every objective of the DomainBed protocol evaluated on the same params, batch and
probes with the featurizer computing in float64 (the oracle: params, BN and head cast to
float64), float32, and bfloat16 (the path --dtype=bfloat16 runs: float32 params, features,
head and penalty). A last column runs the head and the penalty arithmetic in bfloat16 as
well (features and head params rounded to bfloat16), to show what keeping them in float32
buys. For each objective: the relative error ||x - x64|| / ||x64|| of its unweighted penalty
(the cross-entropy for ERM; HGP's and Hutchinson's two terms apart) and of its gradients
w.r.t. the head and w.r.t. the featurizer's params. Gradients reach the featurizer through
the features (jax.vjp of the featurizer; the chain rule, as the training step does).
"""

from __future__ import annotations

import sys
import time

import jax

jax.config.update("jax_enable_x64", True)          # the float64 oracle

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from hjax.cli import parse_flags  # noqa: E402
from hjax.io.provenance import machine_line  # noqa: E402
from hjax.io.results import write_atomic  # noqa: E402
from hjax.models import resnet_model  # noqa: E402
from hjax.models.linear_model import Model  # noqa: E402
from hjax.protocols.domainbed import algorithms, hparams  # noqa: E402
from hjax.protocols.domainbed.feature_objective import feature_objective  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 32, "input size (px)")
flags.DEFINE_integer("batch_size", 8, "examples per domain")
flags.DEFINE_string("output", None, "also write the Markdown table here")

DOMAINS, CLASSES = 3, 7
# The penalty-carrying objectives; the weights are inside HGP's / Hutchinson's logged
# penalty (tests/test_bfloat16_training.py's), the others' penalties are unweighted.
OWN_HPARAMS = {
    "erm": {}, "hgp": {"hgp_alpha": 2.5e-4, "hgp_beta": 2.5e-2},
    "hutchinson": {"hutchinson_alpha": 1e-3, "hutchinson_beta": 1e-1},
    "exact_diag": {"exact_diag_alpha": 1e-3, "exact_diag_beta": 1e-1},
    "fishr": {"fishr_penalty_anneal_iters": 0}, "coral": {},
    "irm": {"irm_penalty_anneal_iters": 0}, "vrex": {"vrex_penalty_anneal_iters": 0},
}
# Objective -> what its row measures: the logged penalty (the cross-entropy for ERM), and
# for the Hessian alignments their two terms too.
QUANTITIES = {"erm": ("nll",), "hgp": ("penalty", "hessian_term", "gradient_term"),
              "hutchinson": ("penalty", "hessian_term", "gradient_term"),
              "exact_diag": ("penalty", "hessian_term", "gradient_term")}
RUNS = ("float32", "bfloat16", "bfloat16 head")


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def _rel(x, ref) -> float:
    x, ref = (np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(t)])
              for t in (x, ref))
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def _featurize(model, f_params, images):
    """(features [E, B, d], vjp: features' cotangent -> featurizer params' gradient)."""
    e, b = images.shape[:2]
    flat = images.reshape((e * b,) + images.shape[2:])
    z, vjp = jax.vjp(lambda f: model.features({"featurizer": f}, flat), f_params)
    return z.reshape(e, b, -1), lambda g: vjp(g.reshape(e * b, -1).astype(z.dtype))[0]


def _objective(name, quantity, hp, labels, state):
    objective = feature_objective(name, hp)

    def value(head, features):
        _, (_, logs) = objective(head, features, labels, state, jax.random.key(7), 0)
        return logs[quantity]
    return jax.jit(jax.value_and_grad(value, argnums=(0, 1)))


def measure(image_size: int, batch_size: int):
    k_img, k_lab = jax.random.split(jax.random.key(0))
    images = jax.random.normal(k_img, (DOMAINS, batch_size, image_size, image_size, 3),
                               jnp.float32)
    labels = jax.random.randint(k_lab, (DOMAINS, batch_size), 0, CLASSES)
    params = jax.jit(resnet_model("resnet18", CLASSES).init)(jax.random.key(1), images[0, :2])

    # dtype of the featurizer's compute -> (its params, the images, the head's params)
    setups = {"float64": (jnp.float64, _cast(params, jnp.float64), images.astype(jnp.float64)),
              "float32": (jnp.float32, params, images),
              "bfloat16": (jnp.bfloat16, params, images)}
    features, vjps, heads = {}, {}, {}
    for run, (dtype, p, x) in setups.items():
        model = resnet_model("resnet18", CLASSES, dtype=dtype,
                             batch_stats=_cast(resnet_model("resnet18", CLASSES).batch_stats,
                                               jnp.float64 if dtype == jnp.float64
                                               else jnp.float32))
        features[run], vjps[run] = _featurize(model, p["featurizer"], x)
        heads[run] = p["classifier"]
    # The head and the penalty in bfloat16 too: features and head rounded, same featurizer.
    features["bfloat16 head"] = features["bfloat16"].astype(jnp.bfloat16)
    heads["bfloat16 head"] = _cast(params["classifier"], jnp.bfloat16)
    vjps["bfloat16 head"] = vjps["bfloat16"]

    rows = [("features", "value", [_rel(features[r], features["float64"]) for r in RUNS])]
    logits = {r: Model.head(heads[r], features[r]) for r in features}
    rows.append(("logits", "value", [_rel(logits[r], logits["float64"]) for r in RUNS]))
    for name, own in OWN_HPARAMS.items():
        hp = hparams.make_hparams(name, "pacs", 0, overrides=own)
        for quantity in QUANTITIES.get(name, ("penalty",)):
            out = {}
            for run in ("float64",) + RUNS:
                dtype = features[run].dtype
                state = _cast(algorithms.init_alg_state(name, {"classifier": heads[run]}, hp,
                                                        DOMAINS), dtype)
                value, (g_head, g_z) = _objective(name, quantity, hp, labels, state)(
                    heads[run], features[run])
                out[run] = (value, g_head, vjps[run](g_z))
            label = name if quantity in ("penalty", "nll") else f"{name} {quantity}"
            for i, what in enumerate(("value", "d/d head", "d/d featurizer")):
                if name == "coral" and what == "d/d head":
                    continue                                  # CORAL does not touch the head
                rows.append((label, what, [_rel(out[r][i], out["float64"][i]) for r in RUNS]))
    return rows, _vanishing_updates(params["featurizer"])


def _vanishing_updates(f_params, lr=5e-5) -> float:
    """Share of featurizer weights whose first Adam update (~lr, DomainBed's image lr) is
    below half a bfloat16 ulp of the weight: stored in bfloat16, they would not move."""
    w = np.concatenate([np.abs(np.ravel(np.asarray(x))) for x in jax.tree.leaves(f_params)])
    return float(np.mean(lr < w * 2.0 ** -9))


def table(rows, vanishing, seconds, image_size, batch_size) -> str:
    cmd = ("python experiments/bf16_precision.py "
           f"--image_size={image_size} --batch_size={batch_size}")
    head = ("| objective | quantity | float32 | bfloat16 (hjax) | bfloat16, head and penalty "
            "too |\n|---|---|---|---|---|\n")
    body = "".join(f"| {name} | {what} | " + " | ".join(f"{e:.1e}" for e in errs) + " |\n"
                   for name, what, errs in rows)
    return (f"Relative error ||x - x64|| / ||x64|| against the float64 oracle, ResNet-18 "
            f"(random weights), {DOMAINS} domains x {batch_size} images of {image_size} px, "
            f"{CLASSES} classes, one set of params, batch and probes.\n\n"
            f"`{cmd}` ({seconds:.0f} s) on {machine_line()}.\n\n{head}{body}\n"
            f"Featurizer weights whose first Adam step at lr 5e-5 is below half a bfloat16 "
            f"ulp (they would not move if stored in bfloat16): {100 * vanishing:.0f}%.\n")


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    t0 = time.perf_counter()
    rows, vanishing = measure(FLAGS.image_size, FLAGS.batch_size)
    text = table(rows, vanishing, time.perf_counter() - t0, FLAGS.image_size,
                 FLAGS.batch_size)
    print(text)
    if FLAGS.output:
        write_atomic(FLAGS.output, text)


if __name__ == "__main__":
    main()
