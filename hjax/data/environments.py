"""`make_environments(name, seed, mnist=, **options)` and what each dataset contains.

The training code needs to know, per dataset, which environments it trains on and
which it evaluates; `DATASET_INFO[name]` says so without building any data.
"""

from __future__ import annotations

import types
from typing import Callable, Mapping, NamedTuple

from hjax.data import protocols
from hjax.data.images import IMAGE_DATASETS
from hjax.data.mnist import load_mnist
from hjax.data.protocols import Environment
from hjax.data.schema import Mnist


class DatasetInfo(NamedTuple):
    """Static description of a dataset's environments (indices into the returned list).

    train_envs: environments to train on. test_envs: held-out test domains. gray_envs:
    extra evaluation-only environments (the IRM "gray test"). leave_one_out: True for
    the DomainBed protocol, where each environment in turn is the test domain and the
    others are trained on (so train_envs and test_envs both list all of them).
    options: option name -> (default, allowed values).
    """

    name: str
    env_names: tuple[str, ...]
    train_envs: tuple[int, ...]
    test_envs: tuple[int, ...]
    gray_envs: tuple[int, ...]
    leave_one_out: bool
    num_classes: int
    image_shape: tuple[int, int, int]
    options: Mapping[str, tuple[str, tuple[str, ...]]]


_IRM_NAMES = tuple(f"train_{e}" for e in protocols.IRM_FLIPS[:2]) + (
    f"test_{protocols.IRM_FLIPS[2]}", "gray_test")
_NO_OPTIONS: Mapping = types.MappingProxyType({})

DATASET_INFO: Mapping[str, DatasetInfo] = types.MappingProxyType({
    "colored_mnist": DatasetInfo(
        "colored_mnist", _IRM_NAMES, (0, 1), (2,), (3,), False, 2, (14, 14, 2), _NO_OPTIONS),
    "colored_mnist_label_shift": DatasetInfo(
        "colored_mnist_label_shift", _IRM_NAMES, (0, 1), (2,), (3,), False, 2, (14, 14, 2),
        types.MappingProxyType({"split": ("intended", protocols.LABEL_SHIFT_SPLITS)})),
    "domainbed_colored_mnist": DatasetInfo(
        "domainbed_colored_mnist", ("+90%", "+80%", "-90%"), (0, 1, 2), (0, 1, 2), (), True,
        2, (28, 28, 2), _NO_OPTIONS),
    "rotated_mnist": DatasetInfo(
        "rotated_mnist", tuple(str(a) for a in protocols.ROTATIONS), tuple(range(6)),
        tuple(range(6)), (), True, 10, (28, 28, 1), _NO_OPTIONS),
})
DATASETS: tuple[str, ...] = tuple(DATASET_INFO)

_BUILDERS: Mapping[str, Callable[..., list[Environment]]] = {
    "colored_mnist": protocols.colored_mnist,
    "colored_mnist_label_shift": protocols.colored_mnist_label_shift,
    "domainbed_colored_mnist": protocols.domainbed_colored_mnist,
    "rotated_mnist": protocols.rotated_mnist,
}


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo of `name` (an MNIST dataset of DATASET_INFO, or an image dataset of
    hjax.data.images, read from files rather than built by make_environments);
    ValueError listing the valid names otherwise."""
    if name in DATASET_INFO:
        return DATASET_INFO[name]
    if name in IMAGE_DATASETS:
        image = IMAGE_DATASETS[name]
        every = tuple(range(len(image.domains)))
        return DatasetInfo(name, image.env_names, every, every, (), True, image.num_classes,
                           (224, 224, 3), _NO_OPTIONS)
    raise ValueError(f"unknown dataset {name!r}; valid: "
                     f"{', '.join(DATASETS + tuple(IMAGE_DATASETS))}")


def resolve_options(name: str, options: Mapping[str, str]) -> dict[str, str]:
    """Options of `name` with defaults filled in; ValueError on unknown names or values."""
    allowed = dataset_info(name).options
    for key in options:
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for dataset {name!r}; valid: "
                             f"{', '.join(allowed) or '(none)'}")
    resolved = {key: options.get(key, default) for key, (default, _) in allowed.items()}
    for key, value in resolved.items():
        if value not in allowed[key][1]:
            raise ValueError(f"unknown {key} {value!r} for dataset {name!r}; valid: "
                             f"{', '.join(allowed[key][1])}")
    return resolved


def make_environments(name: str, seed: int = 0, *, mnist: Mnist | None = None,
                      **options) -> list[Environment]:
    """Builds the ordered environments of dataset `name` (see DATASET_INFO[name]).

    `mnist` defaults to real MNIST (`load_mnist()`); tests pass small MNIST-shaped data.
    Options: colored_mnist_label_shift takes split="intended" (default) or "reference".
    """
    if name not in DATASET_INFO:
        if name in IMAGE_DATASETS:
            raise ValueError(f"{name!r} is an image dataset: it is read from files by "
                             "hjax.data.images.load_image_dataset, not built here")
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    resolved = resolve_options(name, options)
    if mnist is None:
        mnist = load_mnist()
    return _BUILDERS[name](mnist, int(seed), **resolved)
