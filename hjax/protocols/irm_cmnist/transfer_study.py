"""The transfer measure over a ColoredMNIST run's restarts (behind
``python -m hjax.cli.transferability``).

Either trains the models itself (same protocol, seeds and data as the ColoredMNIST runs) or
reads the params that a run saved with ``--save_params``. Params files are not committed, so
with ``reuse`` a model already in ``<output_dir>/transferability.jsonl`` (same deltas and
ascent settings) keeps its rows without being loaded, and a model with neither params nor
rows is skipped with a warning. The measurement of one model is
:func:`hjax.analysis.transferability.evaluate_model`.
"""

from __future__ import annotations

import dataclasses
import math
import logging
import os
from typing import Any, Callable, NamedTuple

import jax

from hjax import data
from hjax.analysis import transferability
from hjax.errors import ConfigError, check_choice, check_positive, ensure_writable_dir
from hjax.io import params_io, plotting, record_checks
from hjax.io.results import read_jsonl, write_atomic, write_jsonl
from hjax.models import irm_mlp
from hjax.data import sharding
from hjax.protocols.irm_cmnist import loop, train
from hjax.protocols.irm_cmnist.config import TEST_DOMAIN, data_seed

_LOG = logging.getLogger("hjax")


@dataclasses.dataclass(frozen=True)
class TransferStudyConfig:
    """Settings of one study; field names are the command line's flag names."""
    methods: tuple[str, ...] = ("erm", "hgp", "hutchinson")
    methods_given: bool = True       # with input_dirs: filter the saved models by methods
    input_dirs: tuple[str, ...] | None = None
    dataset: str = "colored_mnist"
    label_shift_split: str = "intended"
    steps: int = 501
    restarts: int = 3
    seed: int = 0
    hidden_dim: int | None = None
    num_probes: int | None = None
    deltas: tuple[str, ...] = ("0.1", "0.3", "1", "3")
    ascent_restarts: int = 8
    ascent_steps: int = 200
    ascent_lr: float = 0.1
    num_devices: int | None = None
    fake_data: bool = False
    output_dir: str = "runs/transferability"
    reuse: bool = True
    width: float = 6.0
    height: float = 4.0
    dpi: int = 100


DATASETS = ("colored_mnist", "colored_mnist_label_shift")


def parse_deltas(values) -> list[float]:
    out = []
    for v in values:
        try:
            d = float(v)
        except ValueError:
            raise ConfigError(f"--deltas: {v!r} is not a number") from None
        if not (math.isfinite(d) and d > 0):
            raise ConfigError(f"--deltas: {v!r} must be a positive number")
        out.append(d)
    if not out:
        raise ConfigError("--deltas must list at least one radius")
    return out


def validate(f) -> list[float]:
    for m in f.methods:
        check_choice("methods", m, train.METHODS)
    if not f.methods and not f.input_dirs:
        raise ConfigError("--methods must list at least one method")
    check_choice("dataset", f.dataset, DATASETS)
    check_choice("label_shift_split", f.label_shift_split, ("intended", "reference"))
    for name in ("steps", "restarts", "ascent_restarts", "ascent_steps", "dpi"):
        check_positive(name, getattr(f, name))
    for name in ("hidden_dim", "num_probes"):
        if getattr(f, name) is not None:
            check_positive(name, getattr(f, name))
    if not f.ascent_lr > 0:
        raise ConfigError(f"--ascent_lr={f.ascent_lr} must be > 0")
    if not (f.width > 0 and f.height > 0):
        raise ConfigError(f"--width={f.width} and --height={f.height} must be > 0")
    return parse_deltas(f.deltas)


class _Model(NamedTuple):
    """One model to measure. ``run`` names its rows in the table and figure: the method when
    the study trains it, the run's folder when it was saved by run.py (as in report.py, so
    ``hgp_alpha10`` is not merged into ``hgp``). ``old_rows`` are its earlier rows, if kept."""
    run: str
    method: str
    restart: int
    data_seed: int
    test_domain: str | None
    model: Any
    params: Any
    envs: Any
    info: Any
    old_rows: list | None


def _options(dataset, split):
    return {"split": split} if dataset == "colored_mnist_label_shift" else {}


