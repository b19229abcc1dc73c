"""One DomainBed training job: config in, ``results.jsonl`` + ``done`` out, resumable.

Steps run 0 .. steps-1; at every step with ``step % checkpoint_freq == 0`` and at the last
one, every environment's in and out split is evaluated, one JSON line is appended to
``<output_dir>/results.jsonl`` (rewritten atomically) and a checkpoint is written. A killed
job restarted with the same config resumes from its last checkpoint and ends with the same
results as an uninterrupted one (timings aside). ``done`` marks a finished job.
"""

from __future__ import annotations

import logging
import dataclasses
import math
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hjax.errors import ConfigError, ensure_writable_dir
from hjax.protocols.domainbed import checkpoint
from hjax.protocols.domainbed.hparams import ALGORITHMS
from hjax.protocols.domainbed.data import (HOLDOUT_FRACTION, TrainArrays, split_environments,
                                  stack_train)
from hjax.protocols.domainbed.hparams import make_hparams, seed_hash
from hjax.data.images import (IMAGE_DATASET_NAMES, IMAGE_DATASETS, image_data_dir,
                              load_image_dataset, split_in_out)
from hjax.models import mnist_cnn_model, resnet_model
from hjax.models.torchvision_weights import pretrained_resnet_model
from hjax.protocols.domainbed.trainer import (EvalSplit, base_key, init_state,
                                              make_batch_evaluator, make_canvas_evaluator,
                                              make_device_augment_step, make_evaluator,
                                              make_host_batch_step, make_train_step,
                                              to_eval_split)
from hjax.io.provenance import provenance
from hjax.io.results import write_jsonl
from hjax.io.run_identity import stamp
from hjax.protocols.domainbed import identity as identity_lib

_LOG = logging.getLogger("hjax")

MNIST_DATASETS = ("domainbed_colored_mnist", "rotated_mnist")
DATASETS = MNIST_DATASETS + IMAGE_DATASET_NAMES
ARCHS = ("resnet18", "resnet50")
DTYPES = ("float32", "bfloat16")
# Settings of the image datasets only (absent from an MNIST job's identity and records).
_IMAGE_FIELDS = ("arch", "image_size", "dtype", "pretrained", "augment")
AUGMENT_ON = ("device", "host")
DONE_NAME = identity_lib.DONE_NAME
RESULTS_NAME = identity_lib.RESULTS_NAME


@dataclasses.dataclass(frozen=True)
class RunConfig:
    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    output_dir: str
    hparams_seed: int = 0
    trial_seed: int = 0
    steps: int = 5001
    checkpoint_freq: int = 100
    hparams_overrides: dict = dataclasses.field(default_factory=dict)
    holdout_fraction: float = HOLDOUT_FRACTION
    width_multiplier: float = 1.0
    fake_data: bool = False
    eval_chunk: int = 1024
    stop_after_step: int | None = None     # testing: stop (as if killed) after this step
    # Image datasets (hjax.data.images): where the data are ($HJAX_DATA_DIR or
    # ~/.cache/hjax when None), the ResNet, the input size, the compute dtype, torchvision
    # weights to start from (.pth/.safetensors/.npz; None = random init) and the number of
    # input-pipeline worker processes (0 = in this process).
    data_dir: str | None = None
    arch: str = "resnet50"
    image_size: int = 224
    dtype: str = "float32"
    pretrained: str | None = None
    workers: int = 2
    # Image augmentation on the "device" (default) or by PIL on the "host" (the reference;
    # other draws, so part of the identity); decode once into a memory-mapped cache under
    # data_dir (hjax.data.images.decoded_cache; same pixels, so not part of it).
    augment: str = "device"
    decoded_cache: bool = True
    # Not part of the job's identity: move another job's files aside instead of refusing
    # the folder, and whether to show a progress line (the command line's --progress).
    overwrite: bool = False
    progress: str = "off"

    @property
    def is_image_dataset(self) -> bool:
        return self.dataset in IMAGE_DATASET_NAMES

    def identity(self) -> dict:
        """The job's settings that change its numbers (``args`` of every record; with the
        hparams and the data, the job's run identity: hjax.protocols.domainbed.identity)."""
        d = dataclasses.asdict(self)
        for key in ("output_dir", "stop_after_step", "eval_chunk", "data_dir", "workers",
                    "decoded_cache", "overwrite", "progress"):
            d.pop(key)
        if not self.is_image_dataset:
            for key in _IMAGE_FIELDS:
                d.pop(key)
        d["test_envs"] = list(self.test_envs)
        return d


