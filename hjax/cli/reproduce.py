"""Every ColoredMNIST run of the README's tables in one process (what `make reproduce` runs).

    python -m hjax.cli.reproduce [--output_root=results] [--methods=hgp,erm,...]

The 8 methods x 10 restarts of IRM-protocol ColoredMNIST (with alignment tracking every 25
steps and the final params saved, for the figures) into <output_root>/colored_mnist/<method>,
then label-shift ColoredMNIST, both splits x 5 restarts, into
<output_root>/colored_mnist_label_shift_<split>/<method>: the runs `make reproduce JOBS=N`
starts as separate processes. Each run resumes what its folder already holds. The restarts
of a run are one compiled program (--restart_batching, default auto); the evaluation and
alignment-tracking programs, which do not depend on the method, are compiled once for all
runs of one shape; and JAX's persistent compilation cache is on (--compilation_cache_dir),
so a re-run skips XLA for every program (train steps differ between methods, and the
label-shift splits' training domains differ in size, so those are compiled once each). One line per run: its compile time and ETA measured after compiling, then
its result and wall time.
"""

from __future__ import annotations

import os
import sys
import time

import jax
from absl import flags

from hjax.cli import print_warning, run_main
from hjax.io.results import fmt_pct

FLAGS = flags.FLAGS
flags.DEFINE_string("output_root", "results", "folder of the runs' output folders")
flags.DEFINE_list("methods", ["hgp", "hutchinson", "erm", "fishr", "exact_diag", "irm", "vrex",
                              "hutchinson_shared"], "ColoredMNIST methods ('' for none)")
flags.DEFINE_list("label_shift_methods", ["erm", "hgp", "hutchinson", "exact_diag"],
                  "label-shift ColoredMNIST methods ('' for none)")
flags.DEFINE_list("label_shift_splits", ["intended", "reference"], "label-shift splits")
flags.DEFINE_integer("restarts", 10, "ColoredMNIST restarts per method")
flags.DEFINE_integer("label_shift_restarts", 5, "label-shift restarts per method")
flags.DEFINE_integer("steps", 501, "steps per restart")
flags.DEFINE_integer("track_alignment_every", 25, "ColoredMNIST runs: tracking interval")
flags.DEFINE_string("restart_batching", "auto", "auto, vmap or loop (see experiments/run.py)")
flags.DEFINE_integer("checkpoint_every", 100, "with vmap: checkpoint interval in steps")
flags.DEFINE_string("compilation_cache_dir", None,
                    "JAX's persistent compilation cache (default $JAX_COMPILATION_CACHE_DIR, "
                    "else ~/.cache/hjax/jax_cache; '' = off)")
flags.DEFINE_bool("fake_data", False, "small synthetic MNIST (tests)")
flags.DEFINE_integer("hidden_dim", None, "MLP width (tests; default the protocol's 390)")
flags.DEFINE_integer("num_probes", None, "Hutchinson probes (tests; default 150)")


def runs(f) -> list[dict]:
    """The runs' ExperimentConfig fields, in order."""
    common = dict(steps=f.steps, fake_data=f.fake_data, hidden_dim=f.hidden_dim,
                  num_probes=f.num_probes, restart_batching=f.restart_batching,
                  checkpoint_every=f.checkpoint_every)
    out = [dict(common, dataset="colored_mnist", method=m, restarts=f.restarts,
                track_alignment_every=f.track_alignment_every, save_params=True,
                output_dir=os.path.join(f.output_root, "colored_mnist", m))
           for m in f.methods if m]
    out += [dict(common, dataset="colored_mnist_label_shift", label_shift_split=s, method=m,
                 restarts=f.label_shift_restarts,
                 output_dir=os.path.join(f.output_root, f"colored_mnist_label_shift_{s}", m))
            for s in f.label_shift_splits for m in f.label_shift_methods if m]
    return out


def _cache_dir(flag):
    if flag is not None:
        return flag or None
    return (os.environ.get("JAX_COMPILATION_CACHE_DIR")
            or os.path.join(os.path.expanduser("~"), ".cache", "hjax", "jax_cache"))


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        # flax: loaded when the command runs, not for --help.
        from hjax.protocols.irm_cmnist.experiment import (Callbacks, ExperimentConfig,
                                                          run_experiment, validate)
        configs = [ExperimentConfig(**fields) for fields in runs(FLAGS)]
        for config in configs:       # every bad setting before the first run
            validate(config)
        cache = _cache_dir(FLAGS.compilation_cache_dir)
        if cache:
            jax.config.update("jax_compilation_cache_dir", cache)
        start = time.perf_counter()
        print(f"{len(configs)} runs on {jax.devices()[0].platform}; compilation cache: "
              f"{cache or 'off'}", flush=True)
        for i, config in enumerate(configs):
            name = (f"[{i + 1}/{len(configs)}] {config.dataset}"
                    + (f" ({config.label_shift_split})"
                       if config.dataset != "colored_mnist" else "") + f" / {config.method}")
            callbacks = Callbacks(log=lambda m: None, warn=print_warning)
            # The run's progress lines (resume notes, compile time and ETA), one line each.
            callbacks.progress = lambda m, name=name: print(f"{name}: {m}", flush=True)
            t0 = time.perf_counter()
            records = run_experiment(config, callbacks)
            ok = [r for r in records if r["status"] == "ok"]
            test = fmt_pct([r["test_acc"] for r in ok]) if ok else "-"
            print(f"{name}: done in {time.perf_counter() - t0:.1f} s, {len(ok)}/"
                  f"{len(records)} restarts ok, test acc {test} -> {config.output_dir}",
                  flush=True)
        print(f"all {len(configs)} runs in {time.perf_counter() - start:.1f} s", flush=True)

    run_main(FLAGS, argv, body,
             interrupted="finished restarts are in each run's results.jsonl (and the "
                         "running group's checkpoint); a re-run resumes")


if __name__ == "__main__":
    main()
