"""Figures and tables from results files (``experiments/plot.py``, ``transferability.py``).

Every plot function takes the data, an output path, ``size=(width_inches, height_inches)``
and ``dpi``, and writes a PNG of exactly ``round(width * dpi) x round(height * dpi)`` pixels
(no tight bounding box), atomically. matplotlib runs on the Agg backend (no display).
"""

from __future__ import annotations

import glob
import io
import math
import os
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from hjax.io.results import write_atomic  # noqa: E402
from hjax.io.results import mean_std, read_jsonl  # noqa: E402

DEFAULT_SIZE = (6.0, 4.0)
DEFAULT_DPI = 100

# Final-distance table columns: history key -> column title.
DISTANCE_COLUMNS = (
    ("hess_spectral_train", "‖H₀−H₁‖₂"),
    ("hess_frobenius_train", "‖H₀−H₁‖_F"),
    ("grad_dist_train", "‖g₀−g₁‖"),
    ("hess_spectral_train_test", "‖H̄−H_test‖₂"),
    ("hess_frobenius_train_test", "‖H̄−H_test‖_F"),
    ("grad_dist_train_test", "‖ḡ−g_test‖"),
)


# ----------------------------------------------------------------------------- loading

def expand_dirs(specs: Iterable[str], missing: list | None = None) -> list[str]:
    """Comma-separated entries and glob patterns -> existing directories, in order, no repeats.

    ``missing`` collects the entries that name no directory (a pattern matching none)."""
    out: list[str] = []
    for spec in specs:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
            dirs = [d for d in matches if os.path.isdir(d)]
            if not dirs and missing is not None:
                missing.append(part)
            for d in dirs:
                if d not in out:
                    out.append(d)
    return out


def load_runs(dirs: Sequence[str], problems: list | None = None) -> dict[str, list[dict]]:
    """run name -> restart records, from ``<dir>/results.jsonl`` of each directory.

    A run is named by its directory, as in report.py's tables (``make reproduce`` names it
    after the method), so variants of one method in their own folders (``hgp_alpha10``, a
    method run with --alpha=10) stay separate curves; two folders of the same name (erm of
    two result sets) are never merged into one curve: both are then named with their parent
    folder. Directories without a results.jsonl are skipped; a results.jsonl that cannot be
    used (``hjax.io.record_checks``: unreadable, not JSON lines, records missing fields,
    records of more than one run, a DomainBed job's records) is skipped and one line naming
    it and why is appended to ``problems``.
    """
    from hjax.io import record_checks
    loaded: list[tuple[str, list[dict]]] = []
    for d in dirs:
        path = os.path.join(d, "results.jsonl")
        if not os.path.lexists(path):
            continue
        records, problem = record_checks.load(path, "colored_mnist_curves")
        if problem:
            if problems is not None:
                problems.append(problem)
            continue
        loaded.append((d, records))
    names = [os.path.basename(os.path.normpath(d)) for d, _ in loaded]
    runs: dict[str, list[dict]] = {}
    for (d, records), name in zip(loaded, names):
        if names.count(name) > 1:
            name = os.path.join(os.path.basename(os.path.dirname(os.path.normpath(d))) or d,
                                name)
            if name in runs:                # same parent name too: the whole path
                name = os.path.normpath(d)
        runs[name] = records
    return runs


