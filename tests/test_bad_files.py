"""Every reader survives bad files: a generated set of bad files for each reader (report,
collect_results, plot, plot --transfer_file), each beside a good file and alone; records of
two runs are never averaged; params and .npz files name the corrupt file in one line.

Command lines run in-process (the `cli` fixture). A bad file must cost one warning line on
stderr that names it, the good file beside it must still be used (exit 0), and alone it must
end in exit 2 with one error line; never a traceback. (An unreadable-permission case is not
generated: the suite may run as root, which reads any file; the same OSError path is
exercised by the folder-in-place-of-a-file case.)
"""

from __future__ import annotations

import io
import json
import math
import pathlib

import numpy as np
import pytest

from hjax.io import record_checks
from hjax.io.results import ResultsFileError, read_jsonl


# ----------------------------------------------------------------------------- good records

def cmnist_rec(restart, test=0.6, **extra):
    return {"status": "ok", "restart": restart, "seed": 0, "data_seed": restart,
            "method": "hgp", "dataset": "colored_mnist", "steps": 3, "train_acc": 0.7,
            "test_acc": test, "gray_test_acc": 0.7, "step_time_s": 1.0,
            "history": [{"step": 0, "test_acc": 0.5}, {"step": 2, "test_acc": test}], **extra}


def domainbed_rec(step, test_env=0, trial=0, steps=5, acc=0.6, **extra):
    r = {"args": {"dataset": "domainbed_colored_mnist", "algorithm": "erm",
                  "test_envs": [test_env], "hparams_seed": 0, "trial_seed": trial,
                  "steps": steps, "fake_data": True},
         "hparams": {"lr": 0.001}, "step": step, **extra}
    for e in range(3):
        r[f"env{e}_in_acc"] = acc if e == test_env else 0.5
        r[f"env{e}_out_acc"] = 0.5
    return r


def transfer_row(delta, method="hgp"):
    return {"method": method, "restart": 0, "delta": delta, "measure": 0.1 * delta,
            "bound": 0.2 * delta, "corrected_bound": 0.3 * delta}


GOOD = {"colored_mnist": lambda: [cmnist_rec(0), cmnist_rec(1, 0.62)],
        "domainbed": lambda: [domainbed_rec(0), domainbed_rec(5)],
        "transfer": lambda: [transfer_row(0.1), transfer_row(1.0)]}


