"""What the readers (report, plot, collect_results) accept from a results file, and which
run each record belongs to.

A reader loads a file with :func:`load`: either every record is usable, or the whole file is
skipped and the reader gets one line saying why (the file is named by the caller). A file is
all or nothing on purpose: half a run's restarts would still make a table row, just a wrong
one.

Run identity (``hjax.io.run_identity``): a record written since run identities carries
``run_id`` and ``identity``; an older ("legacy") record carries neither, and stands for the
run that its settings fields name (:func:`identity_of`). A file whose records belong to more
than one run is refused (:func:`mixed_identity_problem`): averaging them would mix runs.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from hjax.io import run_identity
from hjax.io.results import ResultsFileError, read_jsonl

# The settings fields of a legacy ColoredMNIST record that together name its run (the
# fields the resume check compared before run identities); matmul was fp32 when absent.
CMNIST_LEGACY_FIELDS = ("dataset", "split", "method", "seed", "steps", "hparams",
                        "test_domain", "matmul")
CMNIST_ACCURACIES = ("train_acc", "test_acc", "gray_test_acc")
# The fields of a DomainBed job's identity that differ between the jobs of one sweep by
# design (the sweep varies them; algorithms are a table's rows); every other field must agree for jobs to be averaged or
# selected among.
SWEEP_VARIED = frozenset({"algorithm", "hparams_seed", "trial_seed", "test_envs", "hparams"})
LEGACY_LABEL = "legacy (no run id)"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    return _is_number(v) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 30 else text[:27] + "..."


def _need(rec: dict, key: str, test: Callable, what: str, prefix: str = "") -> str | None:
    if key not in rec:
        return f"no '{prefix}{key}'"
    if not test(rec[key]):
        return f"'{prefix}{key}' is {_show(rec[key])}, not {what}"
    return None


def cmnist_problem(rec: dict, accuracies: Sequence[str] = CMNIST_ACCURACIES) -> str | None:
    """Why a ColoredMNIST restart record cannot be tabulated or plotted, or None; a finished
    ("ok") restart needs the ``accuracies`` its reader averages as finite numbers."""
    problem = (_need(rec, "status", lambda v: isinstance(v, str), "a string")
               or _need(rec, "restart", _is_int, "an integer"))
    if problem:
        return problem
    if rec["status"] == "ok":          # what report and plot average over finished restarts
        for key in accuracies:
            problem = _need(rec, key, _finite, "a finite number")
            if problem:
                return problem
    if rec.get("step_time_s") is not None and not _finite(rec["step_time_s"]):
        return f"'step_time_s' is {_show(rec['step_time_s'])}, not a finite number"
    history = rec.get("history")
    if history is not None:
        if not isinstance(history, list):
            return f"'history' is {_show(history)}, not a list"
        for i, row in enumerate(history):
            if not isinstance(row, dict) or not _is_int(row.get("step")):
                return f"history row {i} has no integer 'step'"
            for key, v in row.items():    # metrics: numbers (NaN allowed), lists or null
                if v is not None and not _is_number(v) and not isinstance(v, list):
                    return f"history row {i}: {key!r} is {_show(v)}, not a number"
    return None


def domainbed_problem(rec: dict) -> str | None:
    """Why a DomainBed checkpoint record cannot be used for model selection, or None."""
    args = rec.get("args")
    if not isinstance(args, dict):
        return "no 'args'" if args is None else f"'args' is {_show(args)}, not an object"
    problem = (_need(args, "dataset", lambda v: isinstance(v, str), "a string", "args.")
               or _need(args, "algorithm", lambda v: isinstance(v, str), "a string", "args.")
               or _need(args, "test_envs", lambda v: isinstance(v, list) and bool(v)
                        and all(_is_int(e) for e in v), "a list of environment indices",
                        "args.")
               or _need(args, "hparams_seed", _is_int, "an integer", "args.")
               or _need(args, "trial_seed", _is_int, "an integer", "args.")
               or _need(rec, "step", _is_int, "an integer"))
    if problem:
        return problem
    envs = sorted(int(k[3:-7]) for k in rec if k.startswith("env") and k.endswith("_in_acc")
                  and k[3:-7].isdigit())
    if len(envs) < 2 or envs != list(range(len(envs))):
        return "no env<i>_in_acc accuracies for environments 0, 1, ..."
    for e in envs:
        for split in ("in", "out"):
            problem = _need(rec, f"env{e}_{split}_acc", _finite, "a finite number")
            if problem:
                return problem
    if any(not 0 <= t < len(envs) for t in args["test_envs"]):
        return f"test_envs {args['test_envs']} do not fit its {len(envs)} environments"
    return None


def transfer_problem(row: dict) -> str | None:
    """Why a transferability.jsonl row cannot be plotted, or None."""
    if not isinstance(row.get("run", row.get("method")), str):
        return "no 'run' or 'method' name"
    problem = _need(row, "delta", _finite, "a finite number")
    if problem:
        return problem
    for key in ("measure", "bound", "corrected_bound"):
        v = row.get(key)
        if v is not None and not _is_number(v):
            return f"{key!r} is {_show(v)}, not a number"
    return None


def saved_model_problem(rec: dict) -> str | None:
    """Why a finished restart's saved params cannot be rebuilt into its model, or None
    (the fields ``transferability --input_dirs`` reads besides :func:`cmnist_problem`'s)."""
    hparams = rec.get("hparams")
    return (_need(rec, "method", lambda v: isinstance(v, str), "a string")
            or _need(rec, "dataset", lambda v: isinstance(v, str), "a string")
            or _need(rec, "data_seed", _is_int, "an integer")
            or _need(rec, "params_file", lambda v: isinstance(v, str), "a file name")
            or (None if isinstance(hparams, dict) else "no 'hparams' object")
            or _need(hparams, "hidden_dim", _is_int, "an integer", "hparams."))


# ----------------------------------------------------------------------------- identity

def legacy_identity(rec: dict, protocol: str) -> dict:
    """The settings that name a legacy record's run (see the module docstring)."""
    if protocol == "domainbed":
        return {"args": rec.get("args"), "hparams": rec.get("hparams")}
    ident = {f: rec.get(f) for f in CMNIST_LEGACY_FIELDS}
    ident["matmul"] = ident["matmul"] or "fp32"
    return ident


def identity_of(rec: dict, protocol: str) -> tuple[str, dict, bool]:
    """(key, identity, legacy): records of one run have equal keys. The key is the
    ``run_id``, or for a legacy record ``legacy-`` and the digest of its settings."""
    rid = run_identity.record_run_id(rec)
    if rid is not None:
        ident = rec.get("identity")
        return rid, ident if isinstance(ident, dict) else {"run_id": rid}, False
    ident = legacy_identity(rec, protocol)
    return "legacy-" + run_identity.run_id(ident), ident, True


def label(rec: dict, protocol: str) -> str:
    """A short label of a record's run: the first 8 digits of its run id, or 'legacy'."""
    key, _, legacy = identity_of(rec, protocol)
    return LEGACY_LABEL if legacy else key[:8]


def mixed_identity_problem(records: Sequence[dict], protocol: str) -> str | None:
    """Why ``records`` (one file) must not be averaged as one run, or None."""
    if not records:
        return None
    first_key, first, _ = identity_of(records[0], protocol)
    keys = {first_key}
    other = None
    for rec in records[1:]:
        key, ident, _ = identity_of(rec, protocol)
        if key not in keys:
            keys.add(key)
            other = other or ident
    if other is None:
        return None
    return (f"holds records of {len(keys)} different runs "
            f"({run_identity.identity_diff(first, other)}); not averaged")


def sweep_key(rec: dict) -> tuple[str, dict]:
    """(key, settings): DomainBed jobs with equal keys belong to one sweep and may be selected
    among and averaged; the settings are the job's identity without :data:`SWEEP_VARIED`."""
    _, ident, legacy = identity_of(rec, "domainbed")
    if legacy:
        ident = dict(ident.get("args") or {})
    flat = run_identity._flatten(ident) if isinstance(ident, dict) else {}
    settings = {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] not in SWEEP_VARIED
                and k.split(".", 1)[0] not in SWEEP_VARIED}
    return run_identity.canonical(settings), settings


