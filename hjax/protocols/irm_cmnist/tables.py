"""The ColoredMNIST reproduction tables of README.md and docs/ (behind ``python -m
hjax.cli.report``; the blocks that hold them are rewritten by :mod:`hjax.io.doc_blocks`).

Layout read: results/<dataset or dataset_split>/<method>/results.jsonl, as the ColoredMNIST
runs write it; also one dataset's folder (<method>/results.jsonl) or one run's folder (the
results.jsonl that ``colored_mnist --output_dir`` writes). A method folder is one run: a results.jsonl whose records belong to more than
one run (another run_id, or for records without one other settings), or that cannot be read,
is left out with a warning rather than averaged (``hjax.io.record_checks``); each table
names the code, libraries and devices that produced it (the records' provenance).

Like for like: a run whose steps differ from the protocol's, or (for the methods with a
published row) whose hparams differ from the published protocol's, is flagged in its row and
kept out of the comparisons with published numbers. Standard errors here are of a mean over
restarts: sample std (n - 1) / sqrt(n) (:func:`mean_and_sample_se`).
"""

from __future__ import annotations

import glob
import math
import os

from hjax.errors import ConfigError
from hjax.io import record_checks
from hjax.io.provenance import describe
from hjax.io.results import SUMMARY_COLUMNS, mean_std, summary_row
from hjax.protocols.irm_cmnist.train import METHODS, method_hparams

# The protocol's number of steps (the IRM / Fishr scripts'; ExperimentConfig's default).
PROTOCOL_STEPS = 501
# docs/protocols.md, "Published numbers": Fishr paper, Table 2 (IRM-protocol ColoredMNIST; train / test / gray test).
PUBLISHED = {"erm": "86.4 / 14.0 / 71.0", "irm": "71.0 / 65.6 / 66.1",
             "vrex": "71.7 / 67.2 / 68.6", "fishr": "71.0 / 69.5 / 70.2"}
# Restarts the README's protocol asks for: 10, and 5 for the label-shift tables.
EXPECTED_RESTARTS = {"colored_mnist": 10, "colored_mnist_label_shift": 5}
# A report block's marker options (hjax.io.doc_blocks) -> report() keyword arguments.
BLOCK_OPTIONS = ("datasets", "paired")


def block_kwargs(options: dict, where: str) -> dict:
    """report() keyword arguments of a generated block's ``key=value`` options."""
    out = {}
    for key, value in options.items():
        if key not in BLOCK_OPTIONS:
            raise ConfigError(f"{where}: unknown report block option {key!r} "
                             f"(known: {', '.join(BLOCK_OPTIONS)})")
        if key == "datasets":
            out["datasets"] = [d for d in value.split(",") if d]
        else:
            out["paired_baseline"] = value
    return out


def _results_files(results_dir):
    """[(dataset folder name or None, method folder name or None, path)]: a results root's
    <dataset>/<method>/results.jsonl, else a dataset folder's <method>/results.jsonl, else a
    run folder's own results.jsonl (None: named from its records)."""
    here = os.path.join(results_dir, "results.jsonl")
    if os.path.lexists(here):
        return [(None, None, here)]
    name = os.path.basename(os.path.normpath(os.path.abspath(results_dir)))
    one_level = sorted(glob.glob(os.path.join(results_dir, "*", "results.jsonl")))
    if one_level:
        return [(name, os.path.basename(os.path.dirname(p)), p) for p in one_level]
    return [(os.path.basename(os.path.dirname(os.path.dirname(p))),
             os.path.basename(os.path.dirname(p)), p)
            for p in sorted(glob.glob(os.path.join(results_dir, "*", "*", "results.jsonl")))]


def _run_dataset(record) -> str:
    """A run's table name from its records: the dataset, its split and a TF32 suffix, as the
    results folders are named."""
    name = record.get("dataset", "colored_mnist")
    if record.get("split"):
        name += f"_{record['split']}"
    return name + (TF32_SUFFIX if record.get("matmul") == "tf32" else "")


