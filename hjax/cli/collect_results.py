"""Model-selection tables over a sweep's output (docs/protocols.md).

    python experiments/collect_results.py --input_dir=sweeps/cmnist [--latex]

Reads every <input_dir>/*/results.jsonl (finished jobs only, unless --include_incomplete)
and prints, per dataset and selection method (training-domain validation,
leave-one-domain-out, test-domain oracle), a Markdown table of test accuracy, mean ±
standard error over trial seeds; --latex adds the same tables as LaTeX tabulars (one column
per test env, then Avg; cells ``$mean \\pm se$``); --output writes the same text to a file
(atomically). Unfinished jobs that were left out are counted on stderr, missing cells are
"X" with a note under the table; with no finished run at all it says so and exits 1.
"""

from __future__ import annotations

import os
import sys


from absl import flags

from hjax.cli import UsageError, exit_usage, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("input_dir", None, "directory holding one sub-directory per job")
flags.DEFINE_string("output", None, "optional Markdown file to write")
flags.DEFINE_bool("include_incomplete", False, "also use jobs without a done marker")
flags.DEFINE_bool("latex", False, "also print the tables as LaTeX tabulars")


def load_runs(input_dir: str, include_incomplete: bool, skipped: list | None = None
              ) -> list[list[dict]]:
    """The runs of <input_dir>/*/results.jsonl; ``skipped`` collects the names of the job
    directories left out (no done marker, or no results yet)."""
    from hjax.io.results import read_jsonl
    runs = []
    for name in sorted(os.listdir(input_dir)):
        job = os.path.join(input_dir, name)
        path = os.path.join(job, "results.jsonl")
        if not os.path.isdir(job) or not (os.path.exists(path) or _looks_like_job(job)):
            continue
        done = os.path.exists(os.path.join(job, "done"))
        records = read_jsonl(path) if os.path.exists(path) else []
        if records and (done or include_incomplete):
            runs.append(records)
        elif skipped is not None:
            skipped.append(name)
    return runs


def _looks_like_job(path: str) -> bool:
    """A job directory that has no results yet (a checkpoint or train.log only)."""
    return any(os.path.exists(os.path.join(path, n)) for n in ("checkpoints", "train.log"))


def report(runs, latex: bool = False) -> str:
    from hjax.data import dataset_info
    from hjax.protocols.domainbed.selection import (SELECTION_METHODS, results_table,
                                          results_table_latex)
    datasets = sorted({r[0]["args"]["dataset"] for r in runs})
    parts = [f"{len(runs)} runs\n"]
    for dataset in datasets:
        names = dataset_info(dataset).env_names
        for method in SELECTION_METHODS:
            parts.append(results_table(runs, method, dataset, names))
    if latex:
        parts.append("## LaTeX\n")
        for dataset in datasets:
            names = dataset_info(dataset).env_names
            for method in SELECTION_METHODS:
                parts.append(results_table_latex(runs, method, dataset, names))
    return "\n".join(parts)


def main(argv=None):
    argv = sys.argv if argv is None else argv
    parse_flags(FLAGS, argv)
    try:
        if not FLAGS.input_dir or not os.path.isdir(FLAGS.input_dir):
            raise UsageError(f"--input_dir={FLAGS.input_dir!r} is not a directory")
        skipped = []
        runs = load_runs(FLAGS.input_dir, FLAGS.include_incomplete, skipped)
        if skipped:
            print(f"note: {len(skipped)} unfinished job(s) left out (no done marker or no "
                  "results yet; --include_incomplete uses those with results): "
                  + ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""),
                  file=sys.stderr)
        if not runs:
            print(f"error: no finished runs under {FLAGS.input_dir!r} (each job directory "
                  "needs results.jsonl and a done marker); launch or finish the sweep first",
                  file=sys.stderr)
            sys.exit(1)
        inert = [r for r in runs if r[-1].get("penalty_note")]
        if inert:
            print(f"note: {len(inert)} of {len(runs)} runs had a penalty that never acted as "
                  f"configured (e.g. {inert[0][-1]['penalty_note']}); see penalty_note in "
                  "their results.jsonl", file=sys.stderr)
        text = report(runs, FLAGS.latex)
        print(text)
        if FLAGS.output:
            from hjax.io.results import write_atomic
            try:
                write_atomic(FLAGS.output, text)
            except OSError as e:
                raise UsageError(f"--output={FLAGS.output!r} is not writable ({e.strerror})")
    except UsageError as e:
        exit_usage(str(e))


if __name__ == "__main__":
    main()
