"""DomainBed model selection over results records, and the Markdown tables (docs/protocols.md).

A *run* is one job's records (one per checkpoint); each record carries ``args``
(dataset, algorithm, test_envs, hparams_seed, trial_seed) and ``env{i}_{in,out}_acc``.
Test accuracy is always the test environment's **in** split (its out split is the oracle's
validation set), as in DomainBed.

- ``training_domain``: per run, the checkpoint with the best mean out-accuracy of the
  training environments; across hparams, the run with the best such value.
- ``oracle``: per run, the LAST checkpoint; validation = the test env's out-accuracy.
- ``leave_one_out``: needs runs with ``test_envs = [t, v]`` for every other env v (same
  hparams seed and trial); validation at a step = mean over v of env v's in-accuracy in the
  [t, v] run at that step; the test accuracy at that step is read from the [t] run.

Tables: per algorithm and test env, mean +- standard error over trial seeds (standard error =
population std / sqrt(n), DomainBed's ``format_mean``); "Avg" averages over test envs within
each trial first. A missing cell is "X", and a note under the table names the missing cells
and those with fewer trials than the others. ``results_table`` gives Markdown,
``results_table_latex`` the same numbers as a LaTeX tabular.

Selection and averaging assume one sweep: ``sweeps`` splits runs of other settings (steps,
data, image settings; everything in a job's identity but what a sweep varies) apart first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, NamedTuple

SELECTION_METHODS = ("training_domain", "leave_one_out", "oracle")
TITLES = {"training_domain": "training-domain validation",
          "leave_one_out": "leave-one-domain-out validation",
          "oracle": "test-domain validation (oracle)"}


def _args(run):
    return run[0]["args"]


def _num_envs(record) -> int:
    return sum(1 for k in record if k.startswith("env") and k.endswith("_in_acc"))


def _by_step(run):
    return sorted(run, key=lambda r: r["step"])


def training_domain_acc(run) -> tuple[float, float] | None:
    """(val, test) of one single-test-env run: the best checkpoint by training-env out-acc."""
    test_env = _args(run)["test_envs"][0]
    best = None
    for r in _by_step(run):
        train_envs = [i for i in range(_num_envs(r)) if i not in r["args"]["test_envs"]]
        val = sum(r[f"env{i}_out_acc"] for i in train_envs) / len(train_envs)
        if best is None or val > best[0]:
            best = (val, r[f"env{test_env}_in_acc"])
    return best


def oracle_acc(run) -> tuple[float, float] | None:
    last = _by_step(run)[-1]
    t = _args(run)["test_envs"][0]
    return last[f"env{t}_out_acc"], last[f"env{t}_in_acc"]


def leave_one_out_acc(test_run, pair_runs) -> tuple[float, float] | None:
    """(val, test) for one hparams seed: best step by mean held-out env in-accuracy."""
    t = _args(test_run)["test_envs"][0]
    n_envs = _num_envs(test_run[0])
    pairs = {next(v for v in _args(run)["test_envs"] if v != t): run for run in pair_runs}
    if set(pairs) != set(range(n_envs)) - {t}:
        return None
    test_by_step = {r["step"]: r[f"env{t}_in_acc"] for r in test_run}
    best = None
    for step, test_acc in sorted(test_by_step.items()):
        vals = []
        for v, run in pairs.items():
            at = [r for r in run if r["step"] == step]
            if not at:
                break
            vals.append(at[0][f"env{v}_in_acc"])
        if len(vals) != len(pairs):
            continue
        val = sum(vals) / len(vals)
        if best is None or val > best[0]:
            best = (val, test_acc)
    return best


def group_runs(runs: Iterable[list[dict]]):
    """{(dataset, algorithm, test_env, trial_seed): {hparams_seed: {"single": run,
    "pairs": [runs]}}} keyed on the first test env."""
    groups = defaultdict(lambda: defaultdict(lambda: {"single": None, "pairs": []}))
    for run in runs:
        if not run:
            continue
        a = _args(run)
        key = (a["dataset"], a["algorithm"], a["test_envs"][0], a["trial_seed"])
        slot = groups[key][a["hparams_seed"]]
        if len(a["test_envs"]) == 1:
            slot["single"] = run
        else:
            slot["pairs"].append(run)
            # Pair [t, v] also counts for test env v's group (any order).
            key2 = (a["dataset"], a["algorithm"], a["test_envs"][1], a["trial_seed"])
            groups[key2][a["hparams_seed"]]["pairs"].append(run)
    return groups


class Sweep(NamedTuple):
    """Jobs that may be selected among and averaged: one dataset, one set of settings."""
    dataset: str
    title: str          # the dataset, and what sets this sweep apart if it has siblings
    runs: list


def sweeps(runs: Iterable[list[dict]], warn=None) -> list[Sweep]:
    """``runs`` split into sweeps by ``hjax.io.record_checks.sweep_key`` (a job's identity
    without the algorithm, seeds, test envs and hparams a sweep varies), so that jobs of other steps,
    data or image settings are never averaged together. A job with the same algorithm, test
    envs and seeds as an earlier one of its sweep is left out (``warn`` gets one line): group
    slots hold one run, and the later one would silently replace the earlier."""
    from hjax.io import record_checks, run_identity
    groups: dict[tuple[str, str], tuple[dict, list]] = {}
    seen: dict[tuple, list] = {}
    for run in runs:
        if not run:
            continue
        a = _args(run)
        key, settings = record_checks.sweep_key(run[0])
        slot = (a["dataset"], key, a["algorithm"], tuple(a["test_envs"]), a["hparams_seed"],
                a["trial_seed"])
        if slot in seen:
            if warn is not None:
                warn(f"two jobs of {a['dataset']} {a['algorithm']} test_envs={a['test_envs']} "
                     f"hparams_seed={a['hparams_seed']} trial_seed={a['trial_seed']} with the "
                     f"same settings ({record_checks.label(seen[slot][0], 'domainbed')} and "
                     f"{record_checks.label(run[0], 'domainbed')}); the second is left out")
            continue
        seen[slot] = run
        groups.setdefault((a["dataset"], key), (settings, []))[1].append(run)
    out = []
    for dataset in sorted({d for d, _ in groups}):
        keys = sorted(k for d, k in groups if d == dataset)
        base = groups[(dataset, keys[0])][0]
        for i, key in enumerate(keys):
            settings, members = groups[(dataset, key)]
            title = dataset
            if len(keys) > 1:     # name what sets it apart from the first sweep
                title += (f" (sweep {i + 1} of {len(keys)}"
                          + (f": {run_identity.identity_diff(base, settings)}" if i else "")
                          + ")")
            out.append(Sweep(dataset, title, members))
    return out


def select(method: str, by_hparams) -> float | None:
    """Test accuracy of the hparams seed with the best validation accuracy."""
    scored = []
    for seed, slot in sorted(by_hparams.items()):
        if slot["single"] is None:
            continue
        if method == "training_domain":
            acc = training_domain_acc(slot["single"])
        elif method == "oracle":
            acc = oracle_acc(slot["single"])
        else:
            acc = leave_one_out_acc(slot["single"], slot["pairs"])
        if acc is not None:
            scored.append(acc)
    return max(scored)[1] if scored else None


def mean_and_population_se(values) -> tuple[float, float]:
    """Mean and standard error with the population std (n in the variance), as DomainBed's
    collect_results prints (hjax's ColoredMNIST tables use the sample std:
    hjax.protocols.irm_cmnist.tables.mean_and_sample_se)."""
    n = len(values)
    m = sum(values) / n
    std = math.sqrt(sum((v - m) ** 2 for v in values) / n)
    return m, std / math.sqrt(n)


def _fmt(values) -> str:
    if not values:
        return "X"
    m, se = mean_and_population_se(values)
    return f"{100 * m:.1f} ± {100 * se:.1f}"


def _fmt_latex(values) -> str:
    if not values:
        return "X"
    m, se = mean_and_population_se(values)
    return f"${100 * m:.1f} \\pm {100 * se:.1f}$"


class Table(NamedTuple):
    """One dataset and selection method: per algorithm, the per-trial test accuracies of
    every test env (``cells``) and of their average (``avg``; empty unless every test env
    has a result, averaged over the trials that all test envs share)."""
    dataset: str
    method: str
    test_envs: list[int]
    env_names: list[str]
    rows: list[tuple[str, list[list[float]], list[float]]]
    notes: list[str]


def compute_table(runs, method: str, dataset: str, env_names=None) -> Table:
    groups = group_runs(runs)
    accs = defaultdict(dict)      # (algorithm, test_env) -> {trial: acc}
    for (ds, alg, t, trial), by_hp in groups.items():
        if ds != dataset:
            continue
        acc = select(method, by_hp)
        if acc is not None:
            accs[(alg, t)][trial] = acc
    algorithms = sorted({alg for alg, _ in accs})
    test_envs = sorted({t for _, t in accs})
    if env_names is not None:     # every test env of the dataset, so that a missing one shows
        test_envs = sorted(set(test_envs) | set(range(len(env_names))))
    names = [env_names[t] if env_names else str(t) for t in test_envs]
    all_trials = sorted({trial for cell in accs.values() for trial in cell})
    rows, missing, partial = [], [], []
    for alg in algorithms:
        cells = [[accs[(alg, t)][s] for s in sorted(accs[(alg, t)])] for t in test_envs]
        complete = all(accs[(alg, t)] for t in test_envs)
        trials = sorted(set.intersection(*(set(accs[(alg, t)]) for t in test_envs)))
        avg = ([sum(accs[(alg, t)][s] for t in test_envs) / len(test_envs) for s in trials]
               if complete else [])
        rows.append((alg, cells, avg))
        for t, name in zip(test_envs, names):
            got = sorted(accs[(alg, t)])
            if not got:
                missing.append(f"{alg}/{name}")
            elif len(got) < len(all_trials):
                partial.append(f"{alg}/{name} ({len(got)} of {len(all_trials)} trials)")
    notes = []
    if not rows:
        notes.append("no results" + (" (leave-one-domain-out needs the pair runs: launch with "
                                     "--with_pairs)" if method == "leave_one_out" else ""))
    if missing:
        notes.append("X = no result (missing or unfinished runs"
                     + (", or no pair runs: launch with --with_pairs"
                        if method == "leave_one_out" else "") + "): " + ", ".join(missing))
    if partial:
        notes.append("fewer trials than the others: " + ", ".join(partial))
    return Table(dataset, method, test_envs, names, rows, notes)


def results_table(runs, method: str, dataset: str, env_names=None, title=None) -> str:
    """Markdown table for one dataset and selection method (``title``: the dataset's, by
    default its name)."""
    tab = compute_table(runs, method, dataset, env_names)
    lines = [f"### {title or dataset}, {TITLES[method]}", "",
             "| algorithm | " + " | ".join(tab.env_names) + " | Avg |",
             "|---" * (len(tab.test_envs) + 2) + "|"]
    for alg, cells, avg in tab.rows:
        lines.append(f"| {alg} | " + " | ".join(_fmt(c) for c in cells) + f" | {_fmt(avg)} |")
    if tab.notes:
        lines += [""] + [f"Note: {n}" for n in tab.notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "%": r"\%", "_": r"\_", "&": r"\&",
                  "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def results_table_latex(runs, method: str, dataset: str, env_names=None, title=None) -> str:
    """The same table as a LaTeX tabular (one column per test env, then Avg; $mean \\pm se$)."""
    tab = compute_table(runs, method, dataset, env_names)
    lines = [f"% {title or dataset}, {TITLES[method]}",
             r"\begin{tabular}{l" + "c" * (len(tab.test_envs) + 1) + "}",
             r"\hline",
             "Algorithm & " + " & ".join(latex_escape(n) for n in tab.env_names)
             + r" & Avg \\",
             r"\hline"]
    for alg, cells, avg in tab.rows:
        lines.append(latex_escape(alg) + " & " + " & ".join(_fmt_latex(c) for c in cells)
                     + f" & {_fmt_latex(avg)} " + r"\\")
    lines += [r"\hline", r"\end{tabular}"]
    lines += [f"% Note: {n}" for n in tab.notes]
    return "\n".join(lines) + "\n"