def collect(results_dir, problems: list | None = None):
    """{dataset: {method: records}} for every usable results.jsonl under ``results_dir``
    (a results root, one dataset's folder, or one run's folder).

    A file that cannot be used (unreadable, not JSON lines, a record missing a field the
    tables need, records of more than one run; ``hjax.io.record_checks``) is left out and one
    line naming it and why is appended to ``problems``. ``results_dir`` must be a folder.
    """
    if not os.path.isdir(results_dir):
        raise ConfigError(f"--results_dir={results_dir!r} is not a directory")
    found = {}
    for dataset, method, path in _results_files(results_dir):
        records, problem = record_checks.load(path, "colored_mnist")
        if problem:
            if problems is not None:
                problems.append(problem)
            continue
        if dataset is None:
            dataset, method = _run_dataset(records[0]), records[0].get("method", "run")
        found.setdefault(dataset, {})[method] = records
    return found


def provenance_line(runs) -> str:
    """Which code, libraries and devices produced a table's records: one description
    (``hjax.io.provenance.describe``) or, when they differ, each with its methods."""
    by = {}
    for method in _order(runs):
        for r in runs[method]:
            by.setdefault(describe(r.get("provenance")), []).append(method)
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{d} ({', '.join(dict.fromkeys(ms))})" for d, ms in by.items())


def _order(methods):
    return sorted(methods, key=lambda m: (METHODS.index(m) if m in METHODS else 99, m))


# Folder suffix of the runs kept from before the test-domain fix, e.g.
# results/colored_mnist_before_fix/<method>: complete tables, but on other test images.
BEFORE_FIX_SUFFIX = "_before_fix"


# Folder suffix of runs with emulated TF32 matmuls (``--matmul=tf32``), e.g.
# results/colored_mnist_tf32/irm: the same protocol, the published GPU runs' arithmetic.
TF32_SUFFIX = "_tf32"


def protocol_of(dataset: str) -> str:
    """The protocol a results folder holds: its name without the before-fix, TF32 and split
    suffixes ("colored_mnist_label_shift_intended_before_fix" -> "colored_mnist_label_shift")."""
    name = dataset.removesuffix(BEFORE_FIX_SUFFIX).removesuffix(TF32_SUFFIX)
    for split in ("_intended", "_reference"):
        name = name.removesuffix(split)
    return name


# Records written before the test-domain fix carry no ``test_domain``: each restart tested on a random
# 10,000 of MNIST's 60,000 training images instead of the scripts' fixed images 50,000-59,999.
PRE_FIX_TEST_DOMAIN = "random 10k (before the fix)"


def test_domain(records) -> str:
    """Which test images a method's restarts used, as the table prints it."""
    domains = {r.get("test_domain") or PRE_FIX_TEST_DOMAIN for r in records}
    return domains.pop() if len(domains) == 1 else "mixed: " + ", ".join(sorted(domains))


def protocol_differences(records, method: str | None, hparams: bool) -> list[str]:
    """What a run's records set otherwise than the protocol: steps, and with ``hparams`` the
    hparams of ``method``'s published protocol (``method_hparams``); e.g. ["steps 20
    (protocol: 501)"]. Fields a record does not carry (older records) are not compared."""
    out = []
    steps = {r["steps"] for r in records if "steps" in r}
    if steps - {PROTOCOL_STEPS}:
        out.append(f"steps {', '.join(map(str, sorted(steps)))} (protocol: {PROTOCOL_STEPS})")
    if hparams and method in METHODS:
        expected = method_hparams(method)
        for name in sorted(expected):
            got = {repr(r["hparams"][name]) for r in records
                   if isinstance(r.get("hparams"), dict) and name in r["hparams"]}
            if got - {repr(expected[name])}:
                out.append(f"{name} {', '.join(sorted(got))} (protocol: {expected[name]!r})")
    return out


