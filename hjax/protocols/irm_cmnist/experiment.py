"""The full-batch experiment driver behind ``python -m hjax.cli.colored_mnist``: a config in,
results files out (``results.jsonl`` rewritten atomically after each restart, ``summary.md``),
resuming the finished restarts of an interrupted run with the same settings."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import jax

from hjax import data
from hjax.data import irm_draws
from hjax.io import params_io
from hjax.protocols import sharding
from hjax.protocols.irm_cmnist import batched, identity, train
from hjax.errors import ConfigError, check_choice, check_positive, ensure_writable_dir
from hjax.models import MATMULS, irm_mlp
from hjax.protocols.irm_cmnist.train import METHODS
from hjax.io.provenance import provenance
from hjax.io.results import summary_table, write_atomic, write_jsonl
from hjax.io import run_identity
from hjax.io.run_identity import stamp

_LOG = logging.getLogger("hjax")
# Which images form the test domain, recorded with every restart: since the test-domain fix, the scripts'
# MNIST train[50000:60000] in every restart, and a gray twin with its own label noise. Records
# without it (an earlier random 10,000 of the 60,000 per restart) or with another value (the
# same images, gray labels shared with the colored test domain) are not resumed.
TEST_DOMAIN = "mnist_train[50000:60000], gray relabeled"
DATASETS = ("colored_mnist", "colored_mnist_label_shift")
SPLITS = ("intended", "reference")
CURVATURES = ("closed_form", "autodiff")
PROGRESS_MODES = ("auto", "on", "off")
HPARAM_FIELDS = ("lr", "l2_weight", "penalty_weight", "anneal_iters", "hidden_dim",
                "num_probes", "alpha", "beta", "curvature")


def data_seed(seed: int, restart: int) -> int:
    """Data are re-drawn for every restart: restart r of base seed s uses s * 10000 + r."""
    return seed * 10_000 + restart


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One run of the protocol; field names are the command line's flag names, and None
    hyperparameters take the protocol's defaults (:data:`train.DEFAULT_HPARAMS`)."""
    dataset: str = "colored_mnist"
    method: str = "hutchinson"
    restarts: int = 10
    steps: int = 501
    seed: int = 0
    label_shift_split: str = "intended"
    num_devices: int | None = None
    output_dir: str | None = None
    log_every: int = 100
    track_alignment_every: int = 0
    save_params: bool = False
    fake_data: bool = False
    inject_nan_at: int | None = None       # testing: make the loss NaN at this step
    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    lr: float | None = None
    l2_weight: float | None = None
    penalty_weight: float | None = None
    anneal_iters: int | None = None
    hidden_dim: int | None = None
    num_probes: int | None = None
    alpha: float | None = None
    beta: float | None = None
    curvature: str | None = None
    # "tf32": the featurizer's matmuls in emulated TF32 (hjax.models.tf32), to test what the
    # published runs' GPU arithmetic does; recorded as the record's "matmul" (absent = fp32).
    matmul: str = "fp32"
    # Not part of the run's identity: what to do with an output folder holding other results
    # (move them aside instead of refusing), and whether to show a progress line.
    overwrite: bool = False
    progress: str = "auto"
    # How restarts run: "vmap" (several restarts as one compiled program, batched.py),
    # "loop" (one after another, train.run_restart), "auto" (vmap; on a CPU batched.CPU_DEFAULT).
    restart_batching: str = "auto"
    restarts_per_program: int | None = None   # vmap: at most this many per program (None: all)
    checkpoint_every: int = 100               # vmap: checkpoint the group every N steps (0: off)


class Callbacks:
    """Where a run reports: ``log`` (progress lines and tables), ``warn`` (notes), ``row``
    (a logged history row), ``step(restart, step)`` and ``restart_done()``. By default log and
    warn go to the ``hjax`` logger and rows to ``log``."""

    def __init__(self, log: Callable[[str], None] = _LOG.info,
                 warn: Callable[[str], None] = _LOG.warning,
                 row: Callable[[dict], None] | None = None,
                 step: Callable[[int, int], None] | None = None,
                 restart_done: Callable[[], None] | None = None):
        self.log, self.warn = log, warn
        self.row = row or (lambda row: log(format_row(row)))
        self.step = step or (lambda restart, step: None)
        self.restart_done = restart_done or (lambda: None)


