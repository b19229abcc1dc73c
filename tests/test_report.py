"""experiments/report.py builds its tables from results files; the benchmark scripts run."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _rec(restart, test, status="ok"):
    return {"status": status, "restart": restart, "train_acc": 0.7 if status == "ok" else None,
            "test_acc": test if status == "ok" else None,
            "gray_test_acc": 0.7 if status == "ok" else None, "step_time_s": 1.0}


def test_report_tables_come_from_the_files_and_flag_incomplete_runs(tmp_path):
    _write(tmp_path / "colored_mnist" / "hgp" / "results.jsonl",
           [_rec(0, 0.68), _rec(1, 0.70), _rec(2, None, "diverged")])
    _write(tmp_path / "colored_mnist" / "erm" / "results.jsonl", [_rec(0, 0.14)])
    readme = tmp_path / "README.md"
    (tmp_path / "tables.md").write_text("# Sweep\n\n## part\n| sweep | table |\n")
    readme.write_text("top\n<!-- report:begin (experiments/report.py) -->\nold\n"
                      "<!-- report:end -->\nmiddle\n<!-- include:begin tables.md -->\nstale\n"
                      "<!-- include:end -->\nbottom\n")
    proc = subprocess.run([sys.executable, "experiments/report.py",
                           f"--results_dir={tmp_path}", "--update_readme",
                           f"--readme={readme}", "--expected_restarts=3"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert text.startswith("top\n") and text.endswith("bottom\n") and "old" not in text
    # Include blocks are refreshed from their files.
    assert "stale" not in text
    # ... with the file's headings demoted below the README's sections.
    assert ("<!-- include:begin tables.md -->\n#### Sweep\n\n##### part\n| sweep | table |\n"
            "<!-- include:end -->") in text
    hgp = next(l for l in text.splitlines() if l.startswith("| hgp"))
    assert "69.0 ± 1.0" in hgp and "2/3" in hgp           # diverged restart excluded
    erm = next(l for l in text.splitlines() if l.startswith("| erm"))
    assert "14.0 ± 0.0" in erm and "incomplete: 1 of 3" in erm and "86.4 / 14.0 / 71.0" in erm
    assert text.index("| erm") < text.index("| hgp")


def test_bench_train_runs_on_fake_data(tmp_path):
    out = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, "experiments/bench_train.py", "--fake_data",
                           "--methods=erm,hgp", "--steps=1", "--rounds=2", f"--output={out}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = out.read_text()
    assert "| erm |" in table and "| hgp |" in table and "1.00x" in table
    assert "Median of 2 x 1 steps" in table
    bad = subprocess.run([sys.executable, "experiments/bench_train.py", "--rounds=0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "--rounds=0" in bad.stderr and "Traceback" not in bad.stderr