def dataset_table(dataset, runs, expected):
    lines = [f"**{dataset}** (produced by: {provenance_line(runs)})", "",
             "| method | train acc | test acc | gray test acc | restarts | step time | "
             "test domain | published (train / test / gray) |",
             "|---|---|---|---|---|---|---|---|"]
    for method in _order(runs):
        records = runs[method]
        row = summary_row(records)
        ok = [r for r in records if r["status"] == "ok"]
        step = mean_std([r.get("step_time_s") for r in ok])[0] if ok else float("nan")
        restarts = row["restarts"]
        if expected and len(records) < expected:
            restarts += f" (incomplete: {len(records)} of {expected} run)"
        published_row = method in PUBLISHED and protocol_of(dataset) == "colored_mnist"
        differs = protocol_differences(records, method, hparams=published_row)
        if differs:
            restarts += f" (not the protocol: {'; '.join(differs)})"
        published = ""
        if published_row:
            published = PUBLISHED[method] if not differs else "not comparable (see restarts)"
        lines.append(f"| {method} | {row['train_acc']} | {row['test_acc']} | "
                     f"{row['gray_test_acc']} | {restarts} | {step:.2f} s | "
                     f"{test_domain(records)} | {published} |")
    return "\n".join(lines) + "\n"


def mean_and_sample_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean with the sample std (n - 1 in the variance),
    which these tables print (DomainBed's tables use the population std:
    hjax.protocols.domainbed.selection.mean_and_population_se)."""
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def _published(method):
    """The published (train, test, gray) means of ``method``, in points."""
    return [float(x) for x in PUBLISHED[method].split(" / ")]


def _distance(d, se):
    """``d ± se`` as a table prints it (never "-0.0"), and whether |d| <= se as printed, so
    that the table's "within one s.e." column agrees with its cells."""
    return f"{(d if round(d, 1) else 0.0):+.1f} ± {se:.1f}", abs(round(d, 1)) <= round(se, 1)


def _distance_cells(items) -> tuple[list[str], str]:
    """(cells, the columns within one s.e., or "none") of [(column title, distance, s.e.,
    text after the cell)]."""
    cells, within = [], []
    for title, d, se, suffix in items:
        cell, near = _distance(d, se)
        cells.append(cell + suffix)
        if near:
            within.append(title.replace(" acc", ""))
    return cells, ", ".join(within) or "none"


def published_table(runs) -> str:
    """Each method with a published row: our mean minus the published mean, in points, ± the
    standard error of our mean (sample std / sqrt(n)), and which columns lie within one
    standard error. Methods with fewer than 2 finished restarts, or run with other settings
    than the published protocol's (steps, hparams), are left out."""
    rows = []
    for method in _order(runs):
        if method not in PUBLISHED or protocol_differences(runs[method], method, hparams=True):
            continue
        ok = [r for r in runs[method] if r["status"] == "ok"]
        if len(ok) < 2:
            continue
        items = []
        for (key, title), pub in zip(SUMMARY_COLUMNS, _published(method)):
            m, se = mean_and_sample_se([100 * r[key] for r in ok])
            items.append((title, m - pub, se, ""))
        cells, within = _distance_cells(items)
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {len(ok)} | "
                    f"{within} | {test_domain(runs[method])} |")
    if not rows:
        return ""
    return "\n".join([
        "Against the published rows: our mean minus the published mean, in points ± the "
        "standard error of our mean.", "",
        "| method | train acc | test acc | gray test acc | restarts | within one s.e. | "
        "test domain |", "|---|---|---|---|---|---|---|", *rows]) + "\n"


def _pairing_key(record):
    # Restart r of base seed s draws the same data and the same init key for every method,
    # but records from before the test-domain fix were tested on other images.
    return (record.get("seed"), record.get("data_seed", record["restart"]),
            record.get("test_domain"))


def paired_differences(records, baseline_records):
    """{column: (mean, standard error, n)} of 100 * (record - baseline) over the restarts
    both finished ("ok") with the same seeds; None where fewer than 2 pair up."""
    base = {_pairing_key(r): r for r in baseline_records if r["status"] == "ok"}
    pairs = [(r, base[_pairing_key(r)]) for r in records
             if r["status"] == "ok" and _pairing_key(r) in base]
    if len(pairs) < 2:
        return None
    out = {}
    for key, _ in SUMMARY_COLUMNS:
        d = [100 * (a[key] - b[key]) for a, b in pairs]
        out[key] = (*mean_and_sample_se(d), len(d))
    return out


