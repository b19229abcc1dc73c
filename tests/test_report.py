"""experiments/report.py builds its tables from results files; the benchmark scripts run.

report.py runs in-process (the `cli` fixture); bench_train.py, a script, as a subprocess.
"""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _rec(restart, test, status="ok"):
    return {"status": status, "restart": restart, "train_acc": 0.7 if status == "ok" else None,
            "test_acc": test if status == "ok" else None,
            "gray_test_acc": 0.7 if status == "ok" else None, "step_time_s": 1.0}


def test_report_tables_come_from_the_files_and_flag_incomplete_runs(tmp_path, cli):
    _write(tmp_path / "colored_mnist" / "hgp" / "results.jsonl",
           [_rec(0, 0.68), _rec(1, 0.70), _rec(2, None, "diverged")])
    _write(tmp_path / "colored_mnist" / "erm" / "results.jsonl", [_rec(0, 0.14)])
    readme = tmp_path / "README.md"
    (tmp_path / "tables.md").write_text("# Sweep\n\n## part\n| sweep | table |\n")
    readme.write_text("top\n<!-- report:begin (experiments/report.py) -->\nold\n"
                      "<!-- report:end -->\nmiddle\n<!-- include:begin tables.md -->\nstale\n"
                      "<!-- include:end -->\nbottom\n")
    proc = cli("report", f"--results_dir={tmp_path}", "--update_readme", f"--readme={readme}",
               "--expected_restarts=3")
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