def validate(config) -> None:
    check_choice("dataset", config.dataset, DATASETS)
    check_choice("method", config.method, METHODS)
    check_positive("restarts", config.restarts)
    check_positive("steps", config.steps)
    check_positive("log_every", config.log_every)
    track = getattr(config, "track_alignment_every", 0)
    if track is None or track < 0:
        raise ConfigError(f"--track_alignment_every={track} must be >= 0 (0 = off)")
    if config.num_probes is not None:
        check_positive("num_probes", config.num_probes)
    if config.hidden_dim is not None:
        check_positive("hidden_dim", config.hidden_dim)
    check_choice("label_shift_split", config.label_shift_split, SPLITS)
    if config.curvature is not None:
        check_choice("curvature", config.curvature, CURVATURES)
    check_choice("matmul", getattr(config, "matmul", "fp32"), MATMULS)
    check_choice("progress", getattr(config, "progress", "auto"), PROGRESS_MODES)
    check_choice("restart_batching", getattr(config, "restart_batching", "auto"),
                 batched.RESTART_BATCHINGS)
    if getattr(config, "restarts_per_program", None) is not None:
        check_positive("restarts_per_program", config.restarts_per_program)
    if getattr(config, "checkpoint_every", 0) < 0:
        raise ConfigError(f"--checkpoint_every={config.checkpoint_every} must be >= 0 (0 = off)")
    if config.lr is not None and not config.lr > 0:
        raise ConfigError(f"--lr={config.lr} must be > 0")
    if config.num_devices is not None:
        available = len(jax.devices())
        if not 1 <= config.num_devices <= available:
            raise ConfigError(f"--num_devices={config.num_devices} is not available; "
                             f"choose 1..{available}")


def prepare_output_dir(config) -> str:
    out = config.output_dir or os.path.join("runs", f"{config.dataset}-{config.method}-{config.seed}")
    return ensure_writable_dir(out)


TABLE_HEADER = (f"{'step':>6} {'train nll':>10} {'train acc':>10} {'train penalty':>14} "
                f"{'test acc':>10}{' gray acc':>10}")


def format_row(row) -> str:
    gray = "" if row["gray_test_acc"] is None else f"{row['gray_test_acc']:>10.4f}"
    return (f"{row['step']:>6d} {row['train_nll']:>10.5f} {row['train_acc']:>10.4f} "
            f"{row['penalty']:>14.6g} {row['test_acc']:>10.4f}{gray}")


def resumable_records(path: str, config, hp: dict, split, warn=_LOG.warning) -> list[dict]:
    """Finished restarts of an earlier, interrupted run with the same run identity, in order.

    A folder holding results of other settings (another run identity, or records written
    before run identities) is never mixed in and never deleted: it raises
    :class:`hjax.io.run_identity.IdentityClash` (exit 2), or with ``config.overwrite`` its
    files are moved aside (``hjax.protocols.irm_cmnist.identity``).
    """
    folder, run = os.path.dirname(path) or ".", run_identity_of(config, hp, split)
    overwrite = getattr(config, "overwrite", False)
    if overwrite and jax.process_index() != 0:
        # Only the writing process moves files aside; the others start afresh with it.
        try:
            return identity.resumable_records(folder, run, config.restarts, False, warn)
        except run_identity.IdentityClash:
            return []
    return identity.resumable_records(folder, run, config.restarts, overwrite, warn)


def run_identity_of(config, hp: dict, split) -> dict:
    return identity.config_identity(config, hp, split, TEST_DOMAIN)


def run_experiment(config: ExperimentConfig, callbacks: Callbacks | None = None) -> list[dict]:
    """Runs (or resumes) every restart; returns the records. Raises ConfigError for a bad
    setting and MnistUnavailableError when real MNIST cannot be had."""
    cb = callbacks or Callbacks()
    validate(config)
    out_dir = prepare_output_dir(config)
    if config.distributed:
        jax.distributed.initialize(config.coordinator_address, config.num_processes,
                                   config.process_id)
    hp = train.method_hparams(config.method, **{k: getattr(config, k) for k in HPARAM_FIELDS})
    options = ({"split": config.label_shift_split}
               if config.dataset == "colored_mnist_label_shift" else {})
    info = data.dataset_info(config.dataset)
    mesh = sharding.make_mesh(config.num_devices)
    matmul = getattr(config, "matmul", "fp32")
    model = irm_mlp(hp["hidden_dim"], matmul)
    writer = jax.process_index() == 0
    cb.log(f"{config.dataset} / {config.method}: {config.restarts} restarts x {config.steps} steps "
           f"on {mesh.devices.size} {jax.devices()[0].platform} device(s) -> {out_dir}")

    # The identity is checked before MNIST is loaded: a folder of other results is refused
    # at once, and a finished run is reported without needing the data.
    records = resumable_records(os.path.join(out_dir, "results.jsonl"), config, hp,
                                options.get("split"), cb.warn)
    run_stamp = stamp(run_identity_of(config, hp, options.get("split")))
    if len(records) >= config.restarts:
        cb.log(f"all {config.restarts} restarts are already in results.jsonl (run "
               f"{run_stamp['run_id']}); nothing to train")
    elif records:
        cb.log(f"resuming: restarts 0..{len(records) - 1} are already in results.jsonl")
    mnist = None
    if len(records) < config.restarts:
        mnist = data.fake_mnist() if config.fake_data else data.load_mnist()
    for r, rec in _run_restarts(config, cb, model, mnist, info, hp, options, mesh, out_dir,
                                writer, first=len(records)):
        cb.restart_done()
        if rec["status"] == "diverged":
            cb.warn(f"restart {r} diverged: non-finite loss at step {rec['diverged_step']}; "
                    f"going on with the next restart")
        records.append({"dataset": config.dataset, "method": config.method, "restart": r,
                        "seed": config.seed, "data_seed": data_seed(config.seed, r),
                        "split": options.get("split"), "test_domain": TEST_DOMAIN,
                        "hparams": hp, **({"matmul": matmul} if matmul != "fp32" else {}),
                        **rec, **run_stamp, "provenance": provenance(),
                        **({"fake_data": True} if config.fake_data else {})})
        if writer:
            write_jsonl(os.path.join(out_dir, "results.jsonl"), records)

    split = f" ({options['split']} split)" if options else ""
    table = summary_table({config.method: records})
    summary = (f"# {config.dataset}{split} / {config.method}\n\n{table}\n"
               f"Accuracies at step {config.steps - 1}, mean ± std over restarts "
               f"(seed {config.seed}).\n")
    if writer:
        write_atomic(os.path.join(out_dir, "summary.md"), summary)
    cb.log("\n" + table)
    return records


