"""Upgrade results written before run identities: `python -m hjax.cli.upgrade_results PATH...`

Every results.jsonl at or below each PATH whose records carry no run identity gets, in every
record, the run_id and identity that the current code computes for the record's settings,
and provenance {"recorded": false, ...}; a DomainBed job's plain-text done marker becomes
the JSON one. Files are rewritten atomically; upgraded files are left as they are; a file
whose settings cannot be inferred is left untouched and named with the reason
(hjax.protocols.upgrade says what is inferred and how).

Prints one line per file; exits 0 when no file was refused, 1 otherwise, 2 on bad flags.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from hjax.cli import UsageError, run_main
from hjax.protocols.upgrade import upgrade

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "mnist", ["mnist", "fake"],
                  "the MNIST the legacy ColoredMNIST records were trained on (they do not say)")
flags.DEFINE_bool("dry_run", False, "say what would be upgraded, write nothing")


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        # The positional arguments: every flag of this command starts with "--".
        paths = [a for a in argv[1:] if not a.startswith("-")]
        if not paths:
            raise UsageError("give one or more results folders or results.jsonl files")
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise UsageError(f"{missing[0]} does not exist")
        outcomes = upgrade(paths, FLAGS.data, FLAGS.dry_run)
        if not outcomes:
            raise UsageError(f"no results.jsonl under {', '.join(paths)}")
        for o in outcomes:
            verb = ("would upgrade" if FLAGS.dry_run and o.status == "upgraded"
                    else o.status)
            print(f"{verb}: {o.path}: {o.note}", flush=True)
        refused = sum(o.status == "refused" for o in outcomes)
        counts = {s: sum(o.status == s for o in outcomes)
                  for s in ("upgraded", "already", "refused")}
        print(", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)
        if refused:
            sys.exit(1)
    run_main(FLAGS, argv, body)


if __name__ == "__main__":
    main()
