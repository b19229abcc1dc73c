"""The one hyperparameter registry of the DomainBed protocol: defaults and search distributions.

``hparams_seed == 0`` means the defaults (DomainBed's convention); any other seed draws every
hyperparameter at random. Each hyperparameter gets its OWN generator, seeded by a hash of
(hparams_seed, trial_seed, name), so adding an algorithm or a hyperparameter never changes any
other draw, and algorithms sharing a name (``lr``, ``batch_size``) draw the same value for the
same seeds. Like DomainBed, the draw depends on the trial seed: each trial runs its own search.

Ranges (small-image datasets: DomainBed ColoredMNIST and RotatedMNIST), as recalled from
DomainBed's ``hparams_registry.py`` and the authors' fork of it (docs/protocols.md, "The penalties" and "DomainBed MNIST protocol"):

=========================  ==========  ===============================================
name                       default     random search
=========================  ==========  ===============================================
lr                         1e-3        10^U(-4.5, -2.5)
batch_size (per domain)    64          int(2^U(3, 9))
weight_decay               0           0
irm_lambda                 1e2         10^U(-1, 5)
irm_penalty_anneal_iters   500         int(10^U(0, 4))
vrex_lambda                1e1         10^U(-1, 5)
vrex_penalty_anneal_iters  500         int(10^U(0, 4))
mmd_gamma (CORAL)          1.0         10^U(-1, 1)
fishr_lambda               1e3         10^U(1, 4)
fishr_penalty_anneal_iters 1500        int(U(0, 5000))   (DomainBed's Fishr uses a linear range)
fishr_ema                  0.95        U(0.90, 0.99)
iga_penalty                1e3         10^U(1, 5)
sd_reg                     0.1         10^U(-5, -1)
groupdro_eta               1e-2        10^U(-3, -1)
meta_lr (Fish)             0.5         choice(0.05, 0.1, 0.5)
hgp_alpha / hgp_beta       1e-4 / 5e-3 10^U(-5, -3) / 10^U(-3, -1)
hutchinson_alpha / _beta   1e-3 / 5e-3 10^U(1, 4) / 10^U(2, 6)   (defaults OUTSIDE the ranges:
                                       both are the authors' values, kept as published)
hutchinson_num_probes      300         300
exact_diag_alpha / _beta   1e-3 / 5e-3 10^U(1, 4) / 10^U(2, 6)   (hjax extension: Hutchinson's,
                                       since it is Hutchinson's K -> infinity limit)
=========================  ==========  ===============================================

The image datasets (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, pacs_mini) take
DomainBed's large-image values: lr 5e-5 (10^U(-5, -3.5)), batch 32 (int(2^U(3, 5.5))),
weight decay 0 (10^U(-6, -2)), resnet_dropout 0 (choice(0, 0.1, 0.5)).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

SMALL_IMAGES = ("domainbed_colored_mnist", "rotated_mnist")


def seed_hash(*args) -> int:
    """A stable 31-bit seed from any JSON-serializable arguments (not Python's salted hash)."""
    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()
    return int(digest[:8], 16) % (2 ** 31)


class HParam(NamedTuple):
    default: Any
    sample: Callable[[np.random.Generator], Any]
    search: str                    # human-readable distribution, for docs and errors


def log_uniform(default, lo, hi) -> HParam:
    return HParam(default, lambda r: float(10 ** r.uniform(lo, hi)), f"10^U({lo}, {hi})")


def int_log_uniform(default, lo, hi) -> HParam:
    return HParam(default, lambda r: int(10 ** r.uniform(lo, hi)), f"int(10^U({lo}, {hi}))")


def int_pow2_uniform(default, lo, hi) -> HParam:
    return HParam(default, lambda r: int(2 ** r.uniform(lo, hi)), f"int(2^U({lo}, {hi}))")


def uniform(default, lo, hi) -> HParam:
    return HParam(default, lambda r: float(r.uniform(lo, hi)), f"U({lo}, {hi})")


def int_uniform(default, lo, hi) -> HParam:
    return HParam(default, lambda r: int(r.uniform(lo, hi)), f"int(U({lo}, {hi}))")


def choice(default, values) -> HParam:
    return HParam(default, lambda r: values[int(r.integers(len(values)))],
                  f"choice{tuple(values)}")


def const(value) -> HParam:
    return HParam(value, lambda r: value, repr(value))


def _common(dataset: str) -> dict[str, HParam]:
    if dataset in SMALL_IMAGES:
        return {"lr": log_uniform(1e-3, -4.5, -2.5),
                "batch_size": int_pow2_uniform(64, 3, 9),
                "weight_decay": const(0.0)}
    # DomainBed's large-image values (the authors' fork draws batch_size from 2^U(4, 5.5),
    # DomainNet 2^U(4, 5); hjax keeps DomainBed's range, docs/domainbed.md says so).
    return {"lr": log_uniform(5e-5, -5, -3.5),
            "batch_size": int_pow2_uniform(32, 3, 5.5),
            "weight_decay": log_uniform(0.0, -6, -2),
            "resnet_dropout": choice(0.0, (0.0, 0.1, 0.5))}


# algorithm -> its own hyperparameters (the common ones are added for every algorithm).
ALGORITHM_HPARAMS: Mapping[str, Mapping[str, HParam]] = {
    "erm": {},
    "irm": {"irm_lambda": log_uniform(1e2, -1, 5),
            "irm_penalty_anneal_iters": int_log_uniform(500, 0, 4)},
    "vrex": {"vrex_lambda": log_uniform(1e1, -1, 5),
             "vrex_penalty_anneal_iters": int_log_uniform(500, 0, 4)},
    "coral": {"mmd_gamma": log_uniform(1.0, -1, 1)},
    "fishr": {"fishr_lambda": log_uniform(1e3, 1, 4),
              "fishr_penalty_anneal_iters": int_uniform(1500, 0, 5000),
              "fishr_ema": uniform(0.95, 0.90, 0.99)},
    "iga": {"iga_penalty": log_uniform(1e3, 1, 5)},
    "fish": {"meta_lr": choice(0.5, (0.05, 0.1, 0.5))},
    "sd": {"sd_reg": log_uniform(0.1, -5, -1)},
    "groupdro": {"groupdro_eta": log_uniform(1e-2, -3, -1)},
    "hgp": {"hgp_alpha": log_uniform(1e-4, -5, -3),
            "hgp_beta": log_uniform(5e-3, -3, -1)},
    "hutchinson": {"hutchinson_alpha": log_uniform(1e-3, 1, 4),
                   "hutchinson_beta": log_uniform(5e-3, 2, 6),
                   "hutchinson_num_probes": const(300)},
    "exact_diag": {"exact_diag_alpha": log_uniform(1e-3, 1, 4),
                   "exact_diag_beta": log_uniform(5e-3, 2, 6)},
}
ALGORITHMS: tuple[str, ...] = tuple(ALGORITHM_HPARAMS)


def hparam_specs(algorithm: str, dataset: str) -> dict[str, HParam]:
    if algorithm not in ALGORITHM_HPARAMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    return {**_common(dataset), **ALGORITHM_HPARAMS[algorithm]}


def default_hparams(algorithm: str, dataset: str) -> dict[str, Any]:
    return {name: spec.default for name, spec in hparam_specs(algorithm, dataset).items()}


def random_hparams(algorithm: str, dataset: str, hparams_seed: int,
                   trial_seed: int = 0) -> dict[str, Any]:
    """One draw per hyperparameter, each from its own generator (see module docstring)."""
    return {name: spec.sample(np.random.default_rng(seed_hash(hparams_seed, trial_seed, name)))
            for name, spec in hparam_specs(algorithm, dataset).items()}


def make_hparams(algorithm: str, dataset: str, hparams_seed: int, trial_seed: int = 0,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults (hparams_seed 0) or a random draw, then ``overrides`` (names must exist)."""
    if hparams_seed == 0:
        hp = default_hparams(algorithm, dataset)
    else:
        hp = random_hparams(algorithm, dataset, hparams_seed, trial_seed)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(hp))
    if unknown:
        raise ValueError(f"unknown hparams {unknown} for {algorithm}; valid: {', '.join(hp)}")
    for name, value in overrides.items():
        check_override(name, value, hp[name])
    hp.update(overrides)
    return hp


def check_override(name: str, value, default) -> None:
    """ValueError (one line: the name, the value, the type expected) unless ``value`` has the
    type of the hparam's ``default``: an integer for an integer hparam (an integral float is
    accepted, as JSON may write one), a number for a float one; never a bool or a string."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int) and not isinstance(default, bool):
        ok, expected = number and float(value).is_integer(), "an integer"
    else:
        ok, expected = number, "a number"
    if not ok:
        raise ValueError(f"hparam {name}={value!r} must be {expected} (got "
                         f"{type(value).__name__})")
