"""Run identity: one canonical digest of everything that changes a run's numbers.

Every record a protocol writes carries ``run_id`` (the digest) and ``identity`` (the settings
it digests). Resuming, "already done", and averaging in reports happen only between records
of equal ``run_id``; an output folder holding anything else is refused
(:class:`IdentityClash`) unless the caller asked to overwrite, and then the old files are
moved aside (:func:`move_aside`), never deleted.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os

from hjax.errors import ConfigError

ID_LENGTH = 16        # hex digits of sha256 kept: 64 bits, ample for telling runs apart


def canonical(obj) -> str:
    """The one text that is digested: sorted keys, no whitespace, tuples as lists, floats by
    their shortest round-tripping repr (json's), non-finite floats as strings."""
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if hasattr(obj, "item") and callable(obj.item):   # numpy / jax scalars
        return _plain(obj.item())
    return obj


def run_id(identity: dict) -> str:
    """The digest of ``identity``: equal exactly when the canonical texts are equal."""
    return hashlib.sha256(canonical(identity).encode()).hexdigest()[:ID_LENGTH]


def stamp(identity: dict) -> dict:
    """The fields every record of this run carries: ``run_id`` and the plain ``identity``."""
    plain = json.loads(canonical(identity))
    return {"run_id": run_id(plain), "identity": plain}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def identity_diff(old: dict | None, new: dict, limit: int = 4) -> str:
    """A short human line naming the settings that differ, e.g.
    ``method: hgp -> erm, steps: 3 -> 5``; ``old`` None means it has no identity."""
    if not isinstance(old, dict):
        return "the existing results carry no run identity"
    a, b = _flatten(json.loads(canonical(old))), _flatten(json.loads(canonical(new)))
    keys = sorted(set(a) | set(b))
    diffs = [f"{k}: {_short(a.get(k, '(absent)'))} -> {_short(b.get(k, '(absent)'))}"
             for k in keys if a.get(k, "(absent)") != b.get(k, "(absent)")]
    if not diffs:
        return "identities differ"
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def _short(value, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[:width - 3] + "..."


class IdentityClash(ConfigError):
    """An output folder holds results of a run with another identity (exit code 2)."""


def clash(folder: str, old_identity: dict | None, new_identity: dict) -> IdentityClash:
    """The one-line error for a folder whose results belong to another run."""
    return IdentityClash(
        f"{folder} holds results of other settings ({identity_diff(old_identity, new_identity)}); "
        f"choose another --output_dir, or pass --overwrite to move them aside")


def move_aside(folder: str, names) -> str | None:
    """Moves the files/folders ``names`` of ``folder`` (those that exist) into a new
    ``folder/replaced-<UTC time>/``; returns that path, or None when nothing was there."""
    present = [n for n in names if os.path.lexists(os.path.join(folder, n))]
    if not present:
        return None
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = os.path.join(folder, f"replaced-{when}")
    os.makedirs(target)
    for name in present:
        os.replace(os.path.join(folder, name), os.path.join(target, name))
    return target


def record_run_id(record: dict) -> str | None:
    """A record's ``run_id``, or None for a record written before run identities."""
    rid = record.get("run_id") if isinstance(record, dict) else None
    return rid if isinstance(rid, str) and rid else None
