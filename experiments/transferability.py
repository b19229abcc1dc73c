"""Transfer measure (training domains -> test domain) of trained ColoredMNIST models, per method.

Trains the models itself (same protocol, seeds and data as experiments/run.py):

    python experiments/transferability.py --methods=erm,hgp,hutchinson --restarts=3 \
        --deltas=0.1,0.3,1,3 --output_dir=results/transferability

or evaluates models that run.py saved with --save_params:

    python experiments/transferability.py --input_dirs='results/colored_mnist/*' ...

Params files are not committed (1.2 MB each), so in that mode a model already in
<output_dir>/transferability.jsonl (same deltas and ascent settings) keeps its rows without
being loaded (--noreuse measures again), and a model with neither params nor rows is skipped
with a warning: `make figures` on a fresh clone adds what is new and loses nothing.

For each model and delta: hjax.diagnostics.transfer_measure over the ball of heads of radius
delta around the trained head, on the features of the trained featurizer (hjax.transferability).
Writes <output_dir>/transferability.jsonl (one row per method, restart and delta),
transferability.md (mean ± std over restarts) and transferability.png (measure and bounds
against delta; experiments/plot.py --transfer_file draws the same figure).
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from hjax.cli import (UsageError, check_choice, check_positive, ensure_writable_dir,  # noqa: E402
                      run_main)

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["erm", "hgp", "hutchinson"], "methods to train and compare")
flags.DEFINE_list("input_dirs", None,
                  "evaluate run.py --save_params outputs instead of training (comma-separated, "
                  "globs allowed); --methods then filters them only if given")
flags.DEFINE_string("dataset", "colored_mnist", "colored_mnist or colored_mnist_label_shift")
flags.DEFINE_string("label_shift_split", "intended", "intended or reference")
flags.DEFINE_integer("steps", 501, "training steps per restart")
flags.DEFINE_integer("restarts", 3, "restarts per method")
flags.DEFINE_integer("seed", 0, "base seed (as run.py: restart r uses data seed seed*10000+r)")
flags.DEFINE_integer("hidden_dim", None, "MLP width (default 390)")
flags.DEFINE_integer("num_probes", None, "Hutchinson probes (default 150)")
flags.DEFINE_list("deltas", ["0.1", "0.3", "1", "3"], "radii of the head ball")
flags.DEFINE_integer("ascent_restarts", 8, "starts of the projected ascent per problem")
flags.DEFINE_integer("ascent_steps", 200, "projected-ascent steps")
flags.DEFINE_float("ascent_lr", 0.1, "ascent step size, as a fraction of delta")
flags.DEFINE_integer("num_devices", None, "devices for training (default: all visible)")
flags.DEFINE_bool("fake_data", False, "small synthetic MNIST instead of the real one (tests)")
flags.DEFINE_string("output_dir", "runs/transferability", "where the outputs go")
flags.DEFINE_bool("reuse", True,
                  "with --input_dirs: keep the rows <output_dir>/transferability.jsonl already "
                  "has for a model (same deltas, seed and ascent settings) instead of measuring "
                  "it again; saved params are not committed, so this is how a fresh clone's "
                  "`make figures` keeps the models whose params it lacks")
flags.DEFINE_float("width", 6.0, "figure width in inches")
flags.DEFINE_float("height", 4.0, "figure height in inches")
flags.DEFINE_integer("dpi", 100, "figure dots per inch")

DATASETS = ("colored_mnist", "colored_mnist_label_shift")


def parse_deltas(values) -> list[float]:
    out = []
    for v in values:
        try:
            d = float(v)
        except ValueError:
            raise UsageError(f"--deltas: {v!r} is not a number") from None
        if not (math.isfinite(d) and d > 0):
            raise UsageError(f"--deltas: {v!r} must be a positive number")
        out.append(d)
    if not out:
        raise UsageError("--deltas must list at least one radius")
    return out


def validate(f) -> list[float]:
    from hjax.objectives import OBJECTIVES

    for m in f.methods:
        check_choice("methods", m, tuple(OBJECTIVES))
    if not f.methods and not f.input_dirs:
        raise UsageError("--methods must list at least one method")
    check_choice("dataset", f.dataset, DATASETS)
    check_choice("label_shift_split", f.label_shift_split, ("intended", "reference"))
    for name in ("steps", "restarts", "ascent_restarts", "ascent_steps", "dpi"):
        check_positive(name, getattr(f, name))
    for name in ("hidden_dim", "num_probes"):
        if getattr(f, name) is not None:
            check_positive(name, getattr(f, name))
    if not f.ascent_lr > 0:
        raise UsageError(f"--ascent_lr={f.ascent_lr} must be > 0")
    if not (f.width > 0 and f.height > 0):
        raise UsageError(f"--width={f.width} and --height={f.height} must be > 0")
    return parse_deltas(f.deltas)


def _options(dataset, split):
    return {"split": split} if dataset == "colored_mnist_label_shift" else {}


def trained_models(f, mnist):
    """Yields (method, restart, data_seed, model, params, envs, info), training each model."""
    import jax

    from hjax import data, parallel, train
    from hjax.experiment import data_seed
    from hjax.models import irm_mlp

    info = data.dataset_info(f.dataset)
    mesh = parallel.make_mesh(f.num_devices)
    for method in f.methods:
        hp = train.method_hparams(method, hidden_dim=f.hidden_dim, num_probes=f.num_probes)
        model = irm_mlp(hp["hidden_dim"])
        for r in range(f.restarts):
            seed = data_seed(f.seed, r)
            envs = data.make_environments(f.dataset, seed=seed, mnist=mnist,
                                          **_options(f.dataset, f.label_shift_split))
            final = {}
            rec = train.run_restart(model, envs, info, method, hp,
                                    key=jax.random.fold_in(jax.random.key(f.seed), r),
                                    steps=f.steps, mesh=mesh, log_every=f.steps,
                                    on_end=lambda p: final.setdefault("params", p))
            if rec["status"] != "ok":
                print(f"{method} restart {r} diverged; skipped", file=sys.stderr, flush=True)
                continue
            print(f"{method} restart {r}: train acc {rec['train_acc']:.4f}, "
                  f"test acc {rec['test_acc']:.4f}", flush=True)
            yield method, r, seed, model, final["params"], envs, info, None


# Rows written before the settings were recorded came from `make figures`, i.e. the defaults.
_DEFAULT_SETTINGS = {"seed": 0, "ascent_restarts": 8, "ascent_steps": 200, "ascent_lr": 0.1}


def measure_settings(f) -> dict:
    """What, besides the model and delta, a row's numbers depend on."""
    return {"seed": f.seed, "ascent_restarts": f.ascent_restarts,
            "ascent_steps": f.ascent_steps, "ascent_lr": f.ascent_lr}


