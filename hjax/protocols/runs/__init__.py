"""hjax.protocols.runs: the run machinery both protocols share.

``claim`` (one writer per run folder), ``folder`` (what a run folder may hold: identity check,
refuse or move aside, the ``done`` marker), ``checkpoint`` (one orbax format for single runs
and groups), ``members`` (a leading member axis: a single run is a group of one),
``records`` (identity and provenance stamped on every record) and ``reporting`` (where a run
reports: log lines, warnings, progress).
"""
