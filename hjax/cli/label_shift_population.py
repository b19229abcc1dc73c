"""Exact population-level penalties of ColoredMNIST classifiers, correlation vs label shift
(:mod:`hjax.analysis.label_shift_population` says what is computed and why).

    python experiments/label_shift_population.py [--settings=correlation,label_shift_intended]
"""

from __future__ import annotations

import sys

from absl import flags

from hjax.analysis import label_shift_population as pop
from hjax.analysis.label_shift_population import SETTINGS
from hjax.cli import run_main
from hjax.errors import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_list("settings", list(SETTINGS), f"subset of {', '.join(SETTINGS)}")


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        from hjax.protocols.irm_cmnist.train import DEFAULT_HPARAMS   # flax: not for --help
        bad = [s for s in FLAGS.settings if s not in SETTINGS]
        if bad or not FLAGS.settings:
            raise ConfigError(f"--settings={','.join(FLAGS.settings)!r}: unknown "
                              f"{', '.join(bad) or '(empty)'}; valid: {', '.join(SETTINGS)}")
        rows = [r for s in FLAGS.settings for r in pop.evaluate(s)]
        print(pop.format_table(rows))
        weight = DEFAULT_HPARAMS["penalty_weight"]
        print(f"\nPenalty weight after step {DEFAULT_HPARAMS['anneal_iters']}: {weight:.0f}; a "
              f"term of 1e-5 then costs {weight * 1e-5:.2f} loss units.")
    run_main(FLAGS, argv, body)


if __name__ == "__main__":
    main()