def validate(config: RunConfig, num_envs: int) -> None:
    if config.dataset not in DATASETS:
        raise ConfigError(f"--dataset={config.dataset!r} is not valid; choose one of: "
                         f"{', '.join(DATASETS)}")
    if config.algorithm not in ALGORITHMS:
        raise ConfigError(f"--algorithm={config.algorithm!r} is not valid; choose one of: "
                         f"{', '.join(ALGORITHMS)}")
    bad = [e for e in config.test_envs if not 0 <= e < num_envs]
    if bad or len(set(config.test_envs)) != len(config.test_envs):
        raise ConfigError(f"--test_envs={','.join(map(str, config.test_envs))} must be distinct "
                         f"environment indices in 0..{num_envs - 1}")
    if num_envs - len(config.test_envs) < 1:
        raise ConfigError(f"--test_envs={','.join(map(str, config.test_envs))} leaves no "
                         "training environment")
    for name in ("steps", "checkpoint_freq"):
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name}={getattr(config, name)} must be a positive integer")
    if config.hparams_seed < 0 or config.trial_seed < 0:
        raise ConfigError("--hparams_seed and --trial_seed must be >= 0")
    if not 0 < config.holdout_fraction < 1:
        raise ConfigError(f"--holdout_fraction={config.holdout_fraction} must be in (0, 1)")
    if not config.width_multiplier > 0:
        raise ConfigError(f"--width_multiplier={config.width_multiplier} must be > 0")
    if config.is_image_dataset:
        if config.arch not in ARCHS:
            raise ConfigError(f"--arch={config.arch!r} is not valid; choose one of: "
                              f"{', '.join(ARCHS)}")
        if config.dtype not in DTYPES:
            raise ConfigError(f"--dtype={config.dtype!r} is not valid; choose one of: "
                              f"{', '.join(DTYPES)}")
        if config.image_size < 32:
            raise ConfigError(f"--image_size={config.image_size} must be >= 32")
        if config.workers < 0:
            raise ConfigError(f"--workers={config.workers} must be >= 0")
        if config.augment not in AUGMENT_ON:
            raise ConfigError(f"--augment={config.augment!r} is not valid; choose one of: "
                              f"{', '.join(AUGMENT_ON)}")
        if config.fake_data:
            raise ConfigError("--fake_data is for the MNIST datasets; image datasets read "
                              "--data_dir")


def resolve_hparams(config: RunConfig) -> dict:
    try:
        hp = make_hparams(config.algorithm, config.dataset, config.hparams_seed,
                          config.trial_seed, config.hparams_overrides)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if int(hp["batch_size"]) < 2 or not hp["lr"] > 0:
        raise ConfigError(f"batch_size must be >= 2 and lr > 0 (got {hp['batch_size']}, "
                         f"{hp['lr']})")
    return hp


def prepare_output_dir(path: str) -> None:
    ensure_writable_dir(path)


def load_environments(config: RunConfig):
    from hjax.data import fake_mnist, make_environments
    mnist = fake_mnist() if config.fake_data else None
    # Data are drawn from the trial seed: every algorithm and hparam draw of a trial sees the
    # same environments and the same in/out splits.
    return make_environments(config.dataset, config.trial_seed, mnist=mnist)


# Algorithms whose penalty is identically 0 with one training environment (nothing to align):
# a leave-one-domain-out pair run of a 3-env dataset trains them as plain ERM.
ZERO_WITH_ONE_ENV = ("vrex", "coral", "fishr", "iga", "groupdro", "hgp", "hutchinson",
                     "exact_diag")


