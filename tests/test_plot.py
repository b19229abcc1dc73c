"""hjax.io.plotting and experiments/plot.py on small hand-made results files (no training).

The command line runs in-process (the `cli` fixture)."""

from __future__ import annotations

import json
import pathlib
import struct

import pytest

from hjax.io import plotting

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk: big-endian uint32s at bytes 16-24."""
    head = pathlib.Path(path).read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def fake_record(method, restart, steps=(0, 2, 4), tracked=True, status="ok"):
    history = []
    for s in steps:
        row = {"step": s, "test_acc": 0.1 * restart + 0.01 * s, "train_acc": 0.7}
        if tracked:
            row.update({"hess_spectral_train": 1.0 / (1 + s + restart),
                        "hess_frobenius_train": 2.0 / (1 + s),
                        "grad_dist_train": 0.1, "hess_spectral_train_test": 0.5,
                        "hess_frobenius_train_test": 0.7, "grad_dist_train_test": 0.2})
        history.append(row)
    return {"method": method, "restart": restart, "status": status, "history": history,
            "test_acc": history[-1]["test_acc"]}


def write_run(directory: pathlib.Path, records):
    directory.mkdir(parents=True)
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


TRANSFER_ROWS = [{"method": m, "restart": r, "delta": d, "measure": 0.1 * d * (r + 1),
                  "bound": 0.12 * d, "corrected_bound": 0.2 * d, "gap_sup": 0.3,
                  "worst_target_accuracy": 0.4, "target_accuracy": 0.5}
                 for m in ("erm", "hgp") for r in range(2) for d in (0.1, 1.0, 3.0)]


@pytest.mark.parametrize("size,dpi", [((4.0, 3.0), 50), ((5.5, 2.0), 80)])
def test_plot_functions_write_pngs_of_the_requested_size(tmp_path, size, dpi):
    runs = {"erm": [fake_record("erm", 0), fake_record("erm", 1, steps=(0, 2))],
            "hgp": [fake_record("hgp", 0)]}
    expected = (round(size[0] * dpi), round(size[1] * dpi))
    for name, fn, data in [("acc.png", plotting.plot_test_accuracy, runs),
                           ("hess.png", plotting.plot_hessian_distance, runs),
                           ("transfer.png", plotting.plot_transfer, TRANSFER_ROWS)]:
        path = tmp_path / name
        assert fn(data, str(path), size=size, dpi=dpi) is True
        assert path.stat().st_size > 1000
        assert png_size(path) == expected, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_curve_means_over_restarts_and_untracked_runs_skip_the_hessian_plot(tmp_path):
    recs = [fake_record("erm", 0), fake_record("erm", 1, steps=(0, 2))]
    steps, mean, std = plotting.curve(recs, "test_acc")
    assert steps.tolist() == [0, 2, 4]
    assert mean.tolist() == pytest.approx([0.05, 0.07, 0.04])
    assert std.tolist() == pytest.approx([0.05, 0.05, 0.0])
    # A legend's n counts the restarts that have the plotted key (tracking may be partial).
    mixed = recs + [fake_record("erm", 2, tracked=False)]
    assert plotting.restarts_with(mixed, "hess_spectral_train") == 2
    assert plotting.restarts_with(mixed, "test_acc") == 3
    untracked = {"erm": [fake_record("erm", 0, tracked=False)]}
    assert plotting.plot_hessian_distance(untracked, str(tmp_path / "h.png")) is False
    assert not (tmp_path / "h.png").exists()


def test_transfer_legend_counts_the_measured_restarts_of_each_run():
    rows = TRANSFER_ROWS + [{"method": "erm", "restart": 2, "delta": 0.1, "measure": float("nan")},
                            {"method": "irm", "run": "irm_a", "restart": 0, "delta": 1.0,
                             "measure": 0.2}]
    assert plotting.transfer_restarts(rows) == {"erm": 2, "hgp": 2, "irm_a": 1}


def test_tables():
    runs = {"erm": [fake_record("erm", 0), fake_record("erm", 1)],
            "irm": [fake_record("irm", 0, tracked=False)]}
    table = plotting.final_distance_table(runs)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | restarts | step | test acc (%) |")
    assert len(lines) == 6
    erm = lines[2]
    # Last tracked row (step 4): spectral 1/5 and 1/6 -> mean 0.1833.
    assert erm.startswith("| erm | 2/2 | 4 |") and "0.1833 ±" in erm
    # Accuracy in percent as report.py prints it; an untracked run's n/a says what it needs.
    assert lines[3].startswith("| irm | 0/1 | n/a | 4.0 ± 0.0 | n/a |")
    assert lines[5] == plotting.UNTRACKED_NOTE and "--track_alignment_every" in lines[5]
    assert "--track_alignment_every" not in plotting.final_distance_table(
        {"erm": runs["erm"]})
    t = plotting.transfer_table(TRANSFER_ROWS).strip().splitlines()
    assert len(t) == 2 + 6 and t[2].startswith("| erm | 0.1 | 2 | 0.015 ± 0.005 |")


def test_plot_cli_writes_figures_and_table(tmp_path, cli):
    write_run(tmp_path / "res" / "erm", [fake_record("erm", 0), fake_record("erm", 1)])
    write_run(tmp_path / "res" / "hgp", [fake_record("hgp", 0)])
    # A variant of a method in its own folder (run with --alpha=10) is its own run.
    write_run(tmp_path / "res" / "hgp_alpha10", [fake_record("hgp", 0), fake_record("hgp", 1)])
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TRANSFER_ROWS))
    out = tmp_path / "fig"
    proc = cli("plot", f"--input_dirs={tmp_path}/res/*", f"--transfer_file={tmp_path}/t.jsonl",
               f"--output_dir={out}", "--width=3", "--height=2", "--dpi=60")
    assert proc.returncode == 0, proc.stderr
    for name in ("test_acc.png", "hess_spectral_train.png", "hess_spectral_train_test.png",
                 "transfer.png"):
        assert png_size(out / name) == (180, 120)
    table = (out / "distances.md").read_text()
    assert "| erm | 2/2 |" in table and "| hgp | 1/1 |" in table
    assert "| hgp_alpha10 | 2/2 |" in table


@pytest.mark.parametrize("args,message", [
    (["--input_dirs=/nonexistent/dir"], "--input_dirs: no directory '/nonexistent/dir'"),
    (["--input_dirs=hjax"], "no results.jsonl found"),
    (["--input_dirs=.", "--dpi=0"], "--dpi=0 must be a positive integer"),
])
def test_plot_cli_bad_flags_exit_2(args, message, cli, monkeypatch):
    monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[1])     # --input_dirs=.
    proc = cli("plot", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