def _model_key(row) -> tuple:
    return row["dataset"], row["method"], row["restart"], row["data_seed"]


def previous_rows(out_dir: str, settings: dict) -> dict:
    """Rows of an earlier transferability.jsonl measured with these settings, by model."""
    from hjax.results import read_jsonl

    path = os.path.join(out_dir, "transferability.jsonl")
    if not os.path.isfile(path):
        return {}
    try:
        rows = read_jsonl(path)
    except (OSError, ValueError) as e:
        print(f"warning: {path} is unreadable ({e}); measuring every model again",
              file=sys.stderr, flush=True)
        return {}
    by_model = {}
    for row in rows:
        if row.get("settings", _DEFAULT_SETTINGS) == settings:
            by_model.setdefault(_model_key(row), []).append(row)
    return by_model


def saved_models(f, mnist, methods_given: bool, previous: dict, deltas):
    """Yields the same tuples from run.py output directories with saved params, plus the
    model's earlier rows (or None): models with rows for every delta in `previous` are not
    loaded; models with neither rows nor a params file are skipped with a warning."""
    from hjax import data, params_io, plotting
    from hjax.models import irm_mlp
    from hjax.results import read_jsonl

    dirs = plotting.expand_dirs(f.input_dirs)
    found = 0
    for d in dirs:
        path = os.path.join(d, "results.jsonl")
        if not os.path.isfile(path):
            continue
        missing = []
        for rec in read_jsonl(path):
            if rec.get("status") != "ok" or not rec.get("params_file"):
                continue
            if methods_given and rec["method"] not in f.methods:
                continue
            found += 1
            info = data.dataset_info(rec["dataset"])
            key = (info.name, rec["method"], rec["restart"], rec["data_seed"])
            old = {row["delta"]: row for row in previous.get(key, [])}
            if all(delta in old for delta in deltas):
                yield (rec["method"], rec["restart"], rec["data_seed"], None, None, None,
                       info, [old[delta] for delta in deltas])
                continue
            params_path = os.path.join(d, rec["params_file"])
            if not os.path.isfile(params_path):
                missing.append(rec["restart"])
                continue
            params = params_io.load_params(params_path)
            info = data.dataset_info(rec["dataset"])
            options = {"split": rec["split"]} if rec.get("split") else {}
            envs = data.make_environments(rec["dataset"], seed=rec["data_seed"], mnist=mnist,
                                          **options)
            yield (rec["method"], rec["restart"], rec["data_seed"],
                   irm_mlp(rec["hparams"]["hidden_dim"]), params, envs, info, None)
        if missing:
            print(f"warning: {d}: no params file and no earlier rows for restart(s) "
                  f"{','.join(map(str, missing))} (params are not committed; rerun run.py "
                  f"--save_params to measure them); skipped", file=sys.stderr, flush=True)
    if not found:
        raise UsageError(f"--input_dirs={','.join(f.input_dirs)!r}: no saved params found "
                         f"(run experiments/run.py with --save_params)")