@pytest.mark.fast_compile              # the plumbing of timed training runs
def test_bench_train_runs_on_fake_data(tmp_path):
    out = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, "experiments/bench_train.py", "--fake_data",
                           "--methods=erm,hgp", "--steps=1", "--rounds=2", f"--output={out}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = out.read_text()
    assert "| erm |" in table and "| hgp |" in table and "1.00x" in table
    assert "2 rounds x 1 steps per method" in table and "[" in table
    bad = subprocess.run([sys.executable, "experiments/bench_train.py", "--rounds=0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "--rounds=0" in bad.stderr and "Traceback" not in bad.stderr


def test_paired_table_differences_restarts_with_the_same_seeds(tmp_path, cli):
    def rec(restart, test, seed=0, status="ok"):
        r = _rec(restart, test, status)
        r.update(seed=seed, data_seed=seed * 10_000 + restart)
        return r

    # fishr: 0.66, 0.70, 0.68 on restarts 0-2. hgp: +1, +3 points on restarts 0 and 1;
    # restart 2 diverged and restart 3 has no partner, so neither is paired. (A folder's
    # restarts share their base seed: records of another seed are another run, and a
    # folder mixing runs is skipped, tests/test_bad_files.py.)
    _write(tmp_path / "colored_mnist" / "fishr" / "results.jsonl",
           [rec(0, 0.66), rec(1, 0.70), rec(2, 0.68)])
    _write(tmp_path / "colored_mnist" / "hgp" / "results.jsonl",
           [rec(0, 0.67), rec(1, 0.73), rec(2, None, status="diverged"), rec(3, 0.10)])
    _write(tmp_path / "colored_mnist" / "irm" / "results.jsonl", [rec(0, 0.5)])  # 1 pair: no row
    proc = cli("report", f"--results_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    paired = proc.stdout.split("Paired with fishr", 1)[1]
    hgp = next(l for l in paired.splitlines() if l.startswith("| hgp"))
    # differences 1 and 3: mean 2.0, standard error std(ddof=1) / sqrt(2) = 1.0
    assert hgp == "| hgp | +0.0 ± 0.0 | +2.0 ± 1.0 | +0.0 ± 0.0 | 2 |", hgp
    assert "| irm" not in paired and "| fishr" not in paired
    proc = cli("report", f"--results_dir={tmp_path}", "--paired_baseline=")
    assert proc.returncode == 0 and "Paired with" not in proc.stdout


def test_tables_name_the_test_domain_and_never_pair_across_it(tmp_path, cli):
    def rec(restart, test, domain):
        r = _rec(restart, test)
        r.update(seed=0, data_seed=restart)
        if domain:
            r["test_domain"] = domain
        return r

    fixed = "mnist_train[50000:60000]"
    # fishr was re-run on the fixed test domain; hgp's records predate the fix (no field), so
    # restart r of hgp and of fishr tested on different images and must not be paired.
    _write(tmp_path / "colored_mnist" / "fishr" / "results.jsonl",
           [rec(0, 0.66, fixed), rec(1, 0.70, fixed)])
    _write(tmp_path / "colored_mnist" / "hgp" / "results.jsonl",
           [rec(0, 0.67, None), rec(1, 0.73, None)])
    _write(tmp_path / "colored_mnist" / "vrex" / "results.jsonl",
           [rec(0, 0.67, fixed), rec(1, 0.73, fixed)])
    proc = cli("report", f"--results_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    main = proc.stdout.split("Against the published", 1)[0]
    hgp = next(l for l in main.splitlines() if l.startswith("| hgp"))
    fishr = next(l for l in main.splitlines() if l.startswith("| fishr"))
    assert "before the fix" in hgp and fixed not in hgp
    assert f"| {fixed} |" in fishr
    paired = proc.stdout.split("Paired with fishr", 1)[1]
    assert "| vrex" in paired and "| hgp" not in paired


def test_published_table_gives_distance_and_standard_error(tmp_path, cli):
    # fishr published 71.0 / 69.5 / 70.2; ours: test 0.68 and 0.70 -> mean 69.0, sample std
    # 1.414, s.e. 1.0: -0.5 lies within one s.e. Train 70.0 (s.e. 0) misses by 1.0.
    recs = [_rec(0, 0.68), _rec(1, 0.70)]
    for r in recs:
        r.update(train_acc=0.70, gray_test_acc=0.702)
    _write(tmp_path / "colored_mnist" / "fishr" / "results.jsonl", recs)
    _write(tmp_path / "colored_mnist" / "erm" / "results.jsonl", [_rec(0, 0.14)])  # n=1: no row
    proc = cli("report", f"--results_dir={tmp_path}", "--paired_baseline=")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("Against the published", 1)[1]
    fishr = next(l for l in table.splitlines() if l.startswith("| fishr"))
    assert fishr.startswith("| fishr | -1.0 ± 0.0 | -0.5 ± 1.0 | +0.0 ± 0.0 | 2 | test, gray test |"), fishr
    assert "| erm" not in table


def test_folders_of_runs_before_the_fix_keep_their_protocol():
    from hjax.protocols.irm_cmnist.tables import protocol_of
    assert protocol_of("colored_mnist_before_fix") == "colored_mnist"
    assert protocol_of("colored_mnist_label_shift_intended_before_fix") == \
        "colored_mnist_label_shift"
    assert protocol_of("colored_mnist_label_shift_reference") == "colored_mnist_label_shift"
    assert protocol_of("colored_mnist") == "colored_mnist"
    assert protocol_of("colored_mnist_tf32") == "colored_mnist"


def test_published_gap_table_pairs_with_erm_and_subtracts_the_published_gap(tmp_path, cli):
    # Published ERM 86.4 / 14.0 / 71.0, IRM 71.0 / 65.6 / 66.1: gaps -15.4 / +51.6 / -4.9.
    def rec(restart, train, test, gray):
        return {"status": "ok", "restart": restart, "seed": 0, "data_seed": restart,
                "train_acc": train, "test_acc": test, "gray_test_acc": gray,
                "step_time_s": 1.0}

    _write(tmp_path / "colored_mnist" / "erm" / "results.jsonl",
           [rec(0, 0.864, 0.14, 0.71), rec(1, 0.864, 0.16, 0.72), rec(2, 0.864, 0.13, 0.70)])
    # IRM - ERM per restart: train -15.4 each; test +51, +52, +53 (mean +52.0, s.e. 0.577);
    # gray -3.9, -3.9, -3.9 (1.0 above the published gap, s.e. 0).
    _write(tmp_path / "colored_mnist" / "irm" / "results.jsonl",
           [rec(0, 0.710, 0.65, 0.671), rec(1, 0.710, 0.68, 0.681), rec(2, 0.710, 0.66, 0.661)])
    proc = cli("report", f"--results_dir={tmp_path}", "--paired_baseline=")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("Against the published gaps to erm", 1)[1]
    irm = next(l for l in table.splitlines() if l.startswith("| irm"))
    assert irm == ("| irm | +0.0 ± 0.0 (-15.4 vs -15.4) | +0.4 ± 0.6 (+52.0 vs +51.6) | "
                   "+1.0 ± 0.0 (-3.9 vs -4.9) | 3 | train, test |"), irm
    assert "| erm" not in table
    # No ERM restarts, no gap table.
    (tmp_path / "colored_mnist" / "erm" / "results.jsonl").unlink()
    proc = cli("report", f"--results_dir={tmp_path}", "--paired_baseline=")
    assert proc.returncode == 0 and "published gaps" not in proc.stdout


def _run_records(steps, n=2, method="erm", **hparams):
    from hjax.protocols.irm_cmnist.train import method_hparams
    hp = {**method_hparams(method), **hparams}
    return [dict(_rec(r, 0.1 + 0.01 * r), dataset="colored_mnist", split=None, method=method,
                 steps=steps, hparams=hp, seed=0, data_seed=r) for r in range(n)]


def test_report_on_one_runs_folder_reports_that_run(tmp_path, cli):
    _write(tmp_path / "run" / "results.jsonl", _run_records(501))
    proc = cli("report", f"--results_dir={tmp_path / 'run'}", "--paired_baseline=")
    assert proc.returncode == 0, proc.stderr
    assert "**colored_mnist**" in proc.stdout
    erm = next(line for line in proc.stdout.splitlines() if line.startswith("| erm |"))
    assert "2/2 (incomplete: 2 of 10 run)" in erm and "86.4 / 14.0 / 71.0" in erm
    assert "No results yet" not in proc.stdout
    # One dataset's folder (<method>/results.jsonl) is read too.
    _write(tmp_path / "colored_mnist" / "erm" / "results.jsonl", _run_records(501))
    assert "| erm |" in cli("report", f"--results_dir={tmp_path / 'colored_mnist'}").stdout


def test_runs_of_other_steps_or_hparams_are_not_compared_with_published_numbers(tmp_path,
                                                                                 cli):
    _write(tmp_path / "colored_mnist" / "erm" / "results.jsonl", _run_records(20))
    _write(tmp_path / "colored_mnist" / "irm" / "results.jsonl",
           _run_records(501, method="irm", lr=0.01))
    _write(tmp_path / "colored_mnist" / "hgp" / "results.jsonl", _run_records(20, method="hgp"))
    proc = cli("report", f"--results_dir={tmp_path}", "--paired_baseline=")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0][2:]: line for line in proc.stdout.splitlines()
            if line.startswith("| ") and " | " in line and not line.startswith("| method")}
    assert "not the protocol: steps 20 (protocol: 501)" in rows["erm"]
    assert "not comparable" in rows["erm"] and "86.4 / 14.0 / 71.0" not in rows["erm"]
    assert "not the protocol: lr 0.01 (protocol: 0.0004898536566546834)" in rows["irm"]
    assert "not the protocol: steps 20" in rows["hgp"]           # no published row: steps only
    assert "within one s.e." not in proc.stdout and "Against the published" not in proc.stdout
