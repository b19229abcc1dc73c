"""A DomainBed job's configuration: the dataclass, its validation, its hyperparameters, and
the one translator from command-line flags or sweep-job settings (:func:`from_settings`).

Defaults live here alone: the command line's flag help reads them from :class:`RunConfig`
and :func:`default_checkpoint_freq`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from hjax.data.images import IMAGE_DATASET_NAMES, IMAGE_DATASETS
from hjax.errors import ConfigError, check_choice
from hjax.protocols.domainbed.hparams import ALGORITHMS, make_hparams
from hjax.protocols.runs.processes import SETTINGS as DISTRIBUTED
from hjax.protocols.runs.processes import check_settings as check_distributed

MNIST_DATASETS = ("domainbed_colored_mnist", "rotated_mnist")
DATASETS = MNIST_DATASETS + IMAGE_DATASET_NAMES
ARCHS = ("resnet18", "resnet50")
DTYPES = ("float32", "bfloat16")
AUGMENT_ON = ("device", "host")
DATA_ON_DEVICE = ("auto", "on", "off")
# Settings of the image datasets only (absent from an MNIST job's identity and records).
IMAGE_FIELDS = ("arch", "image_size", "dtype", "pretrained", "augment")
MNIST_CHECKPOINT_FREQ = 100
HOLDOUT_FRACTION = 0.2       # of each environment, held out as its 'out' split


@dataclasses.dataclass(frozen=True)
class RunConfig:
    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    output_dir: str
    hparams_seed: int = 0
    trial_seed: int = 0
    steps: int = 5001
    checkpoint_freq: int = MNIST_CHECKPOINT_FREQ
    hparams_overrides: dict = dataclasses.field(default_factory=dict)
    holdout_fraction: float = HOLDOUT_FRACTION
    width_multiplier: float = 1.0
    fake_data: bool = False
    eval_chunk: int = 1024
    stop_after_step: int | None = None     # testing: stop (as if killed) after this step
    # Image datasets (hjax.data.images): where the data are ($HJAX_DATA_DIR or
    # ~/.cache/hjax when None), the ResNet, the input size, the compute dtype, torchvision
    # weights to start from (a file, or "imagenet"; None = random init) and the number of
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
    # The decoded cache held on the device, batches gathered there (hjax.data.images.resident;
    # the same batches as the host pipeline's, so not part of the identity): "auto" decides
    # from its size and the free device memory.
    data_on_device: str = "auto"
    # Not part of the job's identity: move another job's files aside instead of refusing
    # the folder, and whether to show a progress line (the command line's --progress).
    overwrite: bool = False
    progress: str = "off"
    # Not part of it either: this job as one of several processes (hjax.protocols.runs.
    # processes; the same numbers), and how they find each other.
    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def is_image_dataset(self) -> bool:
        return self.dataset in IMAGE_DATASET_NAMES

    def identity(self) -> dict:
        """The job's settings that change its numbers (``args`` of every record; with the
        hparams and the data, the job's run identity: hjax.protocols.domainbed.identity)."""
        d = dataclasses.asdict(self)
        for key in ("output_dir", "stop_after_step", "eval_chunk", "data_dir", "workers",
                    "decoded_cache", "data_on_device", "overwrite", "progress",
                    *DISTRIBUTED):
            d.pop(key)
        if not self.is_image_dataset:
            for key in IMAGE_FIELDS:
                d.pop(key)
        d["test_envs"] = list(self.test_envs)
        return d


def default(name: str):
    """The default of RunConfig field ``name`` (for flag help)."""
    field = {f.name: f for f in dataclasses.fields(RunConfig)}[name]
    return field.default


def default_checkpoint_freq(dataset: str) -> int:
    """DomainBed's per dataset: 100 for MNIST, 300 for the image datasets, 1000 DomainNet."""
    info = IMAGE_DATASETS.get(dataset)
    return info.checkpoint_freq if info is not None else MNIST_CHECKPOINT_FREQ


