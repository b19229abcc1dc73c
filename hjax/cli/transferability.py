r"""Transfer measure (training domains -> test domain) of trained ColoredMNIST models, per method.

Trains the models itself (same protocol, seeds and data as experiments/run.py):

    python experiments/transferability.py --methods=erm,hgp,hutchinson --restarts=3 \
        --deltas=0.1,0.3,1,3 --output_dir=runs/transferability

or evaluates models that run.py saved with --save_params:

    python experiments/transferability.py --input_dirs='results/colored_mnist/*' ...

Params files are not committed (1.2 MB each), so in that mode a model already in
<output_dir>/transferability.jsonl (same deltas and ascent settings) keeps its rows without
being loaded (--noreuse measures again), and a model with neither params nor rows is skipped
with a warning: `make figures` on a fresh clone adds what is new and loses nothing.

For each model and delta: hjax.core.diagnostics.transfer_measure over the ball of heads of radius
delta around the trained head, on the features of the trained featurizer (hjax.analysis.transferability).
Writes <output_dir>/transferability.jsonl (one row per run, restart and delta; a run is the
method, or with --input_dirs the folder it was saved in), transferability.md (mean ± std over
restarts) and transferability.png (measure and bounds against delta; experiments/plot.py
--transfer_file draws the same figure).
"""

from __future__ import annotations

import dataclasses
import sys


from absl import flags

from hjax.cli import print_warning, run_main

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["erm", "hgp", "hutchinson"], "methods to train and compare")
flags.DEFINE_list("input_dirs", None,
                  "evaluate run.py --save_params outputs instead of training (comma-separated, "
                  "globs allowed); --methods then filters them only if given")
flags.DEFINE_string("dataset", "colored_mnist", "colored_mnist or colored_mnist_label_shift")
flags.DEFINE_string("label_shift_split", "intended", "intended or reference")
flags.DEFINE_integer("steps", 501, "training steps per restart")
flags.DEFINE_integer("restarts", 3, "restarts per method")
flags.DEFINE_integer("seed", 0, "base seed (as run.py: restart r uses data seed seed*10000+r)")
flags.DEFINE_integer("hidden_dim", None, "MLP width (default 390)")
flags.DEFINE_integer("num_probes", None, "Hutchinson probes (default 150)")
flags.DEFINE_list("deltas", ["0.1", "0.3", "1", "3"], "radii of the head ball")
flags.DEFINE_integer("ascent_restarts", 8, "starts of the projected ascent per problem")
flags.DEFINE_integer("ascent_steps", 200, "projected-ascent steps")
flags.DEFINE_float("ascent_lr", 0.1, "ascent step size, as a fraction of delta")
flags.DEFINE_integer("num_devices", None, "devices for training (default: all visible)")
flags.DEFINE_bool("fake_data", False, "small synthetic MNIST instead of the real one (tests)")
flags.DEFINE_string("output_dir", "runs/transferability", "where the outputs go")
flags.DEFINE_bool("reuse", True,
                  "with --input_dirs: keep the rows <output_dir>/transferability.jsonl already "
                  "has for a model (same deltas, seed and ascent settings) instead of measuring "
                  "it again; saved params are not committed, so this is how a fresh clone's "
                  "`make figures` keeps the models whose params it lacks")
flags.DEFINE_float("width", 6.0, "figure width in inches")
flags.DEFINE_float("height", 4.0, "figure height in inches")
flags.DEFINE_integer("dpi", 100, "figure dots per inch")

def config_from_flags(f):
    # transfer_study imports flax and matplotlib: loaded when the command runs, not for --help.
    from hjax.protocols.irm_cmnist.transfer_study import TransferStudyConfig
    names = [field.name for field in dataclasses.fields(TransferStudyConfig)
             if field.name != "methods_given"]
    values = {n: getattr(f, n) for n in names}
    for n in ("methods", "input_dirs", "deltas"):
        if values[n] is not None:
            values[n] = tuple(values[n])
    return TransferStudyConfig(methods_given=f["methods"].present > 0, **values)


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        from hjax.protocols.irm_cmnist import transfer_study
        transfer_study.run(config_from_flags(FLAGS), log=lambda m: print(m, flush=True),
                           warn=print_warning)
    run_main(FLAGS, argv, body, interrupted="finished models are in transferability.jsonl")


if __name__ == "__main__":
    main()
