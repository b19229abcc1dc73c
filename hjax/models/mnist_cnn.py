"""DomainBed's MNIST_CNN featurizer (docs/protocols.md) as a Flax module, and the full model.

conv3x3(w0) ReLU GN(8) -> conv3x3(w1, stride 2) ReLU GN(8) -> conv3x3(w2) ReLU GN(8)
-> conv3x3(w3) ReLU GN(8) -> global average pool -> w3 features, with widths
(64, 128, 128, 128) at ``width_multiplier=1``. The head is ``hjax.models.Model``'s linear
classifier, so params split into {"featurizer", "classifier"}.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from hjax.models.linear_model import Model

MNIST_CNN_WIDTHS = (64, 128, 128, 128)
GROUPS = 8


class MNISTCNN(nn.Module):
    """NHWC images -> [n, widths[-1]] features. Padding 1 ("SAME") as in DomainBed."""
    widths: Sequence[int] = MNIST_CNN_WIDTHS

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):
            stride = 2 if i == 1 else 1
            x = nn.Conv(width, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))(x)
            x = nn.GroupNorm(num_groups=GROUPS, epsilon=1e-5)(nn.relu(x))  # PyTorch eps
        return jnp.mean(x, axis=(-3, -2))


def scaled_widths(width_multiplier: float) -> tuple[int, ...]:
    """Widths times the multiplier, rounded up to a multiple of the 8 GroupNorm groups."""
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    return tuple(max(GROUPS, GROUPS * math.ceil(w * width_multiplier / GROUPS))
                 for w in MNIST_CNN_WIDTHS)


def mnist_cnn_model(num_classes: int, width_multiplier: float = 1.0) -> Model:
    return Model(MNISTCNN(scaled_widths(width_multiplier)), num_outputs=num_classes)
