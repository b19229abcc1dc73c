"""What a DomainBed job trains on and how its members step: the job's data, its model, and
one :class:`MemberProgram` per group of jobs (a single job is a group of one).

A program steps every member of a group at once, ``step(states) -> (states, logs)`` over a
leading member axis, and evaluates every split, ``accuracies(params) -> {(kind, env): [T]}``.
MNIST arrays live on the device and the compiled step samples them (:func:`array_program`);
the programs of image jobs, fed from the device-resident decoded cache or the host pipeline,
are in :mod:`hjax.protocols.domainbed.image_programs`. A group of one runs the single job's
program (no member axis inside it: :func:`hjax.protocols.runs.members.over_members`).
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hjax.data import sharding as data_sharding
from hjax.data.images import (IMAGE_DATASETS, image_data_dir, load_image_dataset,
                              split_in_out)
from hjax.data.weights import resolve_pretrained
from hjax.models import mnist_cnn_model, resnet_model
from hjax.models.torchvision_weights import pretrained_resnet_model
from hjax.protocols.domainbed.config import RunConfig
from hjax.protocols.domainbed.data import TrainArrays, split_environments, stack_train
from hjax.protocols.domainbed.trainer import (EvalSplit, base_key, make_evaluator,
                                              make_train_step, to_eval_split)
from hjax.protocols.runs.members import member, over_members

_LOG = logging.getLogger("hjax")


class JobData(NamedTuple):
    """What one MNIST job trains and evaluates on, on the device."""
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


def load_job_data(config: RunConfig, batch_size: int,
                  log: Callable[[str], None] = _LOG.warning):
    """:class:`JobData` of an MNIST job, :class:`ImageJobData` of an image job."""
    if config.is_image_dataset:
        return load_image_job_data(config, batch_size, log)
    from hjax.data import fake_mnist, make_environments
    # Data are drawn from the trial seed: every algorithm and hparam draw of a trial sees the
    # same environments and the same in/out splits.
    envs = make_environments(config.dataset, config.trial_seed,
                             mnist=fake_mnist() if config.fake_data else None)
    ins, outs = split_environments(envs, config.trial_seed, config.holdout_fraction)
    train_idx = [i for i in range(len(envs)) if i not in config.test_envs]
    train = stack_train([ins[i] for i in train_idx])
    chunk = min(config.eval_chunk, max(len(s.labels) for s in ins + outs))
    return JobData(len(envs), train_idx, train, [to_eval_split(s, chunk) for s in ins],
                   [to_eval_split(s, chunk) for s in outs],
                   min(len(ins[i].labels) for i in train_idx) / batch_size)


def example_images(data) -> np.ndarray:
    """Two images of the job's input shape, for model init."""
    if isinstance(data, ImageJobData):
        return data.example_images
    return data.train.images[0, :2]


def make_model(config: RunConfig, hp: dict | None = None, log=_LOG.info):
    from hjax.data import dataset_info
    num_classes = dataset_info(config.dataset).num_classes
    if not config.is_image_dataset:
        return mnist_cnn_model(num_classes, config.width_multiplier)
    dropout = float((hp or {}).get("resnet_dropout", 0.0))
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    if config.pretrained:
        # "imagenet": torchvision's weights of the arch, fetched (and said) when missing.
        path = resolve_pretrained(config.pretrained, config.arch, config.data_dir, log)
        return pretrained_resnet_model(path, config.arch, num_classes, dropout=dropout,
                                       dtype=dtype)
    return resnet_model(config.arch, num_classes, dropout=dropout, dtype=dtype)


class MemberProgram:
    """The compiled pieces of a group of jobs: ``step(states) -> (states, logs)`` (logs of
    shape [T]), ``accuracies(params) -> {(kind, env): np.ndarray [T]}``, ``place(states)``
    (onto the devices the batches are sharded over) and ``close()`` (stops input workers)."""

    def __init__(self, step, accuracies, place=lambda states: states, close=lambda: None):
        self.step, self.accuracies, self.place, self.close = step, accuracies, place, close


def _single(fn, shared: tuple[int, ...], argcount: int):
    """``fn`` of one job's state over a member axis of size 1 (no batching in the program)."""
    return over_members(fn, 1, tuple(None if i in shared else 0 for i in range(argcount)))


def single_accuracies(evaluate, num_envs: int):
    """``accuracies`` of a group of one from ``evaluate(params, kind, env) -> float``."""
    def accuracies(params) -> dict:
        one = member(params, 0)
        return {(kind, i): np.asarray([evaluate(one, kind, i)])
                for i in range(num_envs) for kind in ("in", "out")}
    return accuracies


def array_program(config: RunConfig, hp: dict, model, data: JobData) -> MemberProgram:
    """One MNIST job: its data on the device, sampled in the step. Several processes: the
    train data and the states replicated over one device of each process, where every
    process runs the whole step (a batch of 64 examples per environment gains nothing from
    being split over processes, and replicas compute the single-process numbers); each
    evaluates its own copy of the params on its own device."""
    step_fn = make_train_step(config.algorithm, model, hp, base_key(config.trial_seed))
    step = jax.jit(_single(step_fn, (1,), 2))
    evaluate_split = make_evaluator(model)
    mesh = data_sharding.make_process_mesh() if jax.process_count() > 1 else None
    train = data.train if mesh is None else data_sharding.replicate(mesh, data.train)

    def place(states):
        return states if mesh is None else data_sharding.replicate(mesh, states)

    splits = {"in": data.eval_ins, "out": data.eval_outs}
    accuracies = single_accuracies(
        lambda params, kind, i: evaluate_split(params, splits[kind][i]), data.num_envs)
    return MemberProgram(lambda states: step(states, train),
                         lambda params: accuracies(data_sharding.local_replica(params)), place)


def job_program(config: RunConfig, hp: dict, model, data, start: int) -> MemberProgram:
    """The program of a single MNIST job (a group of one); image jobs:
    hjax.protocols.domainbed.image_programs."""
    if config.is_image_dataset:
        raise ValueError("image jobs take their program from image_programs.image_program")
    return array_program(config, hp, model, data)