def trained_models(f, mnist, log=_LOG.info, warn=_LOG.warning):
    """Yields a _Model per method and restart, training each model."""
    info = data.dataset_info(f.dataset)
    mesh = sharding.make_mesh(f.num_devices)
    for method in f.methods:
        hp = train.method_hparams(method, hidden_dim=f.hidden_dim, num_probes=f.num_probes)
        model = irm_mlp(hp["hidden_dim"])
        for r in range(f.restarts):
            seed = data_seed(f.seed, r)
            envs = data.make_environments(f.dataset, seed=seed, mnist=mnist,
                                          **_options(f.dataset, f.label_shift_split))
            final = {}
            group = loop.prepare_group(mnist, f.dataset, [seed], info, mesh,
                                       _options(f.dataset, f.label_shift_split).get("split"))
            [rec] = loop.train_restarts(
                model, group, info, method, hp,
                keys=[jax.random.fold_in(jax.random.key(f.seed), r)], steps=f.steps,
                mesh=mesh, log_every=f.steps,
                hooks=loop.Hooks(end=lambda i, p: final.setdefault("params", p)))
            if rec["status"] != "ok":
                warn(f"{method} restart {r} diverged; skipped")
                continue
            log(f"{method} restart {r}: train acc {rec['train_acc']:.4f}, "
                f"test acc {rec['test_acc']:.4f}")
            yield _Model(method, method, r, seed, TEST_DOMAIN, model, final["params"], envs,
                         info, None)


# Rows written before the settings were recorded came from `make figures`, i.e. the defaults.
_DEFAULT_SETTINGS = {"seed": 0, "ascent_restarts": 8, "ascent_steps": 200, "ascent_lr": 0.1}


def measure_settings(f) -> dict:
    """What, besides the model and delta, a row's numbers depend on."""
    return {"seed": f.seed, "ascent_restarts": f.ascent_restarts,
            "ascent_steps": f.ascent_steps, "ascent_lr": f.ascent_lr}


def _model_key(row) -> tuple:
    # Models trained before the test-domain fix (no ``test_domain``) were measured against
    # other target images: their rows never stand in for a re-trained model's.
    return (row["dataset"], plotting.run_name(row), row["restart"], row["data_seed"],
            row.get("test_domain"))


def previous_rows(out_dir: str, settings: dict, warn=_LOG.warning) -> dict:
    """Rows of an earlier transferability.jsonl measured with these settings, by model."""
    path = os.path.join(out_dir, "transferability.jsonl")
    if not os.path.isfile(path):
        return {}
    try:
        rows = read_jsonl(path)
    except (OSError, ValueError) as e:
        warn(f"warning: {path} is unreadable ({e}); measuring every model again")
        return {}
    by_model = {}
    for row in rows:
        if row.get("settings", _DEFAULT_SETTINGS) == settings:
            by_model.setdefault(_model_key(row), []).append(row)
    return by_model


def saved_models(f, mnist, methods_given: bool, previous: dict, deltas, warn=_LOG.warning):
    """Yields a _Model per restart saved in run.py output directories, named by folder, with
    its earlier rows (or None): models with rows for every delta in `previous` are not
    loaded; models with neither rows nor a params file are skipped with a warning."""
    dirs = plotting.expand_dirs(f.input_dirs)
    found = 0
    for d in dirs:
        path = os.path.join(d, "results.jsonl")
        if not os.path.lexists(path):
            continue
        missing = []
        name = os.path.basename(os.path.normpath(d))
        records, problem = record_checks.load(path, "colored_mnist_curves")
        if problem:
            warn(f"warning: {problem}; skipped")
            continue
        for rec in records:
            if rec.get("status") != "ok" or not rec.get("params_file"):
                continue
            problem = record_checks.saved_model_problem(rec)
            if problem:
                warn(f"warning: {path}: restart {rec['restart']}: {problem}; skipped")
                continue
            if methods_given and rec["method"] not in f.methods:
                continue
            found += 1
            info = data.dataset_info(rec["dataset"])
            key = (info.name, name, rec["restart"], rec["data_seed"], rec.get("test_domain"))
            old = {row["delta"]: row for row in previous.get(key, [])}
            if all(delta in old for delta in deltas):
                yield _Model(name, rec["method"], rec["restart"], rec["data_seed"],
                             rec.get("test_domain"), None, None, None, info,
                             [old[delta] for delta in deltas])
                continue
            params_path = os.path.join(d, rec["params_file"])
            if not os.path.isfile(params_path):
                missing.append(rec["restart"])
                continue
            params = params_io.load_params(params_path)
            options = {"split": rec["split"]} if rec.get("split") else {}
            envs = data.make_environments(rec["dataset"], seed=rec["data_seed"], mnist=mnist,
                                          **options)
            yield _Model(name, rec["method"], rec["restart"], rec["data_seed"],
                         rec.get("test_domain"), irm_mlp(rec["hparams"]["hidden_dim"]), params,
                         envs, info, None)
        if missing:
            warn(f"warning: {d}: no params file and no earlier rows for restart(s) "
                 f"{','.join(map(str, missing))} (params are not committed; rerun run.py "
                 f"--save_params to measure them); skipped")
    if not found:
        raise ConfigError(f"--input_dirs={','.join(f.input_dirs)!r}: no saved params found "
                         f"(run experiments/run.py with --save_params)")