def lines(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _drop(records, key):
    for r in records:
        r.pop(key, None)
    return records


def _set(records, path, value, index=-1):
    target = records[index]
    *parents, last = path.split(".")
    for p in parents:
        target = target[p]
    target[last] = value
    return records


# ----------------------------------------------------------------------------- bad files
# (case, protocol) -> the content (bytes, or None for a folder in place of the file) and
# the words the warning must hold (the reason).

def bad_content(case: str, protocol: str):
    good = GOOD[protocol]()
    if case == "truncated_last_line":
        text = lines(good)
        return text[:-len(text.splitlines()[-1]) // 2 - 1], "cut short"
    if case == "binary_garbage":
        return bytes(range(256)) * 4, "not UTF-8"
    if case == "empty_file":
        return b"", "no records"
    if case == "folder_in_place_of_file":
        return None, "cannot be read"
    if case == "missing_settings_field":
        key = {"colored_mnist": "status", "domainbed": "args", "transfer": "delta"}[protocol]
        return lines(_drop(good, key)), f"no '{key}'"
    if case == "missing_accuracy":
        if protocol == "transfer":
            return lines(_drop(good, "method")), "no 'run' or 'method'"
        key = {"colored_mnist": "test_acc", "domainbed": "env1_out_acc"}[protocol]
        return lines(_drop(good, key)), f"no '{key}'"
    if case == "non_finite_value":
        key = {"colored_mnist": "test_acc", "domainbed": "env0_in_acc",
               "transfer": "delta"}[protocol]
        return lines(_set(good, key, math.inf)), f"'{key}' is inf"   # json writes Infinity
    if case == "not_an_object":
        return lines(good) + b"[1, 2, 3]\n", "JSON array"
    if case == "wrong_type_field":
        key, value = {"colored_mnist": ("test_acc", "high"),
                      "domainbed": ("args.trial_seed", "0"),
                      "transfer": ("delta", "big")}[protocol]
        return lines(_set(good, key, value)), f"'{key}' is"
    if case == "other_protocol_records":
        other = "domainbed" if protocol == "colored_mnist" else "colored_mnist"
        return lines(GOOD[other]()), "not a " + ("ColoredMNIST" if other == "domainbed"
                                                 else "DomainBed")
    if case == "two_runs_in_one_file":
        good[0].update(run_id="a" * 16, identity={"steps": 3})
        good[1].update(run_id="b" * 16, identity={"steps": 5})
        return lines(good), "2 different runs (steps: 3 -> 5)"
    raise AssertionError(case)


CASES = ("truncated_last_line", "binary_garbage", "empty_file", "folder_in_place_of_file",
         "missing_settings_field", "missing_accuracy", "non_finite_value", "not_an_object",
         "wrong_type_field", "other_protocol_records", "two_runs_in_one_file")


def place(path: pathlib.Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)


# ----------------------------------------------------------------------------- readers
# Each reader: where the good and the bad file go, the command, and what shows the good
# file was used.

def _report(root, with_good):
    results = root / "results"
    if with_good:
        place(results / "colored_mnist" / "erm" / "results.jsonl", lines(GOOD["colored_mnist"]()))
    bad = results / "colored_mnist" / "hgp" / "results.jsonl"
    return "colored_mnist", bad, ("report", f"--results_dir={results}", "--paired_baseline="), \
        "| erm |"


def _collect(root, with_good):
    sweep = root / "sweep"
    if with_good:
        place(sweep / "good" / "results.jsonl", lines(GOOD["domainbed"]()))
        (sweep / "good" / "done").write_text("done\n")
    bad = sweep / "bad" / "results.jsonl"
    place(sweep / "bad" / "done", b"done\n")
    return "domainbed", bad, ("collect_results", f"--input_dir={sweep}"), "| erm | 60.0 ± 0.0"


def _plot(root, with_good):
    res = root / "res"
    if with_good:
        place(res / "erm" / "results.jsonl", lines(GOOD["colored_mnist"]()))
    bad = res / "hgp" / "results.jsonl"
    return "colored_mnist", bad, ("plot", f"--input_dirs={res}/*",
                                  f"--output_dir={root / 'fig'}", "--dpi=20"), "| erm |"


def _plot_transfer(root, with_good):
    args = ["plot", f"--transfer_file={root / 't.jsonl'}", f"--output_dir={root / 'fig'}",
            "--dpi=20"]
    if with_good:
        place(root / "res" / "erm" / "results.jsonl", lines(GOOD["colored_mnist"]()))
        args.append(f"--input_dirs={root / 'res' / 'erm'}")
    return "transfer", root / "t.jsonl", tuple(args), "| erm |"


READERS = {"report": _report, "collect_results": _collect, "plot": _plot,
           "plot_transfer_file": _plot_transfer}
# Transferability rows name no run identity and no protocol of their own.
NOT_FOR_TRANSFER = ("other_protocol_records", "two_runs_in_one_file")
READER_CASES = [(reader, case) for reader in READERS for case in CASES
                if not (reader == "plot_transfer_file" and case in NOT_FOR_TRANSFER)]


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr.replace(
        "error:", ""), proc.stderr


@pytest.mark.parametrize("reader,case", READER_CASES)
def test_a_bad_file_is_skipped_with_one_warning_and_the_good_one_used(tmp_path, cli,
                                                                       reader, case):
    protocol, bad, args, used = READERS[reader](tmp_path, with_good=True)
    content, reason = bad_content(case, protocol)
    place(bad, content)
    proc = cli(*args)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    naming = [l for l in proc.stderr.splitlines() if str(bad) in l]
    assert len(naming) == 1 and naming[0].startswith("warning: "), proc.stderr
    assert reason in naming[0], naming[0]
    assert used in proc.stdout, proc.stdout


@pytest.mark.parametrize("reader,case", READER_CASES)
def test_only_bad_files_exit_2_with_one_error_line(tmp_path, cli, reader, case):
    protocol, bad, args, _ = READERS[reader](tmp_path, with_good=False)
    content, reason = bad_content(case, protocol)
    place(bad, content)
    proc = cli(*args)
    _no_traceback(proc)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr.strip().splitlines()
    if reader == "collect_results" and case == "other_protocol_records":
        # A folder of ColoredMNIST runs only: one line naming the command that reads it.
        assert len(err) == 1 and "holds ColoredMNIST runs" in err[0], err
        assert "experiments/report.py --results_dir=" in err[0], err
        return
    assert len(err) == 2 and err[0].startswith("warning: ") and str(bad) in err[0], err
    assert reason in err[0] and err[1].startswith("error: "), err


# ----------------------------------------------------------------------------- the library

def test_read_jsonl_names_the_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(ResultsFileError, match=r"r\.jsonl: line 3 is not valid JSON"):
        read_jsonl(str(path))
    path.write_text('{"a": 1}\n{"a": NaN}')          # no final newline; NaN as json writes it
    recs = read_jsonl(str(path))
    assert recs[0] == {"a": 1} and math.isnan(recs[1]["a"])


def test_committed_results_pass_the_readers_checks():
    root = pathlib.Path(__file__).resolve().parents[1] / "results"
    files = sorted(root.glob("*/*/results.jsonl"))
    jobs = sorted(root.glob("domainbed_mini_sweep/jobs/*/results.jsonl"))
    assert files and jobs
    for path in files:
        assert record_checks.load(str(path), "colored_mnist")[1] is None
    for path in jobs:
        assert record_checks.load(str(path), "domainbed")[1] is None


# ----------------------------------------------------------------------------- identities

def test_report_and_plot_never_average_two_runs_of_one_folder(tmp_path, cli):
    # Legacy records (no run_id): the settings fields name the run; seeds 0 and 1 differ.
    res = tmp_path / "results" / "colored_mnist"
    place(res / "erm" / "results.jsonl", lines([cmnist_rec(0, 0.2), cmnist_rec(1, 0.4)]))
    place(res / "hgp" / "results.jsonl",
          lines([cmnist_rec(0, 0.6), cmnist_rec(1, 0.9, seed=1)]))
    proc = cli("report", f"--results_dir={tmp_path / 'results'}", "--paired_baseline=")
    assert proc.returncode == 0 and "| erm | 70.0 ± 0.0 | 30.0 ± 10.0" in proc.stdout
    assert "| hgp" not in proc.stdout
    (warning,) = [l for l in proc.stderr.splitlines() if "hgp" in l]
    assert "2 different runs (seed: 0 -> 1)" in warning and "not averaged" in warning
    # --update_readme refuses a table that lost a row.
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:begin (experiments/report.py) -->\n<!-- report:end -->\n")
    proc = cli("report", f"--results_dir={tmp_path / 'results'}", "--update_readme",
               f"--readme={readme}")
    assert proc.returncode == 2 and "not updating" in proc.stderr
    assert "erm" not in readme.read_text()
    proc = cli("plot", f"--input_dirs={res}/*", f"--output_dir={tmp_path / 'fig'}", "--dpi=20")
    assert proc.returncode == 0 and "| erm | 0/2 |" in proc.stdout and "| hgp" not in proc.stdout


def test_plot_keeps_folders_of_the_same_name_apart(tmp_path, cli):
    for name, test in (("set_a", 0.2), ("set_b", 0.8)):
        place(tmp_path / name / "erm" / "results.jsonl",
              lines([cmnist_rec(0, test, test_domain=name)]))
    proc = cli("plot", f"--input_dirs={tmp_path}/*/erm", f"--output_dir={tmp_path / 'fig'}",
               "--dpi=20")
    assert proc.returncode == 0, proc.stderr
    rows = [l for l in proc.stdout.splitlines() if "erm |" in l]
    assert [r.split("|")[1].strip() for r in rows] == ["set_a/erm", "set_b/erm"]
    assert "| 1/1 |" not in proc.stdout and all("| 0/1 |" in r for r in rows)


def _job(root, name, records, done=True):
    place(root / name / "results.jsonl", lines(records))
    if done:
        (root / name / "done").write_text("done\n")


def test_collect_results_keeps_sweeps_of_other_settings_apart(tmp_path, cli):
    # Two sweeps of one dataset and algorithm, 5 and 9 steps: selected and averaged apart.
    for t in range(3):
        _job(tmp_path, f"s5_te{t}", [domainbed_rec(0, t, acc=0.6), domainbed_rec(5, t, acc=0.6)])
        _job(tmp_path, f"s9_te{t}", [domainbed_rec(0, t, steps=9, acc=0.8),
                                     domainbed_rec(9, t, steps=9, acc=0.8)])
    proc = cli("collect_results", f"--input_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "6 runs" in proc.stdout
    assert "### domainbed_colored_mnist (sweep 1 of 2), training-domain validation" in proc.stdout
    assert "(sweep 2 of 2: steps: 5 -> 9), training-domain validation" in proc.stdout
    rows = [l for l in proc.stdout.splitlines() if l.startswith("| erm |")]
    assert "| erm | 60.0 ± 0.0 | 60.0 ± 0.0 | 60.0 ± 0.0 | 60.0 ± 0.0 |" in rows
    assert "| erm | 80.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 |" in rows
    assert not any("70.0" in r for r in rows)


def test_collect_results_refuses_a_job_mixing_runs_and_a_done_marker_of_another_run(
        tmp_path, cli):
    for t in range(3):
        _job(tmp_path, f"te{t}", [domainbed_rec(0, t), domainbed_rec(5, t)])
    mixed = [domainbed_rec(0, 0, trial=1), domainbed_rec(5, 0, trial=1)]
    mixed[0].update(run_id="1" * 16, identity={"trial_seed": 1})
    mixed[1].update(run_id="2" * 16, identity={"trial_seed": 2})
    _job(tmp_path, "mixed", mixed)
    other = [dict(domainbed_rec(0, 1, trial=1), run_id="3" * 16)]
    _job(tmp_path, "other_done", other, done=False)
    (tmp_path / "other_done" / "done").write_text(json.dumps({"status": "done",
                                                              "run_id": "4" * 16}))
    # Two copies of one job: the second is left out, not counted twice.
    _job(tmp_path, "te0_copy", [domainbed_rec(0, 0), domainbed_rec(5, 0)])
    proc = cli("collect_results", f"--input_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.splitlines()
    assert any("mixed/results.jsonl: holds records of 2 different runs (trial_seed: 1 -> 2)"
               in w for w in warnings), warnings
    assert any("other_done/done: marks run 44444444 done, but results.jsonl holds run "
               "33333333" in w for w in warnings), warnings
    assert any("two jobs of domainbed_colored_mnist erm test_envs=[0]" in w
               and "the second is left out" in w for w in warnings), warnings
    assert "3 runs" in proc.stdout


# ----------------------------------------------------------------------------- params, .npz

def _params_bytes():
    from flax import serialization
    return serialization.msgpack_serialize({"classifier": {"kernel": np.ones((4, 1), np.float32),
                                                           "bias": np.zeros(1, np.float32)}})


@pytest.mark.parametrize("content,reason", [
    (b"\x00\xffhello garbage" * 5, "corrupt or not a params file"),
    (_params_bytes()[:40], "corrupt or not a params file"),
    (b"", "corrupt or not a params file"),
    (None, "cannot be read"),
    (b"\x93\x01\x02\x03", "not a params file (expected a nested dict of arrays, found list)"),
])
def test_load_params_names_a_bad_file(tmp_path, content, reason):
    from hjax.io.params_io import ParamsFileError, load_params
    path = tmp_path / "params_restart0.msgpack"
    place(path, content)
    with pytest.raises(ParamsFileError) as e:
        load_params(str(path))
    assert str(e.value).startswith(f"{path}: ") and reason in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content,reason", [
    (b"\x00\xffhello garbage" * 5, "corrupt or not a params file"),
    (_params_bytes(), "do not fit the ColoredMNIST MLP of width 4"),   # no featurizer
])
def test_penalty_at_params_says_the_params_file_is_bad(tmp_path, cli, content, reason):
    place(tmp_path / "params_restart0.msgpack", content)
    proc = cli("penalty_at_params", f"--input_dir={tmp_path}", "--fake_data")
    assert proc.returncode == 2 and reason in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


NPZ_CASES = [(b"hello garbage" * 10, "neither a zip archive nor a numpy array"),
             (_npz_bytes(a=np.arange(1000))[:300], "zip"),
             (b"", "empty or cut short")]


@pytest.mark.parametrize("content,reason", NPZ_CASES)
def test_a_corrupt_weights_npz_is_one_line_without_numpys_pickle_advice(tmp_path, content,
                                                                          reason):
    from hjax.models.torchvision_weights import WeightsFileError, read_npz
    path = tmp_path / "w.npz"
    path.write_bytes(content)
    with pytest.raises(WeightsFileError) as e:
        read_npz(str(path))
    text = str(e.value)
    assert text.startswith(f"{path}: corrupt or not an .npz file") and reason in text.lower()
    assert "pickle" not in text and "\n" not in text


@pytest.mark.parametrize("content,reason", NPZ_CASES)
def test_a_corrupt_mnist_cache_is_named_without_numpys_pickle_advice(tmp_path, content,
                                                                      reason):
    from hjax.data import cache
    path = tmp_path / "mnist.npz"
    path.write_bytes(content)
    with pytest.raises(cache.CorruptCacheError) as e:
        cache.read(path, "0" * 64)
    assert reason in str(e.value).lower() and "pickle" not in str(e.value)