def _run_restarts(config, cb, model, mnist, info, hp, options, mesh, out_dir, writer, first):
    """Yields (r, record) for restarts first..restarts-1 in order: one at a time
    (``loop``) or as groups of restarts in one compiled program (``vmap``)."""
    if first >= config.restarts:      # all done: nothing to train (MNIST was not loaded)
        return
    save = getattr(config, "save_params", False)
    track_every = getattr(config, "track_alignment_every", 0)
    mode = batched.resolve_batching(getattr(config, "restart_batching", "auto"))
    key = jax.random.key(config.seed)

    def save_params(r, params):
        if writer:        # written before the record that names it
            params_io.save_params(os.path.join(out_dir, params_io.params_filename(r)), params)

    def finish(r, rec):
        if rec["status"] == "ok" and save:
            rec["params_file"] = params_io.params_filename(r)
        return r, rec

    if mode == "loop":
        for r in range(first, config.restarts):
            envs = data.make_environments(config.dataset, seed=data_seed(config.seed, r),
                                          mnist=mnist, **options)
            cb.log(f"restart {r}\n{TABLE_HEADER}")
            rec = train.run_restart(model, envs, info, config.method, hp,
                                    key=jax.random.fold_in(key, r),
                                    steps=config.steps, mesh=mesh, log_every=config.log_every,
                                    on_step=lambda t, r=r: cb.step(r, t), on_log=cb.row,
                                    fault_step=config.inject_nan_at, track_every=track_every,
                                    on_end=(lambda p, r=r: save_params(r, p)) if save else None)
            rec["restart_batching"] = "loop"
            yield finish(r, rec)
        return

    images_u8 = irm_draws.device_images(mnist.train_images)
    ckpt_path = os.path.join(out_dir, identity.CHECKPOINT)
    run_id = stamp(run_identity_of(config, hp, options.get("split")))["run_id"]
    # Only a single process checkpoints (a multi-host run's other processes would not see
    # process 0's file); there, a killed run resumes from its finished restarts only.
    every = getattr(config, "checkpoint_every", 100) if jax.process_count() == 1 else 0
    progress = getattr(cb, "progress", cb.log)    # a caller's one-line progress channel
    for group in batched.groups(range(first, config.restarts),
                                getattr(config, "restarts_per_program", None)):
        label = f"{config.method}, restarts {group[0]}..{group[-1]}: "
        group_data = batched.prepare_group(
            mnist, config.dataset, [data_seed(config.seed, r) for r in group], info, mesh,
            options.get("split"), images_u8)
        checkpoint = None
        if every:
            # Resumed only by the same run (identity), the same restarts and device count.
            checkpoint = batched.GroupCheckpoint(ckpt_path, every, {
                "run_id": run_id, "restarts": group, "num_devices": mesh.devices.size})
            cb.log(f"{label}checkpointed every {every} steps to {ckpt_path}: a killed run "
                   f"loses at most the steps since the last one")
        recs = batched.run_group(
            model, group_data, info, config.method, hp,
            keys=[jax.random.fold_in(key, r) for r in group], steps=config.steps, mesh=mesh,
            log_every=config.log_every,
            on_step=lambda t, group=group: [cb.step(r, t) for r in group],
            fault_step=config.inject_nan_at, track_every=track_every,
            on_end=(lambda i, p, group=group: save_params(group[i], p)) if save else None,
            checkpoint=checkpoint, log=progress, label=label)
        del group_data
        for r, rec in zip(group, recs):
            cb.log(f"restart {r}\n{TABLE_HEADER}")
            for row in rec["history"]:
                cb.row(row)
            yield finish(r, rec)
        if checkpoint is not None:        # the group's records are written
            checkpoint.remove()
