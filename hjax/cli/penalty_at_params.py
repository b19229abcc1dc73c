r"""The ColoredMNIST-script penalty terms at a trained model's params: exact vs estimated.

    python experiments/penalty_at_params.py --input_dir=results/colored_mnist/hutchinson \
        --restart=0 [--num_probes=150] [--keys=5]

Loads ``params_restart<r>.msgpack`` (written by ``run.py --save_params``), rebuilds that
restart's two training domains, and prints the Hessian and gradient terms of the summed,
not-stop-gradiented form (docs/protocols.md, "The penalties") for the exact diagonal, HGP and Hutchinson with
--keys independent probe draws. The gap between Hutchinson and exact_diag is the estimator's
variance: the part of Hutchinson's Hessian term that no alignment of the domains can remove.
"""

from __future__ import annotations

import os
import statistics
import sys

import jax
import jax.numpy as jnp
from absl import flags

from hjax import data
from hjax.cli import UsageError, check_positive, run_main
from hjax.core.penalty import linear_head_penalty_terms

FLAGS = flags.FLAGS
flags.DEFINE_string("input_dir", None, "a run.py --save_params output directory")
flags.DEFINE_integer("restart", 0, "which restart's params")
flags.DEFINE_integer("seed", 0, "the run's base seed (data seed = seed * 10000 + restart)")
flags.DEFINE_integer("num_probes", 150, "Hutchinson probes per estimate")
flags.DEFINE_integer("keys", 5, "independent Hutchinson probe draws")
flags.DEFINE_bool("fake_data", False, "small synthetic MNIST (for runs made with --fake_data)")


def main(argv=None):
    argv = sys.argv if argv is None else argv
    def body():
        check_positive("num_probes", FLAGS.num_probes)
        check_positive("keys", FLAGS.keys)
        # These import flax: loaded when the command runs, not for --help.
        from hjax.io import params_io
        from hjax.models import irm_mlp
        from hjax.protocols.irm_cmnist.experiment import data_seed
        from hjax.protocols.irm_cmnist.train import stack_domains
        path = os.path.join(FLAGS.input_dir or "", params_io.params_filename(FLAGS.restart))
        if not FLAGS.input_dir or not os.path.exists(path):
            raise UsageError(f"--input_dir={FLAGS.input_dir!r} --restart={FLAGS.restart}: no "
                             f"{params_io.params_filename(FLAGS.restart)} there (run run.py "
                             "with --save_params)")
        params = jax.tree_util.tree_map(jnp.asarray, params_io.load_params(path))
        kernel = params.get("classifier", {}).get("kernel") \
            if isinstance(params.get("classifier"), dict) else None
        if kernel is None or kernel.ndim != 2:
            raise UsageError(f"{path}: not the params of a ColoredMNIST MLP (no "
                             "classifier kernel)")
        envs = data.make_environments("colored_mnist", data_seed(FLAGS.seed, FLAGS.restart),
                                      mnist=data.fake_mnist() if FLAGS.fake_data
                                      else data.load_mnist())
        model = irm_mlp(kernel.shape[0])     # the saved width
        batch = stack_domains([envs[0], envs[1]], 1)   # zero-weight padding if sizes differ
        # The saved tree must be the model's, leaf for leaf, or features() fails deep in flax.
        want = jax.eval_shape(lambda: model.init(jax.random.key(0), batch.images[:1]))
        shapes = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
        if shapes(want) != shapes(params):
            raise UsageError(f"{path}: its arrays do not fit the ColoredMNIST MLP of width "
                             f"{kernel.shape[0]} (another model's params?)")
        z = model.features(params, batch.images)

        def terms(method, key=None, probes="independent"):
            t = linear_head_penalty_terms(params["classifier"], z, batch.labels,
                                          loss="logistic", weights=batch.weights,
                                          method=method, num_probes=FLAGS.num_probes, key=key,
                                          reduction="sum", stop_gradient_reference=False,
                                          probes=probes)
            return float(t.hessian), float(t.gradient)

        exact, hgp = terms("exact_diag"), terms("hgp")
        hutch = [terms("hutchinson", jax.random.key(k))[0] for k in range(FLAGS.keys)]
        shared = [terms("hutchinson", jax.random.key(k), "shared")[0]
                  for k in range(FLAGS.keys)]
        print(f"{path}\n\n| term | value |\n|---|---|")
        print(f"| gradient term sum_e ||g_e - gbar||^2 | {exact[1]:.3g} |")
        print(f"| exact_diag Hessian term | {exact[0]:.3g} |")
        print(f"| hgp Hessian term | {hgp[0]:.3g} |")
        print(f"| hutchinson Hessian term, K={FLAGS.num_probes}, median of {FLAGS.keys} draws "
              f"(min-max) | {statistics.median(hutch):.3g} ({min(hutch):.3g}-{max(hutch):.3g}) |")
        print(f"| hutchinson_shared Hessian term (one probe set for all domains), same draws "
              f"| {statistics.median(shared):.3g} ({min(shared):.3g}-{max(shared):.3g}) |")
        print(f"\nhutchinson / exact_diag: {statistics.median(hutch) / max(exact[0], 1e-30):.3g}x")

    run_main(FLAGS, argv, body)


if __name__ == "__main__":
    main()
