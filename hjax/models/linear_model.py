"""Flax models whose params split into ``featurizer`` and ``classifier`` (a linear head).

The split is what the penalties need: curvature is taken w.r.t. ``params["classifier"]``
only, while gradients still reach ``params["featurizer"]`` through the features.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from hjax.models.tf32 import tf32_dot_general

# How the featurizer's matmuls round: float32 throughout, or TF32 operands (hjax.models.tf32).
MATMULS = ("fp32", "tf32")


class MLPFeaturizer(nn.Module):
    """IRM-protocol MLP body: flatten -> (Dense -> ReLU) x len(hidden). ``matmul="tf32"``
    emulates TF32 matmuls (forward and backward); the params and their init are the same."""
    hidden: Sequence[int] = (390, 390)
    matmul: str = "fp32"

    @nn.compact
    def __call__(self, x):
        if self.matmul not in MATMULS:
            raise ValueError(f"unknown matmul {self.matmul!r}; valid: {', '.join(MATMULS)}")
        dot = tf32_dot_general if self.matmul == "tf32" else None
        h = x.reshape(x.shape[:-3] + (-1,))
        for width in self.hidden:
            h = nn.relu(nn.Dense(width, kernel_init=nn.initializers.xavier_uniform(),
                                 bias_init=nn.initializers.zeros, dot_general=dot)(h))
        return h


class Classifier(nn.Module):
    """Linear head; its params are used as a plain {kernel, bias} dict."""
    num_outputs: int = 1

    @nn.compact
    def __call__(self, z):
        return nn.Dense(self.num_outputs, kernel_init=nn.initializers.xavier_uniform(),
                        bias_init=nn.initializers.zeros)(z)


class Model:
    """A featurizer and a linear head with one params dict ``{featurizer, classifier}``."""

    def __init__(self, featurizer: nn.Module, num_outputs: int):
        self.featurizer = featurizer
        self.classifier = Classifier(num_outputs)
        self.num_outputs = num_outputs

    def init(self, key, example_images):
        kf, kc = jax.random.split(key)
        f_params = self.featurizer.init(kf, example_images)["params"]
        z = self.featurizer.apply({"params": f_params}, example_images)
        c_params = self.classifier.init(kc, z)["params"]["Dense_0"]
        return {"featurizer": f_params, "classifier": c_params}

    def features(self, params, images):
        return self.featurizer.apply({"params": params["featurizer"]}, images)

    @staticmethod
    def head(classifier_params, features):
        """The head as a plain affine map (Dense layout), so closed forms apply directly."""
        return features @ classifier_params["kernel"] + classifier_params["bias"]

    def apply(self, params, images):
        return self.head(params["classifier"], self.features(params, images))


def irm_mlp(hidden_dim: int = 390, matmul: str = "fp32") -> Model:
    """The IRM-protocol ColoredMNIST model: 392 -> 390 -> ReLU -> 390 -> ReLU -> 1
    (``matmul``: see :class:`MLPFeaturizer`)."""
    return Model(MLPFeaturizer((hidden_dim, hidden_dim), matmul), num_outputs=1)
