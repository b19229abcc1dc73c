"""What every record of every protocol carries: the run identity (``run_id`` and the
settings it digests) and the provenance of the code and machine that produced it."""

from __future__ import annotations

from hjax.io.provenance import provenance
from hjax.io.run_identity import stamp


def stamped(record: dict, identity: dict) -> dict:
    """``record`` with ``run_id``, ``identity`` and ``provenance`` added (in that order)."""
    return {**record, **stamp(identity), "provenance": provenance()}