def curve(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std) of ``key`` over restarts at every step where some restart has it.

    Diverged restarts contribute the steps they reached; the std is the population std.
    """
    by_step: dict[int, list[float]] = {}
    for rec in records:
        for row in rec.get("history") or []:
            v = row.get(key)
            if v is not None and math.isfinite(v):
                by_step.setdefault(int(row["step"]), []).append(float(v))
    steps = np.array(sorted(by_step), dtype=np.int64)
    stats = [mean_std(by_step[s]) for s in steps]
    mean = np.array([m for m, _ in stats], dtype=np.float64)
    std = np.array([s for _, s in stats], dtype=np.float64)
    return steps, mean, std


def restarts_with(records: Sequence[dict], key: str) -> int:
    """How many restarts have ``key`` in some history row."""
    return sum(any(key in row for row in r.get("history") or []) for r in records)


def has_key(runs: Mapping[str, Sequence[dict]], key: str) -> bool:
    return any(len(curve(recs, key)[0]) for recs in runs.values())


# ----------------------------------------------------------------------------- figures

def _figure(size, dpi):
    w, h = size
    if not (w > 0 and h > 0 and dpi > 0):
        raise ValueError(f"size and dpi must be positive, got size={size}, dpi={dpi}")
    return plt.figure(figsize=(w, h), dpi=dpi)


def save_figure(fig, path: str, dpi: float) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def plot_curves(runs: Mapping[str, Sequence[dict]], key: str, path: str, *,
                size=DEFAULT_SIZE, dpi=DEFAULT_DPI, ylabel: str | None = None,
                title: str | None = None, logy: bool = False) -> bool:
    """One line per method (mean over restarts, shaded +- std) of history ``key`` over steps.

    Returns False (and writes nothing) when no method has ``key`` in its history.
    """
    if not has_key(runs, key):
        return False
    fig = _figure(size, dpi)
    ax = fig.add_subplot(1, 1, 1)
    for method, records in runs.items():
        steps, mean, std = curve(records, key)
        if not len(steps):
            continue
        n = restarts_with(records, key)     # e.g. only the tracked restarts of a run
        (line,) = ax.plot(steps, mean, marker="." if len(steps) < 30 else None,
                          label=f"{method} (n={n})")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                        linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or key)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path, dpi)
    return True


def plot_test_accuracy(runs, path, *, size=DEFAULT_SIZE, dpi=DEFAULT_DPI) -> bool:
    return plot_curves(runs, "test_acc", path, size=size, dpi=dpi, ylabel="test accuracy",
                       title="Test-domain accuracy (mean ± std over restarts)")


_CURVE_LABELS = {
    "hess_spectral_train": ("‖H₀ − H₁‖₂ (head)",
                            "Head-Hessian distance between the training domains"),
    "hess_spectral_train_test": ("‖H̄_train − H_test‖₂ (head)",
                                 "Head-Hessian distance, training domains vs test"),
}


def plot_hessian_distance(runs, path, *, key="hess_spectral_train", size=DEFAULT_SIZE,
                          dpi=DEFAULT_DPI) -> bool:
    """A tracked distance (default: spectral, between the training domains) over steps, log
    scale. False (nothing written) if no run tracked it (run.py --track_alignment_every)."""
    ylabel, title = _CURVE_LABELS.get(key, (key, key))
    return plot_curves(runs, key, path, size=size, dpi=dpi, logy=True, ylabel=ylabel,
                       title=title)


def run_name(row: Mapping) -> str:
    """The name a transferability row is grouped by: its run (the folder of a saved run, as
    in load_runs), or its method for rows written before rows named their run."""
    return row.get("run", row["method"])


def transfer_curves(rows: Sequence[dict], key: str) -> dict[str, tuple]:
    """run -> (deltas, mean, std) of ``key`` over restarts (rows of transferability.jsonl)."""
    out: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        v = row.get(key)
        if v is None or not math.isfinite(v):
            continue
        out.setdefault(run_name(row), {}).setdefault(float(row["delta"]), []).append(v)
    result = {}
    for run, by_delta in out.items():
        deltas = np.array(sorted(by_delta))
        stats = [mean_std(by_delta[d]) for d in deltas]
        result[run] = (deltas, np.array([m for m, _ in stats]),
                          np.array([s for _, s in stats]))
    return result


def transfer_restarts(rows: Sequence[dict]) -> dict[str, int]:
    """run -> how many restarts its transfer curve averages (the most rows at any one delta
    with a finite measure), for a legend: measured models can be fewer than the restarts."""
    counts: dict[str, dict[float, int]] = {}
    for row in rows:
        v = row.get("measure")
        if v is None or not math.isfinite(v):
            continue
        by_delta = counts.setdefault(run_name(row), {})
        by_delta[float(row["delta"])] = by_delta.get(float(row["delta"]), 0) + 1
    return {run: max(by_delta.values()) for run, by_delta in counts.items()}


def plot_transfer(rows: Sequence[dict], path: str, *, size=DEFAULT_SIZE,
                  dpi=DEFAULT_DPI) -> bool:
    """Transfer measure against delta per method (solid, shaded std) with its second-order
    bounds: ``bound`` = delta ||Δg|| + delta²/2 ||ΔH||₂ (dashed) and ``corrected_bound`` =
    bound + offset (dotted; the one that bounds the measure in general, see
    ``hjax.core.diagnostics.transfer_measure``). Log-log axes; the legend gives each run's
    number of restarts (n) and the line styles. False if ``rows`` is empty."""
    measure = transfer_curves(rows, "measure")
    if not measure:
        return False
    bound = transfer_curves(rows, "bound")
    corrected = transfer_curves(rows, "corrected_bound")
    counts = transfer_restarts(rows)
    fig = _figure(size, dpi)
    ax = fig.add_subplot(1, 1, 1)
    for method, (deltas, mean, std) in measure.items():
        (line,) = ax.plot(deltas, mean, marker="o", label=f"{method} (n={counts[method]})")
        c = line.get_color()
        ax.fill_between(deltas, np.maximum(mean - std, 1e-12), mean + std, color=c,
                        alpha=0.2, linewidth=0)
        if method in bound:
            ax.plot(bound[method][0], bound[method][1], "--", color=c)
        if method in corrected:
            ax.plot(corrected[method][0], corrected[method][1], ":", color=c)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("δ (radius of the head ball)")
    ax.set_ylabel("train → test transfer measure")
    ax.set_title("Transfer measure vs δ")
    ax.grid(alpha=0.3, which="both")
    # One legend outside the axes, so that eight methods do not hide the curves: colour ->
    # run (with its n), then line style -> quantity.
    handles, _ = ax.get_legend_handles_labels()
    styles = [Line2D([], [], color="k", linestyle=ls, label=lab) for ls, lab in
              (("-", "measure"), ("--", "bound"), (":", "bound + offset"))]
    ax.legend(handles=handles + styles, fontsize="x-small", loc="upper left",
              bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    save_figure(fig, path, dpi)
    return True


# ----------------------------------------------------------------------------- tables

def _fmt(values) -> str:
    m, s = mean_std(values)
    return "n/a" if math.isnan(m) else f"{m:.4g} ± {s:.2g}"


def _fmt_percent(values) -> str:
    """Accuracies as report.py prints them: mean ± std in percent, one decimal."""
    m, s = mean_std(values)
    return "n/a" if math.isnan(m) else f"{100 * m:.1f} ± {100 * s:.1f}"


UNTRACKED_NOTE = ("n/a: the run tracked no distances; run it with --track_alignment_every=N "
                  "(e.g. 25) to track them every N steps")


def final_distance_table(runs: Mapping[str, Sequence[dict]]) -> str:
    """Markdown: per method, mean ± std over restarts of the distances in the last tracked
    history row of each restart (the last step when the run finished; "restarts" counts the
    restarts with tracking), and the final test accuracy (%) of the restarts that finished.
    A method with no tracked restart gets n/a and a note naming --track_alignment_every."""
    head = ("| method | restarts | step | test acc (%) | "
            + " | ".join(t for _, t in DISTANCE_COLUMNS) + " |")
    lines = [head, "|" + "---|" * (len(DISTANCE_COLUMNS) + 4)]
    untracked = False
    for method, records in runs.items():
        last_rows = []
        for rec in records:
            tracked = [r for r in rec.get("history") or [] if "hess_spectral_train" in r]
            if tracked:
                last_rows.append(tracked[-1])
        steps = sorted({r["step"] for r in last_rows})
        untracked = untracked or not steps
        step = "n/a" if not steps else "/".join(str(s) for s in steps)
        cells = [_fmt([r.get(k) for r in last_rows]) for k, _ in DISTANCE_COLUMNS]
        acc = _fmt_percent([r.get("test_acc") for r in records if r.get("status") == "ok"])
        lines.append(f"| {method} | {len(last_rows)}/{len(records)} | {step} | {acc} | "
                     + " | ".join(cells) + " |")
    if untracked:
        lines += ["", UNTRACKED_NOTE]
    return "\n".join(lines) + "\n"


def transfer_table(rows: Sequence[dict]) -> str:
    """Markdown: per run (see run_name) and delta, mean ± std over restarts of the transfer
    results."""
    cols = (("measure", "transfer measure"), ("bound", "bound"),
            ("corrected_bound", "bound + offset"), ("gap_sup", "sup (L_T − L_S)"),
            ("worst_target_accuracy", "worst-head test acc"),
            ("target_accuracy", "test acc at h*"))
    lines = ["| method | δ | restarts | " + " | ".join(t for _, t in cols) + " |",
             "|" + "---|" * (len(cols) + 3)]
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((run_name(row), float(row["delta"])), []).append(row)
    for (method, delta), group in groups.items():
        cells = [_fmt([r.get(k) for r in group]) for k, _ in cols]
        lines.append(f"| {method} | {delta:g} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
