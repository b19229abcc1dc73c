"""An IRM-protocol ColoredMNIST run's configuration: the methods and their default
hyperparameters, the :class:`ExperimentConfig` dataclass, its validation, and the one
translator from command-line flags (:func:`from_flags`).

Defaults live here alone: the flag help of ``hjax.cli.colored_mnist`` reads them.
"""

from __future__ import annotations

import dataclasses

from hjax.errors import ConfigError, check_choice, check_positive
from hjax.models import MATMULS
from hjax.protocols.runs.processes import check_settings as check_distributed

# The objectives this protocol runs (every one with a published or hjax-extension row).
METHODS = ("erm", "irm", "vrex", "fishr", "hgp", "hutchinson", "hutchinson_shared",
           "exact_diag")

# docs/protocols.md, IRM-protocol ColoredMNIST (the values of the IRM / Fishr scripts).
DEFAULT_HPARAMS = {
    "lr": 4.898536566546834e-4,
    "l2_weight": 1.10794568e-3,
    "penalty_weight": 91257.18613115903,
    "anneal_iters": 190,
    "hidden_dim": 390,
    "num_probes": 150,
    "alpha": 1.0,
    "beta": 1.0,
    "curvature": "closed_form",
}
# ERM is the same protocol with no penalty (and so no rescaling of the loss after annealing).
METHOD_DEFAULTS = {"erm": {"penalty_weight": 0.0}}
HPARAM_FIELDS = tuple(DEFAULT_HPARAMS)

DATASETS = ("colored_mnist", "colored_mnist_label_shift")
SPLITS = ("intended", "reference")
CURVATURES = ("closed_form", "autodiff")
PROGRESS_MODES = ("auto", "on", "off")
# How restarts run: "vmap" (a group of restarts as one compiled program), "loop" (groups of
# one: one restart after another), "auto" (vmap; on a CPU CPU_RESTART_BATCHING).
RESTART_BATCHINGS = ("auto", "vmap", "loop")
# auto on a CPU: measured on 2 cores (docs/benchmarks.md, "Restarts in one program").
CPU_RESTART_BATCHING = "vmap"

# Which images form the test domain, recorded with every restart: since the test-domain fix,
# the scripts' MNIST train[50000:60000] in every restart, and a gray twin with its own label
# noise. Records without it (an earlier random 10,000 of the 60,000 per restart) or with
# another value (the same images, gray labels shared with the colored test domain) are not
# resumed.
TEST_DOMAIN = "mnist_train[50000:60000], gray relabeled"


def method_hparams(method: str, **overrides) -> dict:
    """Defaults for ``method``, then any non-None overrides."""
    check_choice("method", method, METHODS)
    hp = dict(DEFAULT_HPARAMS, **METHOD_DEFAULTS.get(method, {}))
    unknown = set(overrides) - set(hp)
    if unknown:
        raise ConfigError(f"unknown hparams {sorted(unknown)}; valid: {', '.join(hp)}")
    hp.update({k: v for k, v in overrides.items() if v is not None})
    return hp


def data_seed(seed: int, restart: int) -> int:
    """Data are re-drawn for every restart: restart r of base seed s uses s * 10000 + r."""
    return seed * 10_000 + restart


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One run of the protocol; field names are the command line's flag names, and None
    hyperparameters take the protocol's defaults (:data:`DEFAULT_HPARAMS`)."""
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
    restart_batching: str = "auto"
    restarts_per_program: int | None = None   # vmap: at most this many per program (None: all)
    checkpoint_every: int = 100               # checkpoint each group every N steps (0: off)

    @property
    def split(self) -> str | None:
        """The label-shift split, for the dataset that has one."""
        return self.label_shift_split if self.dataset == "colored_mnist_label_shift" else None

    def hparams(self) -> dict:
        """The method's defaults with this config's hyperparameter overrides."""
        return method_hparams(self.method, **{k: getattr(self, k) for k in HPARAM_FIELDS})

    def output_folder(self) -> str:
        return self.output_dir or f"runs/{self.dataset}-{self.method}-{self.seed}"


FIELDS = tuple(f.name for f in dataclasses.fields(ExperimentConfig))


def default(name: str):
    """The default of a setting, for flag help: a hyperparameter's protocol default, else the
    dataclass field's."""
    if name in DEFAULT_HPARAMS:
        return DEFAULT_HPARAMS[name]
    return {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}[name]


def from_flags(flag_values) -> ExperimentConfig:
    """The config of parsed flags (an object with one attribute per field)."""
    return ExperimentConfig(**{name: getattr(flag_values, name) for name in FIELDS})


def resolve_restart_batching(mode: str, platform: str | None = None) -> str:
    """``auto`` -> ``vmap`` on accelerators, :data:`CPU_RESTART_BATCHING` on a CPU."""
    check_choice("restart_batching", mode, RESTART_BATCHINGS)
    if mode != "auto":
        return mode
    if platform is None:
        import jax
        platform = jax.devices()[0].platform
    return CPU_RESTART_BATCHING if platform == "cpu" else "vmap"


def validate(config: ExperimentConfig) -> None:
    check_choice("dataset", config.dataset, DATASETS)
    check_choice("method", config.method, METHODS)
    check_positive("restarts", config.restarts)
    check_positive("steps", config.steps)
    check_positive("log_every", config.log_every)
    if config.track_alignment_every is None or config.track_alignment_every < 0:
        raise ConfigError(f"--track_alignment_every={config.track_alignment_every} must be "
                          ">= 0 (0 = off)")
    if config.num_probes is not None:
        check_positive("num_probes", config.num_probes)
    if config.hidden_dim is not None:
        check_positive("hidden_dim", config.hidden_dim)
    check_choice("label_shift_split", config.label_shift_split, SPLITS)
    if config.curvature is not None:
        check_choice("curvature", config.curvature, CURVATURES)
    check_choice("matmul", config.matmul, MATMULS)
    check_choice("progress", config.progress, PROGRESS_MODES)
    check_choice("restart_batching", config.restart_batching, RESTART_BATCHINGS)
    if config.restarts_per_program is not None:
        check_positive("restarts_per_program", config.restarts_per_program)
    if config.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint_every={config.checkpoint_every} must be >= 0 "
                          "(0 = off)")
    if config.lr is not None and not config.lr > 0:
        raise ConfigError(f"--lr={config.lr} must be > 0")
    check_distributed(config.distributed, config.coordinator_address, config.num_processes,
                      config.process_id)
    if not config.distributed:      # a distributed run counts its devices once joined
        check_num_devices(config)


def check_num_devices(config: ExperimentConfig) -> None:
    if config.num_devices is not None:
        import jax
        available = len(jax.devices())
        if not 1 <= config.num_devices <= available:
            raise ConfigError(f"--num_devices={config.num_devices} is not available; "
                              f"choose 1..{available}")
