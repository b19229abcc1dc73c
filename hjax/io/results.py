"""Results files: atomic writes, reading, and mean +- std summaries."""

from __future__ import annotations

import json
import math
import os
import tempfile

from hjax.errors import ConfigError


def write_atomic(path: str, text: str | bytes) -> None:
    """Write ``text`` (str or bytes) to ``path``: readers see the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)       # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: str, records) -> None:
    write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


class ResultsFileError(ConfigError):
    """A results file that cannot be used, in one line: the file, the line, and why."""


def read_jsonl(path: str) -> list[dict]:
    """The records (JSON objects, one per line) of ``path``; blank lines are skipped.

    Raises :class:`ResultsFileError` (a ConfigError, so a ValueError) naming the file and
    what is wrong with it: unreadable (missing, a folder, no permission), not UTF-8 text
    (binary), a line that is not JSON (e.g. cut short), or a line that is not an object.
    ``NaN`` / ``Infinity`` are accepted here, as Python's json writes them (a diverged
    restart's metrics); readers that average a field check it is finite
    (``hjax.io.record_checks``).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ResultsFileError(f"{path}: cannot be read ({e.strerror or type(e).__name__})"
                               ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsFileError(f"{path}: not UTF-8 text (binary or damaged; byte {e.start})"
                               ) from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            cut = number == len(lines)          # the last line, without its newline
            raise ResultsFileError(
                f"{path}: line {number} is not valid JSON ("
                + ("cut short: a truncated file?" if cut else getattr(e, "msg", str(e)))
                + ")") from None
        if not isinstance(record, dict):
            raise ResultsFileError(f"{path}: line {number} is a JSON "
                                   f"{_json_kind(record)}, not a record (an object)")
        records.append(record)
    return records


def _json_kind(value) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def mean_std(values) -> tuple[float, float]:
    """Mean and population std (numpy's default, as the IRM / Fishr scripts report)."""
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def fmt_pct(values) -> str:
    m, s = mean_std(values)
    return "n/a" if math.isnan(m) else f"{100 * m:.1f} ± {100 * s:.1f}"


SUMMARY_COLUMNS = (("train_acc", "train acc"), ("test_acc", "test acc"),
                   ("gray_test_acc", "gray test acc"))


def summary_row(records) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    row = {key: fmt_pct([r[key] for r in ok]) for key, _ in SUMMARY_COLUMNS}
    row["restarts"] = f"{len(ok)}/{len(records)}"
    return row


def summary_table(rows: dict) -> str:
    """Markdown table; ``rows`` maps a label (e.g. a method) to its records."""
    head = "| method | " + " | ".join(t for _, t in SUMMARY_COLUMNS) + " | restarts ok |"
    lines = [head, "|" + "---|" * (len(SUMMARY_COLUMNS) + 2)]
    for label, records in rows.items():
        r = summary_row(records)
        lines.append(f"| {label} | " + " | ".join(r[k] for k, _ in SUMMARY_COLUMNS)
                     + f" | {r['restarts']} |")
    return "\n".join(lines) + "\n"
