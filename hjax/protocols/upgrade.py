"""Upgrade of results written before run identities (``python -m hjax.cli.upgrade_results``).

Adds to every record of a legacy ``results.jsonl`` the ``run_id`` and ``identity`` that the
current code computes for the record's settings, and ``provenance: {"recorded": false,
...}``; a legacy DomainBed job's plain-text ``done`` marker becomes the JSON marker. Files are
rewritten atomically; records that already carry a run identity are left as they are.

Settings that legacy records do not hold are inferred, and a file is refused (left
untouched, with the reason) when they cannot be:

- ColoredMNIST: the data are real MNIST (legacy records do not say; ``data="fake"`` says
  otherwise), JAX's default matmul precision was the default (None), ``inject_nan_at`` was
  unset (a file with a diverged restart is refused: a divergence could have been injected),
  ``log_every`` is the value that reproduces the history rows (the default 100 when several
  do, as with tracking every 25 steps), the hparams must be what the current code resolves
  for them, and a record without ``test_domain`` (runs before the scripts' test domain) gets
  :data:`LEGACY_TEST_DOMAIN`, a test domain the current code never uses, so such runs are
  never resumed or mixed with current ones.
- DomainBed: the record's ``args`` must be what ``RunConfig.identity()`` gives today and its
  ``hparams`` what the current code resolves; an unfinished job with a checkpoint is refused
  (its checkpoint holds the old identity: resume it with its own version, or re-run).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from hjax.io.results import read_jsonl, write_jsonl
from hjax.io.run_identity import record_run_id, stamp

LEGACY_PROVENANCE = {"recorded": False, "note": "written before provenance was recorded"}
LEGACY_TEST_DOMAIN = ("a random 10,000 of mnist_train per restart (runs before the scripts' "
                      "test domain)")
DEFAULT_LOG_EVERY = 100


class Outcome(NamedTuple):
    path: str
    status: str          # "upgraded", "already", "refused"
    note: str


class Refused(Exception):
    """A file whose settings cannot be inferred (its message says why)."""


def results_files(paths) -> list[str]:
    """Every results.jsonl at or below ``paths`` (files or folders), sorted."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("replaced-"))
            if "results.jsonl" in files:
                found.append(os.path.join(folder, "results.jsonl"))
    return sorted(set(found))


