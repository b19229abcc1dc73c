"""Full-batch ColoredMNIST experiments (IRM protocol): every method, several restarts.

    python experiments/run.py --dataset=colored_mnist --method=hutchinson

Writes <output_dir>/results.jsonl (one JSON object per finished restart, rewritten atomically
after each; with the restarts as one program, --restart_batching=vmap, the default, when it
ends, its state checkpointed every --checkpoint_every steps meanwhile) and
<output_dir>/summary.md, and prints the summary table. With
--track_alignment_every=N the history rows also hold head-Hessian and gradient distances
(hjax.analysis.alignment_tracking); with --save_params each restart's final params go to
<output_dir>/params_restart<r>.msgpack (hjax.io.params_io.load_params reads them).
"""

from __future__ import annotations

import dataclasses
import sys
import time


from absl import flags

from hjax.cli import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "colored_mnist", "colored_mnist or colored_mnist_label_shift")
flags.DEFINE_string("method", "hutchinson",
                    "erm, irm, vrex, fishr, hgp, hutchinson, hutchinson_shared, exact_diag")
flags.DEFINE_integer("restarts", 10, "independent restarts (data re-drawn, model re-initialized)")
flags.DEFINE_integer("steps", 501, "full-batch training steps per restart")
flags.DEFINE_integer("seed", 0, "base seed; restart r uses data and init seeds derived from it")
flags.DEFINE_integer("num_probes", None, "Hutchinson probes (default 150)")
flags.DEFINE_string("label_shift_split", "intended",
                    "colored_mnist_label_shift split: intended (97/3) or reference (authors')")
flags.DEFINE_integer("num_devices", None, "devices for data parallelism (default: all visible)")
flags.DEFINE_string("output_dir", None, "default runs/<dataset>-<method>-<seed>")
flags.DEFINE_float("lr", None, "Adam learning rate (default 4.898536566546834e-4)")
flags.DEFINE_float("l2_weight", None, "L2 weight on all params (default 1.10794568e-3)")
flags.DEFINE_float("penalty_weight", None,
                   "penalty weight after annealing (default 91257.18613115903; erm 0)")
flags.DEFINE_integer("anneal_iters", None, "steps with penalty weight 1 (default 190)")
flags.DEFINE_integer("hidden_dim", None, "MLP width (default 390)")
flags.DEFINE_float("alpha", None, "Hessian-term weight for hgp/hutchinson/exact_diag (default 1)")
flags.DEFINE_float("beta", None, "gradient-term weight for hgp/hutchinson/exact_diag (default 1)")
flags.DEFINE_string("curvature", None, "closed_form (default) or autodiff head curvature")
flags.DEFINE_string("matmul", "fp32",
                    "fp32, or tf32: the MLP body's matmuls with operands rounded to TF32 "
                    "(forward and backward), as PyTorch's default on Ampere GPUs up to 1.11")
flags.DEFINE_string("restart_batching", "auto",
                    "vmap: the restarts as one compiled program (train step, evaluation and "
                    "tracking vmapped over them); loop: one restart after another; auto: vmap")
flags.DEFINE_integer("restarts_per_program", None,
                     "with vmap: at most this many restarts per program (default: all)")
flags.DEFINE_integer("checkpoint_every", 100,
                     "with vmap: save the restarts' state every N steps, so that a killed "
                     "run resumes from there (0 = off)")
flags.DEFINE_integer("log_every", 100, "steps between logged table rows")
flags.DEFINE_integer("track_alignment_every", 0,
                     "record head-Hessian/gradient distances (train domains; train vs test) "
                     "every N steps and at the last step in the history rows (0 = off)")
flags.DEFINE_bool("save_params", False,
                  "save each restart's final params to <output_dir>/params_restart<r>.msgpack")
flags.DEFINE_bool("fake_data", False, "small synthetic MNIST instead of the real one (tests)")
flags.DEFINE_integer("inject_nan_at", None, "testing: make the loss NaN at this step")
flags.DEFINE_bool("distributed", False,
                  "call jax.distributed.initialize() first (multi-host; see README)")
flags.DEFINE_string("coordinator_address", None,
                    "with --distributed off TPU/Slurm/MPI: HOST:PORT of process 0")
flags.DEFINE_integer("num_processes", None, "with --distributed: number of processes")
flags.DEFINE_integer("process_id", None, "with --distributed: this process's index")
flags.DEFINE_bool("full_protocol_hint", False,
                  "end with the command of the full protocol (make run's short first look)")


class Progress:
    """One self-overwriting status line on a terminal; silent when stderr is not a tty."""

    def __init__(self, restarts: int, steps: int):
        self.restarts, self.steps = restarts, steps
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.done = 0

    def update(self, restart: int, step: int) -> None:
        self.done += 1
        if not self.tty:
            return
        total = self.restarts * self.steps
        eta = (time.perf_counter() - self.start) / self.done * (total - self.done)
        sys.stderr.write(f"\r[restart {restart + 1}/{self.restarts}] step {step + 1}/"
                         f"{self.steps}  ETA {int(eta // 60)}m{int(eta % 60):02d}s ")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 60 + "\r")


def config_from_flags(f):
    from hjax.protocols.irm_cmnist.experiment import ExperimentConfig
    return ExperimentConfig(**{field.name: getattr(f, field.name)
                               for field in dataclasses.fields(ExperimentConfig)})


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        from hjax.protocols.irm_cmnist.experiment import (Callbacks, format_row,
                                                          run_experiment)
        config = config_from_flags(FLAGS)
        progress = Progress(config.restarts, config.steps)

        def log(message):
            progress.clear()
            print(message, flush=True)

        def row(r):
            log(format_row(r))

        run_experiment(config, Callbacks(
            log=log, warn=lambda m: print(m, file=sys.stderr, flush=True), row=row,
            step=progress.update, restart_done=progress.clear))
        if FLAGS.full_protocol_hint:
            print(f"\nThis was a short first look. The full protocol (10 restarts x 501 steps; "
                  f"about 2-3 hours on 2 CPU cores, minutes on a GPU):\n  python "
                  f"experiments/run.py --dataset={config.dataset} --method={config.method}",
                  flush=True)
    run_main(FLAGS, argv, body,
             interrupted="finished restarts are in results.jsonl, running ones in "
                         "restart_group.ckpt (a re-run resumes); no summary written")


if __name__ == "__main__":
    main()