def run(f, methods_given: bool = True) -> list[dict]:
    deltas = validate(f)
    out_dir = ensure_writable_dir(f.output_dir)

    import jax

    from hjax import data, plotting, transferability
    from hjax.results import write_atomic, write_jsonl

    try:
        mnist = data.fake_mnist() if f.fake_data else data.load_mnist()
    except data.MnistUnavailableError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    settings = measure_settings(f)
    previous = previous_rows(out_dir, settings) if f.input_dirs and f.reuse else {}
    models = (saved_models(f, mnist, methods_given, previous, deltas) if f.input_dirs
              else trained_models(f, mnist))
    out_path = os.path.join(out_dir, "transferability.jsonl")
    rows, done = [], set()
    for method, r, seed, model, params, envs, info, old_rows in models:
        if old_rows is not None:
            print(f"{method} restart {r}: kept its {len(old_rows)} earlier rows", flush=True)
            new_rows = old_rows
        else:
            key = jax.random.fold_in(jax.random.key(f.seed + 1), r)
            new_rows = []
            for row in transferability.evaluate_model(
                    model, params, envs, info, deltas, key, num_restarts=f.ascent_restarts,
                    num_steps=f.ascent_steps, lr=f.ascent_lr):
                new_rows.append({"method": method, "restart": r, "data_seed": seed,
                                 "dataset": info.name, **row, "settings": settings})
                print(f"  delta {row['delta']:g}: measure {row['measure']:.4g}, bound "
                      f"{row['bound']:.4g}, bound+offset {row['corrected_bound']:.4g}, "
                      f"worst-head test acc {row['worst_target_accuracy']:.4f}", flush=True)
        rows.extend(new_rows)
        done.add((info.name, method, r, seed))
        # Until the run ends, earlier rows not yet passed are kept too: their params may be
        # gone, so an interrupted run must not drop them.
        pending = [row for k, old in previous.items() if k not in done for row in old]
        write_jsonl(out_path, rows + pending)
    if not rows and f.input_dirs:
        raise UsageError(f"--input_dirs={','.join(f.input_dirs)!r}: none of the saved models "
                         f"has its params file or earlier rows in {out_path}")
    write_jsonl(out_path, rows)

    table = plotting.transfer_table(rows)
    write_atomic(os.path.join(out_dir, "transferability.md"),
                 "# Transfer measure, training domains -> test domain (head ball of radius "
                 "δ)\n\n" + table + "\nMean ± std over restarts. `bound` = δ‖Δg‖ + δ²/2 "
                 "‖ΔH‖₂ is not an upper bound in general; `bound + offset` is, to second "
                 "order (see hjax.diagnostics.transfer_measure). h* is the trained "
                 "head after the last update (run.py reads its accuracies just before "
                 "it).\n")
    plotting.plot_transfer(rows, os.path.join(out_dir, "transferability.png"),
                           size=(f.width, f.height), dpi=f.dpi)
    print("\n" + table, flush=True)
    return rows


def main(argv):
    run_main(FLAGS, argv, lambda: run(FLAGS, methods_given=FLAGS["methods"].present > 0),
             interrupted="finished models are in transferability.jsonl")


if __name__ == "__main__":
    main(sys.argv)
