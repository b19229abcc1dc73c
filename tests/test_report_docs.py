"""experiments/report.py --update_readme also writes the docs/ pages' generated blocks, and a
block's options choose its datasets and paired baseline."""

import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN = "<!-- report:begin{} (experiments/report.py) -->"
END = "<!-- report:end -->"


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _rec(restart, test):
    return {"status": "ok", "restart": restart, "seed": 0, "data_seed": restart,
            "train_acc": 0.7, "test_acc": test, "gray_test_acc": 0.7, "step_time_s": 1.0}


def _report(*args):
    return subprocess.run([sys.executable, "experiments/report.py", *args],
                          capture_output=True, text=True, cwd=ROOT)


def _block(text, options=""):
    return text.split(BEGIN.format(options), 1)[1].split(END, 1)[0]


def test_update_readme_writes_docs_blocks_with_their_options(tmp_path):
    results = tmp_path / "results"
    for method, tests in {"fishr": (0.66, 0.70), "hgp": (0.67, 0.73)}.items():
        _write(results / "colored_mnist" / method / "results.jsonl",
               [_rec(r, t) for r, t in enumerate(tests)])
    _write(results / "colored_mnist_label_shift_intended" / "erm" / "results.jsonl",
           [_rec(0, 0.16)])
    (tmp_path / "results" / "bench.md").write_text("# Bench\n| a | b |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n{BEGIN.format(' datasets=colored_mnist paired=')}\nold\n{END}\n"
                      "end\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "reproduction.md").write_text(
        f"# Repro\n{BEGIN.format('')}\nstale\n{END}\nmiddle\n"
        "<!-- include:begin ../results/bench.md -->\nstale\n<!-- include:end -->\nbottom\n")
    untouched = "# Plain page\n\nno blocks here\n"
    (docs / "plain.md").write_text(untouched)

    proc = _report(f"--results_dir={results}", "--update_readme", f"--readme={readme}")
    assert proc.returncode == 0, proc.stderr

    front = readme.read_text()
    head = _block(front, " datasets=colored_mnist paired=")
    assert "old" not in head and "**colored_mnist**" in head and "| hgp |" in head
    assert "label_shift" not in head and "Paired with" not in head
    assert front.startswith("# top\n") and front.endswith(f"{END}\nend\n")

    page = (docs / "reproduction.md").read_text()
    full = _block(page)
    assert "stale" not in page
    assert "**colored_mnist**" in full and "**colored_mnist_label_shift_intended**" in full
    hgp = next(l for l in full.split("Paired with fishr", 1)[1].splitlines()
               if l.startswith("| hgp"))
    assert hgp == "| hgp | +0.0 ± 0.0 | +2.0 ± 1.0 | +0.0 ± 0.0 | 2 |", hgp
    # Includes are relative to the page that holds them, headings demoted.
    assert ("<!-- include:begin ../results/bench.md -->\n#### Bench\n| a | b |\n"
            "<!-- include:end -->\nbottom\n") in page
    assert (docs / "plain.md").read_text() == untouched

    # --docs= limits the update to the README.
    (docs / "reproduction.md").write_text(f"{BEGIN.format('')}\nstale\n{END}\n")
    proc = _report(f"--results_dir={results}", "--update_readme", f"--readme={readme}",
                   "--docs=")
    assert proc.returncode == 0, proc.stderr
    assert "stale" in (docs / "reproduction.md").read_text()


def test_bad_block_option_and_missing_include_are_one_line_errors(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN.format(' colour=red')}\n{END}\n")
    proc = _report(f"--results_dir={tmp_path}", "--update_readme", f"--readme={readme}")
    assert proc.returncode != 0 and "colour" in proc.stderr and "Traceback" not in proc.stderr

    readme.write_text(f"{BEGIN.format('')}\n{END}\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "<!-- include:begin ../nowhere.md -->\n<!-- include:end -->\n")
    proc = _report(f"--results_dir={tmp_path}", "--update_readme", f"--readme={readme}")
    assert proc.returncode != 0 and "nowhere.md" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_repository_readme_and_docs_tables_are_current():
    """The committed README and docs/ hold exactly what report.py generates now."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert re.match(r"# hjax\n\n```\nmake run +# .*\nmake test +# .*\n```\n", readme)
    headline = _block(readme, " datasets=colored_mnist,colored_mnist_before_fix paired=")
    page = _block((ROOT / "docs" / "reproduction.md").read_text())
    printed = _report().stdout
    assert page.strip() == printed.strip()
    # The headline block holds what its options generate: those datasets, no paired table.
    from hjax.protocols.irm_cmnist.tables import report
    expected = report(str(ROOT / "results"), None, "", ["colored_mnist", "colored_mnist_before_fix"])
    assert headline.strip() == expected.strip() and "published" in headline
