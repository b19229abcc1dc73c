"""hjax.data: real MNIST (cached, verified) and the MNIST domain-generalization protocols."""

from hjax.data.environments import (DATASET_INFO, DATASETS, DatasetInfo, dataset_info,
                                    make_environments)
from hjax.data.mnist import MnistUnavailableError, load_mnist, refresh_mnist
from hjax.data.protocols import Environment
from hjax.data.schema import Mnist
from hjax.data.synthetic import fake_mnist
from hjax.data.identity import mnist_data_identity

__all__ = ["DATASETS", "DATASET_INFO", "DatasetInfo", "Environment", "Mnist",
           "MnistUnavailableError", "dataset_info", "fake_mnist", "load_mnist",
           "make_environments", "mnist_data_identity", "refresh_mnist"]
