"""Builds the reproduction tables of README.md and docs/ from results/*/*/results.jsonl
(never by hand).

    python experiments/report.py                   # print the tables
    python experiments/report.py --update_readme   # rewrite the generated blocks of README.md
                                                   # and of docs/*.md

A generated block is ``<!-- report:begin OPTIONS (experiments/report.py) -->`` ...
``<!-- report:end -->``; OPTIONS (none, or space-separated ``key=value``) choose what it
holds: ``datasets=a,b`` only those result folders (default: all), ``paired=METHOD`` the
baseline of the paired table (``paired=`` for none; default: --paired_baseline). The
README holds the headline ColoredMNIST table, docs/reproduction.md every table.

--update_readme also refreshes every ``<!-- include:begin PATH -->`` ... ``<!-- include:end -->``
block of those files with the current text of PATH (relative to the file holding the block),
so tables other scripts write (the DomainBed mini-sweep, benchmarks) reach the docs by script
too. The README must hold at least one generated block; a docs page may hold none.

Layout read: results/<dataset or dataset_split>/<method>/results.jsonl, as written by
``experiments/run.py --output_dir=results/<...>/<method>``; --results_dir may also be one
dataset's folder (<method>/results.jsonl) or one run's folder (its results.jsonl; the table is
named from its records). A run whose steps (or, for a method with a published row, hparams)
differ from the protocol's is flagged in its row and never compared with published numbers. A file that cannot be used
(unreadable, not JSON lines, a record without the fields the tables need, or records of
more than one run) is skipped with one warning line naming it; --update_readme then refuses
(exit 2), and a --results_dir that is not a folder, or whose results files are all
unusable, exits 2.
Each table's heading names the code, libraries and devices its records were produced by
("provenance not recorded" for records written before provenance).
"""

from __future__ import annotations

import sys

from absl import flags

from hjax.cli import UsageError, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", "results", "folder holding <dataset>/<method>/results.jsonl "
                    "(or one dataset's <method>/results.jsonl, or one run's results.jsonl)")
flags.DEFINE_bool("update_readme", False,
                  "rewrite the generated and include blocks of --readme and of the --docs pages")
flags.DEFINE_string("readme", "README.md", "README to update")
flags.DEFINE_list("docs", ["docs/*.md"],
                  "with --update_readme: further Markdown files (globs, relative to the "
                  "README's folder) whose generated and include blocks are rewritten too; "
                  "empty: the README only")
flags.DEFINE_string("paired_baseline", "fishr",
                    "also tabulate each method's per-restart differences from this method "
                    "(restarts with the same data and init seeds); empty: no paired table")
flags.DEFINE_integer("expected_restarts", None,
                     "flag runs with fewer restarts as incomplete (default: the protocol's, "
                     "10 for colored_mnist and 5 for the label-shift runs)")

from hjax.io.doc_blocks import (  # noqa: F401  (re-exported for tests and scripts)
    BEGIN, END, demote_headings, doc_pages, refresh_file, refresh_includes, update_readme)
from hjax.protocols.irm_cmnist.tables import (  # noqa: F401  (re-exported)
    EXPECTED_RESTARTS, PUBLISHED, block_kwargs, collect, dataset_table, paired_differences,
    paired_table, report)


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        problems = []
        try:
            text = report(FLAGS.results_dir, FLAGS.expected_restarts, FLAGS.paired_baseline,
                          problems=problems)
        finally:        # each skipped file: one line, before the tables or the error
            for line in dict.fromkeys(problems):
                print(f"warning: {line}; skipped", file=sys.stderr)
        print(text)
        if FLAGS.update_readme:
            if problems:     # a table silently missing a row must not reach the README
                raise UsageError(f"not updating {FLAGS.readme}: {len(set(problems))} results "
                                 "file(s) under --results_dir were skipped (warnings above)")

            def make_block(options, where):
                kwargs = dict({"paired_baseline": FLAGS.paired_baseline},
                              **block_kwargs(options, where))
                return report(FLAGS.results_dir, FLAGS.expected_restarts, **kwargs)
            update_readme(FLAGS.readme, text, make_block, FLAGS.docs)
    run_main(FLAGS, argv, body)


if __name__ == "__main__":
    main()