def validate(config: RunConfig, num_envs: int) -> None:
    check_choice("dataset", config.dataset, DATASETS)
    check_choice("algorithm", config.algorithm, ALGORITHMS)
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
    check_distributed(config.distributed, config.coordinator_address, config.num_processes,
                      config.process_id)
    if not config.width_multiplier > 0:
        raise ConfigError(f"--width_multiplier={config.width_multiplier} must be > 0")
    if config.is_image_dataset:
        check_choice("arch", config.arch, ARCHS)
        check_choice("dtype", config.dtype, DTYPES)
        if config.image_size < 32:
            raise ConfigError(f"--image_size={config.image_size} must be >= 32")
        if config.workers < 0:
            raise ConfigError(f"--workers={config.workers} must be >= 0")
        check_choice("augment", config.augment, AUGMENT_ON)
        check_choice("data_on_device", config.data_on_device, DATA_ON_DEVICE)
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


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def _test_envs(value) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    return tuple(int(e) for e in value)


# The one cast table: a setting's name -> how a flag value or a sweep job's string becomes the
# RunConfig field. Hparam overrides (batch_size, lr, hparams) are handled beside it.
CASTS = {
    "dataset": str, "algorithm": str, "test_envs": _test_envs, "output_dir": str,
    "hparams_seed": int, "trial_seed": int, "steps": int, "checkpoint_freq": int,
    "holdout_fraction": float, "width_multiplier": float, "fake_data": _bool,
    "eval_chunk": int, "stop_after_step": int, "data_dir": str, "arch": str,
    "image_size": int, "dtype": str, "pretrained": str, "workers": int, "augment": str,
    "decoded_cache": _bool, "data_on_device": str, "overwrite": _bool, "progress": str,
    "distributed": _bool, "coordinator_address": str, "num_processes": int, "process_id": int,
}
HPARAM_SETTINGS = {"batch_size": int, "lr": float}


def unknown_setting(name: str) -> ConfigError:
    return ConfigError(f"sweep job setting --{name} has no place in a job's identity")


def from_settings(settings: Mapping[str, Any]) -> RunConfig:
    """The RunConfig of flag values or sweep-job settings: ``None`` means not given (the
    default; the checkpoint frequency defaults per dataset), strings are cast by
    :data:`CASTS`, ``hparams`` (a JSON object or a dict) and ``batch_size`` / ``lr`` become
    hparam overrides. ConfigError names a bad or unknown setting."""
    kwargs: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for name, value in settings.items():
        if value is None:
            continue
        try:
            if name == "hparams":
                extra = json.loads(value) if isinstance(value, str) else value
                if not isinstance(extra, dict):
                    raise ConfigError("--hparams must be a JSON object")
                overrides.update(extra)
            elif name in HPARAM_SETTINGS:
                overrides[name] = HPARAM_SETTINGS[name](value)
            elif name in CASTS:
                kwargs[name] = CASTS[name](value)
            else:
                raise unknown_setting(name)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--hparams is not valid JSON ({e.msg})") from None
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            kind = "integers" if name == "test_envs" else f"a {CASTS.get(name, str).__name__}"
            raise ConfigError(f"--{name}={shown} must be {kind.lstrip('_')}") from None
    if not kwargs.get("output_dir"):
        raise ConfigError("--output_dir is required")
    for name in ("dataset", "algorithm", "test_envs"):
        if name not in kwargs:
            raise ConfigError(f"--{name} is required")
    kwargs.setdefault("checkpoint_freq", default_checkpoint_freq(kwargs["dataset"]))
    return RunConfig(hparams_overrides=overrides, **kwargs)


def job_settings(job, output_dir: str) -> dict:
    """A sweep job's settings (``job.flags()`` as ``domainbed_train`` parses them)."""
    return {"dataset": job.dataset, "algorithm": job.algorithm,
            "test_envs": tuple(job.test_envs), "hparams_seed": job.hparams_seed,
            "trial_seed": job.trial_seed, **dict(job.extra), "output_dir": output_dir}


def job_run_config(job, output_dir: str) -> RunConfig:
    """The RunConfig that ``domainbed_train`` builds from ``job.flags()``."""
    return from_settings(job_settings(job, output_dir))
