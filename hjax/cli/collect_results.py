"""Model-selection tables over a sweep's output (docs/protocols.md).

    python experiments/collect_results.py --input_dir=sweeps/cmnist [--latex]

Reads every <input_dir>/*/results.jsonl (finished jobs only, unless --include_incomplete)
and prints, per dataset and selection method (training-domain validation,
leave-one-domain-out, test-domain oracle), a Markdown table of test accuracy, mean ±
standard error over trial seeds; --latex adds the same tables as LaTeX tabulars (one column
per test env, then Avg; cells ``$mean \\pm se$``); --output writes the same text to a file
(atomically). Unfinished jobs that were left out are counted on stderr, missing cells are
"X" with a note under the table; with no finished run at all it says so and exits 1.

--input_dir may also be one finished job's folder (its own results.jsonl): that job's tables
alone, with a note naming the sweep folder to pass for the sweep's. A folder of ColoredMNIST
runs is refused in one line naming experiments/report.py (exit 2). Sweeps of an image dataset
trained from random weights (no --pretrained) get a note that their numbers are a smoke test.

A job whose files cannot be used (results.jsonl unreadable, not JSON lines, a record without
the fields selection needs, records of more than one job, a done marker naming another job)
is skipped with one warning line naming the file and why; when nothing usable is left it
exits 2. Jobs are grouped into sweeps by their settings (everything in a job's identity but
the algorithm, hparams seed, trial seed, test envs and hparams): jobs of other steps, data or image
settings get tables of their own, never averaged into another sweep's.
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


def load_runs(input_dir: str, include_incomplete: bool, skipped: list | None = None,
              problems: list | None = None, only: str | None = None) -> list[list[dict]]:
    """The runs of <input_dir>/*/results.jsonl; ``skipped`` collects the names of the job
    directories left out as unfinished (no done marker, or no results yet), ``problems`` one
    line per job whose files cannot be used (``hjax.io.record_checks``: unreadable, not JSON
    lines, records without the fields selection needs, records of more than one job, or a
    done marker of another job). ``only``: that job directory alone."""
    from hjax.io import record_checks
    runs = []
    try:
        names = sorted(os.listdir(input_dir))
    except OSError as e:
        raise UsageError(f"--input_dir={input_dir!r} cannot be read ({e.strerror})") from None
    for name in names if only is None else [only]:
        job = os.path.join(input_dir, name)
        path = os.path.join(job, "results.jsonl")
        if not os.path.isdir(job) or not (os.path.lexists(path) or _looks_like_job(job)):
            continue
        done = os.path.lexists(os.path.join(job, "done"))
        records, problem = ([], None)
        if os.path.lexists(path):
            records, problem = record_checks.load(path, "domainbed", allow_empty=True)
        if problem is None and not records and done and os.path.lexists(path):
            problem = f"{path}: holds no records, though the job is marked done"
        if problem is None and records:
            problem = _dataset_problem(path, records[0])
        if problem is None and records and done:
            problem = _done_problem(job, records)
        if problem is not None:
            if problems is not None:
                problems.append(problem)
        elif records and (done or include_incomplete):
            runs.append(records)
        elif skipped is not None:
            skipped.append(name)
    return runs


def _dataset_problem(path: str, record: dict) -> str | None:
    """Why a job's dataset cannot be tabulated (unknown here, or other environments)."""
    from hjax.data import dataset_info
    dataset = record["args"]["dataset"]
    try:
        names = dataset_info(dataset).env_names
    except (KeyError, ValueError):
        return f"{path}: unknown dataset {dataset!r}"
    envs = sum(1 for k in record if k.startswith("env") and k.endswith("_in_acc"))
    if envs != len(names):
        return f"{path}: {envs} environments, but {dataset} has {len(names)}"
    return None


def _done_problem(job: str, records: list[dict]) -> str | None:
    """Why a job's done marker does not belong to its records, or None. A marker that names a
    run_id (written since run identities) must name the records' run; a plain-text marker of
    an earlier version names nothing and is taken as it is."""
    import json
    path = os.path.join(job, "done")
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.loads(f.read())
    except OSError as e:
        return f"{path}: cannot be read ({e.strerror})"
    except ValueError:              # UnicodeDecodeError too: plain text, an earlier marker
        return None
    rid = marker.get("run_id") if isinstance(marker, dict) else None
    if isinstance(rid, str) and rid != records[0].get("run_id"):
        return (f"{path}: marks run {rid[:8]} done, but results.jsonl holds run "
                f"{str(records[0].get('run_id') or 'without a run id')[:8]}")
    return None


def _looks_like_job(path: str) -> bool:
    """A job directory that has no results yet (a checkpoint or train.log only)."""
    return any(os.path.exists(os.path.join(path, n)) for n in ("checkpoints", "train.log"))


def _colored_mnist_files(input_dir: str) -> list[str]:
    """The results.jsonl files of ``input_dir`` itself, else of its sub-folders, else of
    theirs, when every one of them holds a ColoredMNIST run's records; else []."""
    import glob
    from hjax.io import record_checks
    for pattern in ("results.jsonl", "*/results.jsonl", "*/*/results.jsonl"):
        found = sorted(glob.glob(os.path.join(input_dir, pattern)))
        if found:
            problems = [record_checks.load(p, "domainbed")[1] or "" for p in found]
            cmnist = all("holds a ColoredMNIST run's records" in p for p in problems)
            return found if cmnist else []
    return []


def smoke_test_note(group) -> str | None:
    """A note for a sweep of an image dataset whose ResNet started from random weights."""
    from hjax.data.images import IMAGE_DATASET_NAMES
    args = [r[-1].get("args", {}) for r in group.runs]
    if group.dataset not in IMAGE_DATASET_NAMES or any(a.get("pretrained") for a in args):
        return None
    return (f"Note: {group.title}: the ResNet was randomly initialised (no --pretrained), so "
            f"these are smoke-test numbers, not comparable with DomainBed's published "
            f"(ImageNet-initialised) results.\n")


def report(runs, latex: bool = False, warn=None) -> str:
    """The selection tables of ``runs``: one set per sweep (``selection.sweeps``), so jobs
    of other settings (steps, data, image settings, ...) are never selected among or
    averaged together; a sweep's title names what sets it apart when a dataset has several.
    ``warn`` gets one line per job left out as a duplicate of another."""
    from hjax.data import dataset_info
    from hjax.protocols.domainbed.selection import (SELECTION_METHODS, results_table,
                                                    results_table_latex, sweeps)
    groups = sweeps(runs, warn=warn)
    parts = [f"{sum(len(g.runs) for g in groups)} runs\n"]
    parts += [note for note in map(smoke_test_note, groups) if note]
    for fmt in ([results_table] + ([results_table_latex] if latex else [])):
        if fmt is results_table_latex:
            parts.append("## LaTeX\n")
        for g in groups:
            names = dataset_info(g.dataset).env_names
            for method in SELECTION_METHODS:
                parts.append(fmt(g.runs, method, g.dataset, names, title=g.title))
    return "\n".join(parts)


def main(argv=None):
    argv = sys.argv if argv is None else argv
    parse_flags(FLAGS, argv)
    try:
        if not FLAGS.input_dir or not os.path.isdir(FLAGS.input_dir):
            raise UsageError(f"--input_dir={FLAGS.input_dir!r} is not a directory")
        cmnist = _colored_mnist_files(FLAGS.input_dir)
        if cmnist:
            raise UsageError(f"--input_dir={FLAGS.input_dir!r} holds ColoredMNIST runs "
                             f"({cmnist[0]}), not a DomainBed sweep: use python "
                             f"experiments/report.py --results_dir={FLAGS.input_dir}")
        skipped, problems = [], []
        job_dir = os.path.abspath(FLAGS.input_dir)
        one_job = os.path.lexists(os.path.join(job_dir, "results.jsonl"))
        if one_job:
            print(f"note: --input_dir={FLAGS.input_dir} is one job's folder: its tables alone "
                  f"(pass the sweep's folder, {os.path.dirname(job_dir)}, for the sweep's)",
                  file=sys.stderr)
            runs = load_runs(os.path.dirname(job_dir), FLAGS.include_incomplete, skipped,
                             problems, only=os.path.basename(job_dir))
        else:
            runs = load_runs(FLAGS.input_dir, FLAGS.include_incomplete, skipped, problems)
        for line in problems:
            print(f"warning: {line}; job skipped", file=sys.stderr)
        if problems and not runs:
            raise UsageError(f"--input_dir={FLAGS.input_dir!r}: nothing usable; "
                             f"{len(problems)} job(s) skipped (see the warnings)")
        if skipped:
            print(f"note: {len(skipped)} unfinished job(s) left out (no done marker or no "
                  "results yet; --include_incomplete uses those with results): "
                  + ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""),
                  file=sys.stderr)
        if not runs and one_job:
            raise UsageError(f"--input_dir={FLAGS.input_dir!r} is one job's folder and the job "
                             f"is not finished (no done marker): re-run its command to finish "
                             f"it, or add --include_incomplete")
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
        text = report(runs, FLAGS.latex,
                      warn=lambda m: print(f"warning: {m}", file=sys.stderr))
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