def paired_table(runs, baseline):
    """Each method minus ``baseline`` restart by restart (same data draws, same init): the
    restart-to-restart spread of the data cancels, so small method effects show."""
    rows = []
    for method in _order(runs):
        if method == baseline:
            continue
        diff = paired_differences(runs[method], runs[baseline])
        if diff is None:
            continue
        cells = [f"{(m if round(m, 1) else 0.0):+.1f} ± {se:.1f}"    # no "-0.0"
                 for m, se, _ in (diff[k] for k, _ in SUMMARY_COLUMNS)]
        rows.append(f"| {method} | " + " | ".join(cells)
                    + f" | {diff['test_acc'][2]} |")
    if not rows:
        return ""
    return "\n".join([
        f"Paired with {baseline} (same restarts, so the same data and initialization): "
        "mean difference in points ± its standard error.", "",
        "| method | train acc | test acc | gray test acc | restarts paired |",
        "|---|---|---|---|---|", *rows]) + "\n"


def published_gap_table(runs, baseline="erm") -> str:
    """Each method with a published row, paired with ``baseline`` restart by restart: the
    paired mean difference minus the published difference of the two rows, ± the standard
    error of the paired mean. The shared data draws cancel in the pairing, so this tests the
    methods' gaps rather than the level both inherit from a run's draws."""
    if baseline not in runs or baseline not in PUBLISHED or protocol_differences(
            runs[baseline], baseline, hparams=True):
        return ""
    base_pub = _published(baseline)
    rows = []
    for method in _order(runs):
        if (method == baseline or method not in PUBLISHED
                or protocol_differences(runs[method], method, hparams=True)):
            continue
        diff = paired_differences(runs[method], runs[baseline])
        if diff is None:
            continue
        items = []
        for (key, title), p, b in zip(SUMMARY_COLUMNS, _published(method), base_pub):
            m, se, _ = diff[key]
            items.append((title, m - (p - b), se, f" ({m:+.1f} vs {p - b:+.1f})"))
        cells, within = _distance_cells(items)
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {diff['test_acc'][2]} | "
                    f"{within} |")
    if not rows:
        return ""
    return "\n".join([
        f"Against the published gaps to {baseline}: our mean difference from {baseline} over "
        "the same restarts minus the published rows' difference, in points ± the standard "
        "error of our paired mean (in brackets: ours vs published).", "",
        "| method | train acc | test acc | gray test acc | restarts paired | within one s.e. |",
        "|---|---|---|---|---|---|", *rows]) + "\n"


def report(results_dir, expected=None, paired_baseline="fishr", datasets=None,
           problems: list | None = None):
    """The tables of every dataset folder under ``results_dir`` (or of ``datasets``). Files
    that cannot be used are left out and named in ``problems`` (see :func:`collect`); a
    ConfigError when ``results_dir`` is not a folder, or when it holds results files but
    none of them is usable."""
    skipped = [] if problems is None else problems
    before = len(skipped)
    all_found = collect(results_dir, skipped)
    if not all_found and len(skipped) > before:
        raise ConfigError(f"--results_dir={results_dir!r}: nothing usable; "
                          f"{len(skipped) - before} results file(s) skipped (see the warnings)")
    found = all_found
    if datasets is not None:
        found = {d: runs for d, runs in found.items() if d in datasets}
    if not found:
        return (f"No results yet under {results_dir}"
                + (f" for {', '.join(datasets)}" if datasets else "") + ".\n")
    parts = []
    for d in sorted(found):
        parts.append(dataset_table(d, found[d], expected or EXPECTED_RESTARTS.get(
            protocol_of(d))))
        if protocol_of(d) == "colored_mnist":
            published = published_table(found[d])
            if published:
                parts.append(published)
            gaps = published_gap_table(found[d])
            if gaps:
                parts.append(gaps)
        if paired_baseline and paired_baseline in found[d]:
            paired = paired_table(found[d], paired_baseline)
            if paired:
                parts.append(paired)
    return ("Accuracies (%) at the last step, mean ± std over restarts; step time is the median "
            "seconds per training step on the machine that ran it.\n\n" + "\n".join(parts))