def upgrade_file(path: str, data: str = "mnist", dry_run: bool = False) -> Outcome:
    try:
        records = read_jsonl(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return Outcome(path, "refused", f"unreadable ({type(e).__name__})")
    if not records or not all(isinstance(r, dict) for r in records):
        return Outcome(path, "refused", "no records")
    if all(record_run_id(r) for r in records):
        return Outcome(path, "already", "every record carries a run identity")
    if any(record_run_id(r) for r in records):
        return Outcome(path, "refused", "some records carry a run identity and some do not")
    try:
        if "args" in records[0]:
            upgraded, done, note = _domainbed(path, records, data)
        else:
            upgraded, done, note = _colored_mnist(records, data), None, ""
    except Refused as e:
        return Outcome(path, "refused", str(e))
    if not dry_run:
        write_jsonl(path, upgraded)
        if done is not None:
            from hjax.io.results import write_atomic
            write_atomic(os.path.join(os.path.dirname(path), "done"), done)
    return Outcome(path, "upgraded",
                   f"{len(upgraded)} record(s), run {upgraded[0]['run_id']}{note}")


def _with_stamp(record: dict, identity: dict) -> dict:
    return dict(record, **stamp(identity), provenance=dict(LEGACY_PROVENANCE))


# ------------------------------------------------------------------------ ColoredMNIST

def _log_every(rec: dict) -> int:
    steps, track = rec["steps"], rec.get("track_every") or 0
    rows = [h["step"] for h in rec.get("history", [])]

    def rows_for(log_every):
        return sorted({t for t in range(steps) if t % log_every == 0 or t == steps - 1
                       or (track and t % track == 0)})

    candidates = [DEFAULT_LOG_EVERY] + ([rows[1] - rows[0]] if len(rows) > 1 else [])
    for log_every in candidates:
        if log_every > 0 and rows_for(log_every) == rows:
            return log_every
    raise Refused(f"restart {rec.get('restart')}: no log_every reproduces its history rows")


def _colored_mnist(records: list[dict], data: str) -> list[dict]:
    from hjax.protocols.irm_cmnist import identity as cm_identity
    from hjax.protocols.irm_cmnist.config import HPARAM_FIELDS
    from hjax.protocols.irm_cmnist.train import method_hparams
    out, first = [], None
    for i, rec in enumerate(records):
        missing = [k for k in ("dataset", "method", "restart", "seed", "steps", "hparams",
                               "history") if k not in rec]
        if missing:
            raise Refused(f"record {i} lacks {', '.join(missing)}")
        if rec["restart"] != i:
            raise Refused(f"record {i} is restart {rec['restart']}")
        if rec.get("status") != "ok":
            raise Refused(f"restart {i} is {rec.get('status')!r}: whether --inject_nan_at "
                          "was set cannot be told")
        try:
            hp = method_hparams(rec["method"], **{k: v for k, v in rec["hparams"].items()
                                                  if k in HPARAM_FIELDS})
        except ValueError as e:
            raise Refused(f"restart {i}: {e}") from None
        if hp != rec["hparams"]:
            raise Refused(f"restart {i}: its hparams are not what the current code resolves "
                          "for them (another code version)")
        split = rec.get("split") if rec["dataset"] == "colored_mnist_label_shift" else None
        identity = cm_identity.make_identity(
            dataset=rec["dataset"], method=rec["method"], hparams=hp, seed=rec["seed"],
            steps=rec["steps"], split=split,
            test_domain=rec.get("test_domain") or LEGACY_TEST_DOMAIN,
            fake_data=data == "fake", matmul=rec.get("matmul", "fp32"), matmul_precision=None,
            log_every=_log_every(rec), track_alignment_every=rec.get("track_every") or 0,
            inject_nan_at=None)
        if first is not None and identity != first:
            raise Refused(f"restart {i} has other settings than restart 0")
        first = identity
        out.append(_with_stamp(rec, identity))
    return out


# ---------------------------------------------------------------------------- DomainBed

def _domainbed(path: str, records: list[dict], data: str):
    import dataclasses
    from hjax.errors import ConfigError
    from hjax.protocols.domainbed import identity as db_identity
    from hjax.protocols.domainbed.config import RunConfig, resolve_hparams
    from hjax.protocols.domainbed.identity import job_identity
    from hjax.protocols.runs.folder import done_marker
    folder = os.path.dirname(path) or "."
    args = records[0].get("args")
    if not isinstance(args, dict):
        raise Refused("record 0 has no args")
    if any(r.get("args") != args or r.get("hparams") != records[0].get("hparams")
           for r in records):
        raise Refused("its records have different args or hparams")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    if set(args) - fields or "test_envs" not in args:
        raise Refused(f"args {sorted(set(args) - fields)} are not RunConfig settings")
    try:
        config = RunConfig(**dict(args, test_envs=tuple(args["test_envs"]), output_dir=folder))
        if config.identity() != args:
            raise Refused("its args are not what the current code records for them")
        hp = resolve_hparams(config)
    except (ConfigError, TypeError, ValueError) as e:
        raise Refused(f"args: {e}") from None
    if hp != records[0].get("hparams"):
        raise Refused("its hparams are not what the current code resolves (another version)")
    if config.fake_data != (data == "fake") and not config.is_image_dataset:
        raise Refused(f"its args say fake_data={config.fake_data}, not --data={data}")
    try:
        identity = job_identity(config, hp)
    except ConfigError as e:        # an image dataset's folder is needed for its manifest
        raise Refused(str(e)) from None
    marker = db_identity.read_done(folder)
    done, note = None, ""
    if marker is None:
        if os.path.isdir(os.path.join(folder, db_identity.CHECKPOINT_DIR)):
            raise Refused("an unfinished job with a checkpoint of the earlier version: resume "
                          "it with that version, or re-run it with --overwrite")
        note = " (unfinished: no done marker)"
    elif "legacy" in marker:
        text = marker["legacy"]
        diverged = None
        if text.startswith("diverged at step "):
            diverged = int(text.split()[-1])
        elif text != "done":
            raise Refused(f"its done marker reads {text[:40]!r}")
        done = done_marker(identity, diverged)
        note = " and its done marker"
    return [_with_stamp(r, identity) for r in records], done, note


def upgrade(paths, data: str = "mnist", dry_run: bool = False) -> list[Outcome]:
    return [upgrade_file(p, data, dry_run) for p in results_files(paths)]


def describe(outcomes: list[Outcome]) -> str:
    return "\n".join(f"{o.status}: {o.path}: {o.note}" for o in outcomes)