def inactive_penalty_note(algorithm: str, hp: dict, steps: int, num_train_envs: int
                          ) -> str | None:
    """Why this job's penalty never acts as configured (DomainBed runs such jobs silently),
    or None. Logged at the start and stored as ``penalty_note`` in every record."""
    if num_train_envs < 2 and algorithm in ZERO_WITH_ONE_ENV:
        return (f"{algorithm} with one training environment: its penalty is identically 0, "
                "so this job trains ERM")
    if algorithm == "fishr" and hp["fishr_penalty_anneal_iters"] >= steps:
        return (f"fishr_penalty_anneal_iters={hp['fishr_penalty_anneal_iters']} >= steps="
                f"{steps}: the penalty weight stays 0, so this job trains ERM")
    for name in ("irm", "vrex"):
        if algorithm == name and hp[f"{name}_penalty_anneal_iters"] >= steps:
            return (f"{name}_penalty_anneal_iters={hp[f'{name}_penalty_anneal_iters']} >= "
                    f"steps={steps}: {name}_lambda={hp[f'{name}_lambda']:g} is never used "
                    "(the penalty weight stays 1)")
    return None


def mean_logs(window: list[dict]) -> dict:
    return {k: float(np.mean([w[k] for w in window])) for k in window[0]} if window else {}


def first_non_finite(logs: dict) -> str | None:
    """The name of a non-finite logged value (the loss first), or None."""
    for k in sorted(logs, key=lambda k: k != "loss"):
        if not math.isfinite(logs[k]):
            return k
    return None


class JobData(NamedTuple):
    """What one job trains and evaluates on, on the device."""
    num_envs: int
    train_idx: list[int]
    train: TrainArrays
    eval_ins: list[EvalSplit]
    eval_outs: list[EvalSplit]
    steps_per_epoch: float


class ImageJobData(NamedTuple):
    """What one image-dataset job trains and evaluates on: file lists, decoded by the input
    pipeline (hjax.data.images.pipeline) as the job runs."""
    num_envs: int
    train_idx: list[int]
    train_domains: list[tuple[np.ndarray, np.ndarray]]     # in splits of the training envs
    eval_ins: list[tuple[np.ndarray, np.ndarray]]          # (paths, labels) of every env
    eval_outs: list[tuple[np.ndarray, np.ndarray]]
    steps_per_epoch: float
    example_images: np.ndarray                             # [2, S, S, 3] zeros, for init
    dataset: object = None                                 # the ImageDataset scanned
    data_dir: object = None                                # where it was found


def load_image_job_data(config: RunConfig, batch_size: int,
                        log: Callable[[str], None] = _LOG.warning) -> ImageJobData:
    # Missing domain folders are an error; a total other than the published one is only
    # reported, so that subsets and generated trees (tests, smoke runs) still train.
    dataset = load_image_dataset(config.dataset, config.data_dir, check_counts=False)
    expected = IMAGE_DATASETS[config.dataset].expected_totals
    if len(dataset) not in expected:
        log(f"note: {config.dataset}: {len(dataset):,} images found "
            f"({', '.join(f'{d.name} {len(d.labels):,}' for d in dataset.domains)}), not the "
            f"published {' or '.join(f'{n:,}' for n in expected)}: results are not comparable "
            "with published numbers")
    ins, outs = [], []
    for i, (paths, labels) in enumerate(dataset.environments()):
        # The MNIST path's rule: a permutation seeded by (trial_seed, env index).
        in_idx, out_idx = split_in_out(len(labels), config.holdout_fraction,
                                       (config.trial_seed, i))
        ins.append((paths[in_idx], labels[in_idx]))
        outs.append((paths[out_idx], labels[out_idx]))
    train_idx = [i for i in range(len(ins)) if i not in config.test_envs]
    size = config.image_size
    return ImageJobData(len(ins), train_idx, [ins[i] for i in train_idx], ins, outs,
                        min(len(ins[i][1]) for i in train_idx) / batch_size,
                        np.zeros((2, size, size, 3), np.float32), dataset,
                        image_data_dir(config.data_dir))


def example_images(data) -> np.ndarray:
    """Two images of the job's input shape, for model init."""
    if isinstance(data, ImageJobData):
        return data.example_images
    return data.train.images[0, :2]