def run(f: TransferStudyConfig, log: Callable[[str], None] = _LOG.info,
        warn: Callable[[str], None] = _LOG.warning) -> list[dict]:
    """Measures every model (trained here, or saved by a run); writes the jsonl, table and
    figure. ``log`` gets progress lines, ``warn`` warnings; raises ConfigError for bad
    settings and MnistUnavailableError when real MNIST cannot be had."""
    deltas = validate(f)
    out_dir = ensure_writable_dir(f.output_dir)
    mnist = data.fake_mnist() if f.fake_data else data.load_mnist()
    settings = measure_settings(f)
    previous = previous_rows(out_dir, settings, warn) if f.input_dirs and f.reuse else {}
    models = (saved_models(f, mnist, f.methods_given, previous, deltas, warn) if f.input_dirs
              else trained_models(f, mnist, log, warn))
    out_path = os.path.join(out_dir, "transferability.jsonl")
    rows, done = [], set()
    for m in models:
        r = m.restart
        if m.old_rows is not None:
            log(f"{m.run} restart {r}: kept its {len(m.old_rows)} earlier rows")
            new_rows = m.old_rows
        else:
            key = jax.random.fold_in(jax.random.key(f.seed + 1), r)
            new_rows = []
            for row in transferability.evaluate_model(
                    m.model, m.params, m.envs, m.info, deltas, key,
                    num_restarts=f.ascent_restarts, num_steps=f.ascent_steps, lr=f.ascent_lr):
                new_rows.append({"method": m.method, "run": m.run, "restart": r,
                                 "data_seed": m.data_seed, "dataset": m.info.name, **row,
                                 "settings": settings,
                                 **({"test_domain": m.test_domain} if m.test_domain else {})})
                log(f"  delta {row['delta']:g}: measure {row['measure']:.4g}, bound "
                    f"{row['bound']:.4g}, bound+offset {row['corrected_bound']:.4g}, "
                    f"worst-head test acc {row['worst_target_accuracy']:.4f}")
        rows.extend(new_rows)
        done.add((m.info.name, m.run, r, m.data_seed, m.test_domain))
        # Until the run ends, earlier rows not yet passed are kept too: their params may be
        # gone, so an interrupted run must not drop them.
        pending = [row for k, old in previous.items() if k not in done for row in old]
        write_jsonl(out_path, rows + pending)
    if not rows and f.input_dirs:
        raise ConfigError(f"--input_dirs={','.join(f.input_dirs)!r}: none of the saved models "
                         f"has its params file or earlier rows in {out_path}")
    write_jsonl(out_path, rows)

    table = plotting.transfer_table(rows)
    write_atomic(os.path.join(out_dir, "transferability.md"),
                 "# Transfer measure, training domains -> test domain (head ball of radius "
                 "δ)\n\n" + table + "\nMean ± std over restarts. `bound` = δ‖Δg‖ + δ²/2 "
                 "‖ΔH‖₂ is not an upper bound in general; `bound + offset` is, to second "
                 "order (see hjax.core.diagnostics.transfer_measure). h* is the trained "
                 "head after the last update (run.py reads its accuracies just before "
                 "it).\n")
    plotting.plot_transfer(rows, os.path.join(out_dir, "transferability.png"),
                           size=(f.width, f.height), dpi=f.dpi)
    log("\n" + table)
    return rows


