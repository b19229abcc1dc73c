"""What a run folder may hold, for both protocols: the files of one run (one run identity).

A folder holding files of another run (another ``run_id``, records written before run
identities, an unreadable file) is refused in one line naming what differs
(:class:`hjax.io.run_identity.IdentityClash`, exit 2), or with ``overwrite`` those files are
moved aside into ``replaced-<time>/``; nothing is ever deleted. The ``done`` marker (JSON:
status, diverged step, run_id, identity) says a run finished.
"""

from __future__ import annotations

import fnmatch
import json
import os

from hjax.io import run_identity
from hjax.io.results import write_atomic

DONE_NAME = "done"
PROTOCOL_NAMES = {"irm_cmnist": "an IRM-protocol ColoredMNIST run",
                  "domainbed": "a DomainBed job"}


def run_files(folder: str, patterns) -> list[str]:
    """The names in ``folder`` matching ``patterns`` (the files a run writes), sorted."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))


def clash(folder: str, old_identity, identity: dict) -> run_identity.IdentityClash:
    """The one-line refusal; a run of the other protocol is named as such."""
    old = old_identity.get("protocol") if isinstance(old_identity, dict) else None
    if old and old != identity.get("protocol") and old in PROTOCOL_NAMES:
        return run_identity.IdentityClash(
            f"{folder} holds {PROTOCOL_NAMES[old]}'s results, not "
            f"{PROTOCOL_NAMES.get(identity.get('protocol'), 'this run')}'s; choose another "
            "--output_dir, or pass --overwrite to move them aside")
    return run_identity.clash(folder, old_identity, identity)


def refuse_or_move(folder: str, names, identity: dict, overwrite: bool, warn, *,
                   old_identity=None, problem: str | None = None) -> None:
    """Refuse ``folder`` (raise IdentityClash) or, with ``overwrite``, move ``names`` aside.
    ``problem`` names what is wrong when it is not an identity of another run."""
    if not overwrite:
        if problem is not None:
            raise run_identity.IdentityClash(
                f"{folder} holds {problem}; choose another --output_dir, or pass "
                "--overwrite to move them aside")
        raise clash(folder, old_identity, identity)
    moved = run_identity.move_aside(folder, names)
    if moved:
        warn(f"note: --overwrite: moved the earlier {', '.join(sorted(names))} of {folder} "
             f"to {moved}")


def done_marker(identity: dict, diverged_step: int | None = None) -> str:
    status = "done" if diverged_step is None else "diverged"
    return json.dumps({"status": status, "diverged_step": diverged_step,
                       **run_identity.stamp(identity)}, sort_keys=True) + "\n"


def write_done(folder: str, identity: dict, diverged_step: int | None = None) -> None:
    write_atomic(os.path.join(folder, DONE_NAME), done_marker(identity, diverged_step))


def read_done(folder: str) -> dict | None:
    """The done marker: its JSON, ``{"legacy": text}`` for a plain-text marker of an earlier
    version, or None when there is none (or it cannot be read)."""
    path = os.path.join(folder, DONE_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return {"legacy": ""}
    try:
        marker = json.loads(text)
    except ValueError:
        return {"legacy": text.strip()}
    return marker if isinstance(marker, dict) else {"legacy": text.strip()}


def same_identity(a, b) -> bool:
    return (isinstance(a, dict) and isinstance(b, dict)
            and json.loads(run_identity.canonical(a)) == json.loads(run_identity.canonical(b)))
