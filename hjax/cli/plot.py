r"""PNG figures and a Markdown table from experiments/run.py results (one directory per method).

    python experiments/plot.py --input_dirs='results/colored_mnist/*' --output_dir=figures \
        [--transfer_file=results/transferability/colored_mnist/transferability.jsonl]

Writes to --output_dir:
  test_acc.png             test accuracy over steps, one line per method (mean ± std)
  hess_spectral_train.png  head-Hessian spectral distance between the training domains over
                           steps (only if some run used --track_alignment_every)
  hess_spectral_train_test.png  the same between the training domains' mean and the test
                           domain
  transfer.png             transfer measure and its bounds against delta per method (only
                           with --transfer_file, the output of experiments/transferability.py)
  distances.md             final tracked distances per method (mean ± std over restarts)

A results.jsonl (or --transfer_file) that cannot be used (unreadable, not JSON lines, records
missing fields, records of more than one run, a DomainBed job's records) is skipped with one
warning line naming it; with nothing left to plot, or an --input_dirs entry that is no
directory, it exits 2. Two folders of the same name (erm of two result sets) stay two
curves, named with their parent folder.
"""

from __future__ import annotations

import os
import sys


from absl import flags

from hjax.cli import UsageError, run_main

FLAGS = flags.FLAGS
flags.DEFINE_list("input_dirs", None,
                  "run.py output directories (comma-separated; glob patterns allowed)")
flags.DEFINE_string("transfer_file", None, "transferability.jsonl from transferability.py")
flags.DEFINE_string("output_dir", "figures", "where the PNGs and distances.md go")
flags.DEFINE_float("width", 6.0, "figure width in inches")
flags.DEFINE_float("height", 4.0, "figure height in inches")
flags.DEFINE_integer("dpi", 100, "dots per inch (PNG pixels = inches x dpi)")


def validate(flags_):
    if not flags_.input_dirs and not flags_.transfer_file:
        raise UsageError("give --input_dirs (run.py output directories) and/or --transfer_file")
    if not (flags_.width > 0 and flags_.height > 0):
        raise UsageError(f"--width={flags_.width} and --height={flags_.height} must be > 0")
    if flags_.dpi < 1:
        raise UsageError(f"--dpi={flags_.dpi} must be a positive integer")
    if flags_.transfer_file and not os.path.lexists(flags_.transfer_file):
        raise UsageError(f"--transfer_file={flags_.transfer_file!r} does not exist")


def run(flags_, warn=None) -> list[str]:
    warn = warn or (lambda m: print(m, file=sys.stderr))
    validate(flags_)
    from hjax.io import plotting, record_checks
    from hjax.io.results import write_atomic

    written = []
    size, dpi = (flags_.width, flags_.height), flags_.dpi
    runs, rows, problems = {}, [], []
    if flags_.transfer_file:
        rows, problem = record_checks.load(flags_.transfer_file, "transfer")
        if problem:
            problems.append(problem)
    if flags_.input_dirs:
        missing = []
        dirs = plotting.expand_dirs(flags_.input_dirs, missing)
        if missing:
            raise UsageError(f"--input_dirs: no directory {', '.join(map(repr, missing))}")
        runs = plotting.load_runs(dirs, problems)
    for line in problems:
        warn(f"warning: {line}; skipped")
    if not runs and not rows:
        given = ",".join(flags_.input_dirs or []) or flags_.transfer_file
        raise UsageError(f"nothing to plot in {given!r}: "
                         + (f"{len(problems)} file(s) skipped (see the warnings)" if problems
                            else "no results.jsonl found (a ColoredMNIST run's output folder "
                                 "holds one)"))
    try:
        os.makedirs(flags_.output_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--output_dir={flags_.output_dir!r} is not writable "
                         f"({e.strerror})") from None
    out = lambda name: os.path.join(flags_.output_dir, name)
    if runs:
        if plotting.plot_test_accuracy(runs, out("test_acc.png"), size=size, dpi=dpi):
            written.append(out("test_acc.png"))
        for key in ("hess_spectral_train", "hess_spectral_train_test"):
            if plotting.plot_hessian_distance(runs, out(f"{key}.png"), key=key, size=size,
                                              dpi=dpi):
                written.append(out(f"{key}.png"))
        table = plotting.final_distance_table(runs)
        write_atomic(out("distances.md"),
                     "# Final head distances (last tracked step, mean ± std over restarts)\n\n"
                     + table)
        written.append(out("distances.md"))
        print(table)
    if rows:
        if plotting.plot_transfer(rows, out("transfer.png"), size=size, dpi=dpi):
            written.append(out("transfer.png"))
    for path in written:
        print(f"wrote {path}")
    return written


def main(argv=None):
    argv = sys.argv if argv is None else argv
    run_main(FLAGS, argv, lambda: run(FLAGS))


if __name__ == "__main__":
    main()