def load_job_data(config: RunConfig, batch_size: int,
                  log: Callable[[str], None] = _LOG.warning) -> JobData:
    if config.is_image_dataset:
        return load_image_job_data(config, batch_size, log)
    envs = load_environments(config)
    ins, outs = split_environments(envs, config.trial_seed, config.holdout_fraction)
    train_idx = [i for i in range(len(envs)) if i not in config.test_envs]
    train = stack_train([ins[i] for i in train_idx])
    chunk = min(config.eval_chunk, max(len(s.labels) for s in ins + outs))
    return JobData(len(envs), train_idx, train, [to_eval_split(s, chunk) for s in ins],
                   [to_eval_split(s, chunk) for s in outs],
                   min(len(ins[i].labels) for i in train_idx) / batch_size)


def start_job(config: RunConfig, log: Callable[[str], None]):
    """Validates the config and prepares its directory: (hp, None) to train, or (hp, records)
    of a job that is already done."""
    from hjax.data import dataset_info
    info = dataset_info(config.dataset) if config.dataset in DATASETS else None
    validate(config, len(info.env_names) if info else 0)
    hp = resolve_hparams(config)
    prepare_output_dir(config.output_dir)
    # Done only when the done marker is this job's; another job's files are refused (or
    # moved aside with --overwrite), never mixed in.
    if identity_lib.check_folder(config.output_dir, job_identity(config, hp),
                                 config.overwrite, log):
        log(f"{config.output_dir}: already done")
        from hjax.io.results import read_jsonl
        return hp, read_jsonl(os.path.join(config.output_dir, RESULTS_NAME))
    return hp, None


def make_model(config: RunConfig, hp: dict | None = None):
    from hjax.data import dataset_info
    num_classes = dataset_info(config.dataset).num_classes
    if not config.is_image_dataset:
        return mnist_cnn_model(num_classes, config.width_multiplier)
    dropout = float((hp or {}).get("resnet_dropout", 0.0))
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    if config.pretrained:
        return pretrained_resnet_model(config.pretrained, config.arch, num_classes,
                                       dropout=dropout, dtype=dtype)
    return resnet_model(config.arch, num_classes, dropout=dropout, dtype=dtype)


def initial_state(config: RunConfig, hp: dict, model, data: JobData, log):
    """(state, records): fresh, or restored from the job's checkpoint (identity checked)."""
    init_key = jax.random.key(seed_hash("domainbed-init", config.trial_seed))
    state = init_state(config.algorithm, model, hp, example_images(data),
                       len(data.train_idx), init_key)
    restored = checkpoint.load(config.output_dir, state)
    if restored is None:
        return state, []
    state, saved_identity, records = restored
    state = jax.tree_util.tree_map(jnp.asarray, state)
    if not identity_lib.check_checkpoint(config.output_dir, saved_identity,
                                         job_identity(config, hp), config.overwrite, log):
        return init_state(config.algorithm, model, hp, example_images(data),
                          len(data.train_idx), init_key), []
    write_jsonl(os.path.join(config.output_dir, RESULTS_NAME), records)
    log(f"{config.output_dir}: resuming at step {int(state.step)}")
    return state, records


def job_identity(config: RunConfig, hp: dict) -> dict:
    """The job's run identity (hjax.protocols.domainbed.identity), also the checkpoint's."""
    return identity_lib.job_identity(config, hp)


def checkpoint_record(config: RunConfig, hp: dict, data: JobData, step: int, window: list,
                      step_time: float, accuracy) -> dict:
    """One results line; ``accuracy(split_kind, env) -> float`` evaluates the current params."""
    record = {"step": step, "epoch": step / data.steps_per_epoch, **mean_logs(window)}
    for i in range(data.num_envs):
        record[f"env{i}_in_acc"] = accuracy("in", i)
        record[f"env{i}_out_acc"] = accuracy("out", i)
    record.update(step_time=step_time, hparams=hp, args=config.identity())
    note = inactive_penalty_note(config.algorithm, hp, config.steps, len(data.train_idx))
    if note:
        record["penalty_note"] = note
    record.update(stamp(job_identity(config, hp)), provenance=provenance())
    return record


def log_penalty_note(config: RunConfig, hp: dict, data: JobData, log) -> None:
    note = inactive_penalty_note(config.algorithm, hp, config.steps, len(data.train_idx))
    if note:
        log(f"note: {os.path.basename(os.path.normpath(config.output_dir))}: {note}")


