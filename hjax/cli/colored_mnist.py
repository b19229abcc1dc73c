"""Full-batch ColoredMNIST experiments (IRM protocol): every method, several restarts.

    python experiments/run.py --dataset=colored_mnist --method=hutchinson

Writes <output_dir>/results.jsonl (one JSON object per finished restart, rewritten atomically
after each; with the restarts as one program, --restart_batching=vmap, the default, when it
ends, its state checkpointed every --checkpoint_every steps meanwhile) and
<output_dir>/summary.md, and prints the summary table. With
--track_alignment_every=N the history rows also hold head-Hessian and gradient distances
(hjax.analysis.alignment_tracking); with --save_params each restart's final params go to
<output_dir>/params_restart<r>.msgpack (hjax.io.params_io.load_params reads them).

Every record carries the run's identity (run_id: a digest of every setting that changes the
numbers, data included) and its provenance (code, library versions, devices, host, time). A
re-run with the same identity resumes after the finished restarts; an output folder holding
results of other settings is refused (exit 2) unless --overwrite moves them aside.
"""

from __future__ import annotations

import sys

from absl import flags

from hjax.cli import distributed, print_warning, run_main
from hjax.cli.progress import MODES, Progress
from hjax.protocols.irm_cmnist import config

FLAGS = flags.FLAGS
D = config.default
flags.DEFINE_string("dataset", D("dataset"), " or ".join(config.DATASETS))
flags.DEFINE_string("method", D("method"), ", ".join(config.METHODS))
flags.DEFINE_integer("restarts", D("restarts"),
                     "independent restarts (data re-drawn, model re-initialized)")
flags.DEFINE_integer("steps", D("steps"), "full-batch training steps per restart")
flags.DEFINE_integer("seed", D("seed"),
                     "base seed; restart r uses data and init seeds derived from it")
flags.DEFINE_integer("num_probes", None, f"Hutchinson probes (default {D('num_probes')})")
flags.DEFINE_string("label_shift_split", D("label_shift_split"),
                    "colored_mnist_label_shift split: intended (97/3) or reference (authors')")
flags.DEFINE_integer("num_devices", None, "devices for data parallelism (default: all visible)")
flags.DEFINE_string("output_dir", None, "default runs/<dataset>-<method>-<seed>")
flags.DEFINE_float("lr", None, f"Adam learning rate (default {D('lr')})")
flags.DEFINE_float("l2_weight", None, f"L2 weight on all params (default {D('l2_weight')})")
flags.DEFINE_float("penalty_weight", None, "penalty weight after annealing (default "
                   f"{D('penalty_weight')}; erm {config.METHOD_DEFAULTS['erm']['penalty_weight']:g})")
flags.DEFINE_integer("anneal_iters", None,
                     f"steps with penalty weight 1 (default {D('anneal_iters')})")
flags.DEFINE_integer("hidden_dim", None, f"MLP width (default {D('hidden_dim')})")
flags.DEFINE_float("alpha", None,
                   f"Hessian-term weight for hgp/hutchinson/exact_diag (default {D('alpha'):g})")
flags.DEFINE_float("beta", None,
                   f"gradient-term weight for hgp/hutchinson/exact_diag (default {D('beta'):g})")
flags.DEFINE_string("curvature", None,
                    f"{' or '.join(config.CURVATURES)} head curvature (default {D('curvature')})")
flags.DEFINE_string("matmul", D("matmul"),
                    "fp32, or tf32: the MLP body's matmuls with operands rounded to TF32 "
                    "(forward and backward), as PyTorch's default on Ampere GPUs up to 1.11")
flags.DEFINE_string("restart_batching", D("restart_batching"),
                    "vmap: the restarts as one compiled program (train step, evaluation and "
                    "tracking vmapped over them); loop: one restart after another; auto: "
                    f"vmap (on a CPU: {config.CPU_RESTART_BATCHING})")
flags.DEFINE_integer("restarts_per_program", None,
                     "with vmap: at most this many restarts per program (default: all)")
flags.DEFINE_integer("checkpoint_every", D("checkpoint_every"),
                     "save the running restarts' state every N steps, so that a killed "
                     "run resumes from there (0 = off)")
flags.DEFINE_integer("log_every", D("log_every"), "steps between logged table rows")
flags.DEFINE_integer("track_alignment_every", D("track_alignment_every"),
                     "record head-Hessian/gradient distances (train domains; train vs test) "
                     "every N steps and at the last step in the history rows (0 = off)")
flags.DEFINE_bool("save_params", D("save_params"),
                  "save each restart's final params to <output_dir>/params_restart<r>.msgpack")
flags.DEFINE_bool("fake_data", D("fake_data"),
                  "small synthetic MNIST instead of the real one (tests)")
flags.DEFINE_integer("inject_nan_at", None, "testing: make the loss NaN at this step")
distributed.define_flags(__name__)
flags.DEFINE_bool("overwrite", False,
                  "when --output_dir holds results of other settings, move them aside into "
                  "<output_dir>/replaced-<time>/ and start afresh (default: refuse, exit 2)")
flags.DEFINE_enum("progress", D("progress"), list(MODES),
                  "progress line on stderr (step, ETA after compilation): auto = only on a "
                  "terminal")
flags.DEFINE_bool("full_protocol_hint", False,
                  "end with the command of the full protocol (make run's short first look)")


class RestartProgress:
    """The progress line of a run: restart, step and an ETA over the remaining restarts, at
    the step rate measured after each restart's compilation (hjax.cli.progress)."""

    def __init__(self, restarts: int, steps: int, mode: str = "auto"):
        self.restarts, self.steps = restarts, steps
        self.line = Progress(mode)

    def update(self, restart: int, step: int) -> None:
        if step == 0:       # the interval before it held this restart's compile
            self.line.begin(self.steps, label=f"[restart {restart + 1}/{self.restarts}] ",
                            remaining_after=(self.restarts - restart - 1) * self.steps)
        self.line.step(step)

    def clear(self) -> None:
        self.line.clear()


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        from hjax.protocols.irm_cmnist.experiment import (Callbacks, format_row,
                                                          run_experiment)
        run_config = config.from_flags(FLAGS)
        config.validate(run_config)         # bad settings before waiting for other processes
        speaks = distributed.join(FLAGS)
        progress = RestartProgress(run_config.restarts, run_config.steps,
                                   run_config.progress if speaks else "off")

        def log(message):
            if speaks:
                progress.clear()
                print(message, flush=True)

        def row(r):
            log(format_row(r))

        run_experiment(run_config, Callbacks(
            log=log, warn=print_warning if speaks else log, row=row,
            step=progress.update, restart_done=progress.clear))
        if FLAGS.full_protocol_hint and speaks:
            print(f"\nThis was a short first look. The full protocol (10 restarts x 501 steps; "
                  f"about 2-3 hours on 2 CPU cores, minutes on a GPU):\n  python "
                  f"experiments/run.py --dataset={run_config.dataset} --method={run_config.method}",
                  flush=True)
    run_main(FLAGS, argv, body,
             interrupted="finished restarts are in results.jsonl, running ones in "
                         "checkpoints/ (a re-run resumes); no summary written")


if __name__ == "__main__":
    main()
