"""Builds the README's reproduction tables from results/*/*/results.jsonl (never by hand).

    python experiments/report.py                   # print the tables
    python experiments/report.py --update_readme   # rewrite the generated blocks in README.md

--update_readme also refreshes every ``<!-- include:begin PATH -->`` ... ``<!-- include:end -->``
block of the README with the current text of PATH (relative to the README), so tables other
scripts write (the DomainBed mini-sweep, benchmarks) reach the README by script too.

Layout read: results/<dataset or dataset_split>/<method>/results.jsonl, as written by
``experiments/run.py --output_dir=results/<...>/<method>``.
"""

from __future__ import annotations

import glob
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from hjax.results import (SUMMARY_COLUMNS, mean_std, read_jsonl, summary_row,  # noqa: E402
                          write_atomic)

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", "results", "folder holding <dataset>/<method>/results.jsonl")
flags.DEFINE_bool("update_readme", False, "replace the generated block in README.md")
flags.DEFINE_string("readme", "README.md", "README to update")
flags.DEFINE_string("paired_baseline", "fishr",
                    "also tabulate each method's per-restart differences from this method "
                    "(restarts with the same data and init seeds); empty: no paired table")
flags.DEFINE_integer("expected_restarts", None,
                     "flag runs with fewer restarts as incomplete (default: the protocol's, "
                     "10 for colored_mnist and 5 for the label-shift runs)")

METHOD_ORDER = ("erm", "irm", "vrex", "fishr", "hgp", "hutchinson", "hutchinson_shared",
                "exact_diag")
# SPEC section 6: Fishr paper, Table 2 (IRM-protocol ColoredMNIST; train / test / gray test).
PUBLISHED = {"erm": "86.4 / 14.0 / 71.0", "irm": "71.0 / 65.6 / 66.1",
             "vrex": "71.7 / 67.2 / 68.6", "fishr": "71.0 / 69.5 / 70.2"}
# Restarts the README's protocol asks for (issue 4): 10, and 5 for the label-shift tables.
EXPECTED_RESTARTS = {"colored_mnist": 10, "colored_mnist_label_shift": 5}
BEGIN, END = "<!-- report:begin (experiments/report.py) -->", "<!-- report:end -->"


def collect(results_dir):
    """{dataset: {method: records}} for every results.jsonl found."""
    found = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "*", "results.jsonl"))):
        dataset = os.path.basename(os.path.dirname(os.path.dirname(path)))
        method = os.path.basename(os.path.dirname(path))
        found.setdefault(dataset, {})[method] = read_jsonl(path)
    return found


def _order(methods):
    return sorted(methods, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))


def dataset_table(dataset, runs, expected):
    lines = [f"**{dataset}**", "",
             "| method | train acc | test acc | gray test acc | restarts | step time | "
             "published (train / test / gray) |", "|---|---|---|---|---|---|---|"]
    for method in _order(runs):
        records = runs[method]
        row = summary_row(records)
        ok = [r for r in records if r["status"] == "ok"]
        step = mean_std([r["step_time_s"] for r in ok])[0] if ok else float("nan")
        restarts = row["restarts"]
        if expected and len(records) < expected:
            restarts += f" (incomplete: {len(records)} of {expected} run)"
        published = PUBLISHED.get(method, "") if dataset == "colored_mnist" else ""
        lines.append(f"| {method} | {row['train_acc']} | {row['test_acc']} | "
                     f"{row['gray_test_acc']} | {restarts} | {step:.2f} s | {published} |")
    return "\n".join(lines) + "\n"


def _pairing_key(record):
    # Restart r of base seed s draws the same data and the same init key for every method.
    return record.get("seed"), record.get("data_seed", record["restart"])


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
        m = sum(d) / len(d)
        se = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d))
        out[key] = (m, se, len(d))
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


def report(results_dir, expected=None, paired_baseline="fishr"):
    found = collect(results_dir)
    if not found:
        return "No results yet under results/.\n"
    parts = []
    for d in sorted(found):
        parts.append(dataset_table(d, found[d], expected or EXPECTED_RESTARTS.get(
            d.split("_intended")[0].split("_reference")[0])))
        if paired_baseline and paired_baseline in found[d]:
            paired = paired_table(found[d], paired_baseline)
            if paired:
                parts.append(paired)
    return ("Accuracies (%) at the last step, mean ± std over restarts; step time is the median "
            "seconds per training step on the machine that ran it.\n\n" + "\n".join(parts))


INCLUDE = re.compile(r"(<!-- include:begin (\S+) -->\n)(.*?)(<!-- include:end -->)", re.S)


HEADING = re.compile(r"^(#+) ", re.M)
INCLUDED_TOP_LEVEL = 4      # an included file's top heading becomes a README "####"


def demote_headings(text: str) -> str:
    """Shift the file's Markdown headings so that its top level is INCLUDED_TOP_LEVEL (a
    standalone file's "# Title" must not become a top-level README section)."""
    levels = [len(h) for h in HEADING.findall(text)]
    if not levels:
        return text
    shift = max(0, INCLUDED_TOP_LEVEL - min(levels))
    return HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + shift) + " ", text)


def refresh_includes(content: str, root: str) -> str:
    """Every include block replaced by its file's text, headings demoted (a missing file is
    an error)."""
    def fill(m):
        path = os.path.join(root, m.group(2))
        if not os.path.exists(path):
            raise SystemExit(f"error: README includes {m.group(2)}, which does not exist")
        with open(path) as f:
            text = demote_headings(f.read())
        return m.group(1) + text + ("" if text.endswith("\n") else "\n") + m.group(4)
    return INCLUDE.sub(fill, content)


def update_readme(readme, text):
    with open(readme) as f:
        content = f.read()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"error: {readme} has no generated block ({BEGIN} ... {END})")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    content = refresh_includes(f"{head}{BEGIN}\n{text}{END}{tail}",
                               os.path.dirname(os.path.abspath(readme)))
    write_atomic(readme, content)


def main(argv):
    del argv
    text = report(FLAGS.results_dir, FLAGS.expected_restarts, FLAGS.paired_baseline)
    print(text)
    if FLAGS.update_readme:
        update_readme(FLAGS.readme, text)


if __name__ == "__main__":
    app.run(main)