# ----------------------------------------------------------------------------- loading

# kind -> (protocol, record check). "colored_mnist" is what the report tables average,
# "colored_mnist_curves" what plot draws (final test accuracy and the history rows).
CHECKS = {"colored_mnist": ("colored_mnist", cmnist_problem),
          "colored_mnist_curves": ("colored_mnist",
                                   lambda rec: cmnist_problem(rec, ("test_acc",))),
          "domainbed": ("domainbed", domainbed_problem),
          "transfer": (None, transfer_problem)}


def load(path: str, kind: str, *, allow_empty: bool = False) -> tuple[list[dict], str | None]:
    """(records, None) when every record of ``path`` is usable by a ``kind`` reader
    (a key of :data:`CHECKS`), else ([], one line naming ``path`` and
    why). Records of ColoredMNIST and DomainBed files must belong to one run."""
    try:
        records = read_jsonl(path)
    except ResultsFileError as e:
        return [], str(e)
    if not records:
        return [], None if allow_empty else f"{path}: holds no records"
    protocol, check = CHECKS[kind]
    if protocol == "colored_mnist" and isinstance(records[0].get("args"), dict) \
            and "status" not in records[0]:
        return [], f"{path}: holds a DomainBed job's records, not a ColoredMNIST run's"
    if protocol == "domainbed" and "status" in records[0] and "args" not in records[0]:
        return [], f"{path}: holds a ColoredMNIST run's records, not a DomainBed job's"
    for i, rec in enumerate(records, 1):
        problem = check(rec)
        if problem:
            return [], f"{path}: record {i}: {problem}"
    if protocol is not None:
        problem = mixed_identity_problem(records, protocol)
        if problem:
            return [], f"{path}: {problem}"
    return records, None