def save_checkpoint(config: RunConfig, hp: dict, state, records: list[dict], log) -> None:
    write_jsonl(os.path.join(config.output_dir, RESULTS_NAME), records)
    checkpoint.save(config.output_dir, state, job_identity(config, hp), records)
    record = records[-1]
    log(f"step {record['step']}: " + " ".join(
        f"{k}={record[k]:.4g}" for k in record if k.endswith("_acc") or k == "loss"))


def is_checkpoint_step(config: RunConfig, step: int) -> bool:
    return step % config.checkpoint_freq == 0 or step == config.steps - 1


def mark_done(config: RunConfig, hp: dict, diverged_step: int | None = None) -> None:
    """The done marker (JSON: status, run_id, identity); a diverged job is done too
    (re-running it would diverge again)."""
    identity_lib.write_done(config.output_dir, job_identity(config, hp), diverged_step)


def report_divergence(config: RunConfig, hp: dict, step: int, name: str, log) -> None:
    log(f"{config.output_dir}: non-finite {name} at step {step}; job stopped and marked "
        f"diverged (results.jsonl keeps the checkpoints before it)")
    mark_done(config, hp, diverged_step=step)


def _image_steps(config: RunConfig, hp: dict, model, data: ImageJobData, start: int):
    """(next_step() -> (state -> (state, logs)), evaluate(params, kind, env) -> accuracy,
    close(), place(state) -> state) for an image job: batches from the host pipeline,
    deterministic per step, augmented on the device (or, ``augment="host"``, by PIL)."""
    if config.augment == "host":
        return _host_augment_steps(config, hp, model, data, start)
    from hjax.data.images import decoded_cache, pipeline, prefetch
    from hjax.data.images.decode import canvas_size
    batch_size = int(hp["batch_size"])
    canvas = canvas_size(config.image_size)
    seed = seed_hash("domainbed-images", config.trial_seed)
    cache = (decoded_cache.open_or_build(data.dataset, data.data_dir, canvas, config.workers)
             if config.decoded_cache and data.dataset is not None else None)
    if cache is not None:       # the decoded cache: no decoding left, gathers in-process
        train = pipeline.cached_sources(cache, data.dataset, data.train_domains)
        splits = {k: pipeline.cached_sources(cache, data.dataset, v)
                  for k, v in (("in", data.eval_ins), ("out", data.eval_outs))}
        eval_workers = 0
    else:
        train = [paths for paths, _ in data.train_domains]
        splits = {k: [paths for paths, _ in v] for k, v in (("in", data.eval_ins),
                                                             ("out", data.eval_outs))}
        eval_workers = config.workers
    labels = {"in": [y for _, y in data.eval_ins], "out": [y for _, y in data.eval_outs]}
    sharding = prefetch.batch_sharding(batch_size)
    batches = prefetch.prefetch_to_device(pipeline.train_canvases(
        [(images, y) for images, (_, y) in zip(train, data.train_domains)], batch_size,
        canvas, seed=seed, start_step=start, workers=config.workers), sharding=sharding)
    step_fn = make_device_augment_step(config.algorithm, model, hp, base_key(config.trial_seed),
                                       seed, config.image_size)
    evaluate_batches = make_canvas_evaluator(model, config.image_size)

    def step(state):
        return step_fn(state, *next(batches))

    largest = max(len(y) for y in labels["in"] + labels["out"])
    eval_batch = min(config.eval_chunk, 128, -(-largest // 8) * 8)
    eval_sharding = prefetch.batch_sharding(eval_batch, axis=0)

    def evaluate(params, kind, i):
        with prefetch.prefetch_to_device(pipeline.eval_canvases(
                splits[kind][i], labels[kind][i], canvas, eval_batch, workers=eval_workers),
                sharding=eval_sharding) as eval_iter:
            return evaluate_batches(params, eval_iter)

    return step, evaluate, batches.close, lambda state: prefetch.replicated(state, sharding)


def _host_augment_steps(config: RunConfig, hp: dict, model, data: ImageJobData, start: int):
    """The PIL reference path: decode and augment on the host, float32 batches."""
    from hjax.data.images import pipeline as image_pipeline
    batch_size = int(hp["batch_size"])
    batches = image_pipeline.train_batches(
        data.train_domains, batch_size, config.image_size,
        seed=seed_hash("domainbed-images", config.trial_seed), start_step=start,
        augment=True, workers=config.workers)
    step_fn = make_host_batch_step(config.algorithm, model, hp, base_key(config.trial_seed))
    evaluate_batches = make_batch_evaluator(model)
    splits = {"in": data.eval_ins, "out": data.eval_outs}

    def step(state):
        images, labels = next(batches)
        return step_fn(state, images, labels)

    # One evaluation batch size for every split (one compiled program), no larger than the
    # largest split needs.
    largest = max(len(labels) for _, labels in data.eval_ins + data.eval_outs)
    eval_batch = min(config.eval_chunk, 128, -(-largest // 8) * 8)

    def evaluate(params, kind, i):
        paths, labels = splits[kind][i]
        with image_pipeline.eval_batches(paths, labels, config.image_size,
                                         eval_batch) as eval_iter:
            return evaluate_batches(params, eval_iter)

    return step, evaluate, batches.close, lambda state: state


def _array_steps(config: RunConfig, hp: dict, model, data: JobData):
    """The same for an MNIST job: the data are on the device, sampled in the step."""
    step_fn = make_train_step(config.algorithm, model, hp, base_key(config.trial_seed))
    evaluate_split = make_evaluator(model)
    splits = {"in": data.eval_ins, "out": data.eval_outs}
    return (lambda state: step_fn(state, data.train),
            lambda params, kind, i: evaluate_split(params, splits[kind][i]),
            lambda: None, lambda state: state)


def run(config: RunConfig, log: Callable[[str], None] = _LOG.info,
        progress=None) -> list[dict]:
    """Trains (or resumes, or skips a finished job); returns the results records.
    ``progress`` (hjax.cli.progress.Progress or None) hears of every step."""
    hp, finished = start_job(config, log)
    if finished is not None:
        return finished
    data = load_job_data(config, int(hp["batch_size"]), log)
    model = make_model(config, hp)
    state, records = initial_state(config, hp, model, data, log)
    log_penalty_note(config, hp, data, log)
    if config.is_image_dataset:
        train_step, evaluate, close, place = _image_steps(config, hp, model, data,
                                                          int(state.step))
    else:
        train_step, evaluate, close, place = _array_steps(config, hp, model, data)
    state = place(state)
    try:
        return _train(config, hp, data, state, records, train_step, evaluate, log, progress)
    finally:
        close()


def _start_progress(config, hp, data, start: int, progress) -> None:
    if progress is None:
        return
    per_step = int(hp["batch_size"]) * len(data.train_idx)
    unit = "images" if config.is_image_dataset else "examples"
    progress.header(f"{os.path.basename(os.path.normpath(config.output_dir))}: "
                    f"{config.dataset} / {config.algorithm}, test envs "
                    f"{list(config.test_envs)}, steps {start}..{config.steps - 1}, "
                    f"{per_step} {unit} per step (ETA after compilation)")
    progress.begin(config.steps, per_step=per_step, unit=unit)


def _train(config, hp, data, state, records, train_step, evaluate, log,
           progress=None) -> list[dict]:
    window, window_start = [], time.time()
    _start_progress(config, hp, data, int(state.step), progress)
    for step in range(int(state.step), config.steps):
        state, logs = train_step(state)
        logs = {k: float(v) for k, v in jax.device_get(logs).items()}
        bad = first_non_finite(logs)
        if bad is not None:
            report_divergence(config, hp, step, bad, log)
            return records
        if progress is not None:
            progress.step(step, logs.get("loss"))
        window.append(logs)
        if is_checkpoint_step(config, step):
            step_time = (time.time() - window_start) / len(window)
            records.append(checkpoint_record(
                config, hp, data, step, window, step_time,
                lambda kind, i: evaluate(state.params, kind, i)))
            save_checkpoint(config, hp, state, records, log)
            window, window_start = [], time.time()
        if config.stop_after_step is not None and step >= config.stop_after_step:
            log(f"stopping after step {step} (--stop_after_step)")
            return records
    mark_done(config, hp)
    return records
