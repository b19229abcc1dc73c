"""torchvision's ResNet-18 / ResNet-50 as a Flax featurizer, with DomainBed's frozen BatchNorm.

Layout (torchvision v1.5, what DomainBed loads with ``torchvision.models.resnet18/50``):
conv1 7x7/2 (pad 3, no bias) -> bn1 -> ReLU -> maxpool 3x3/2 (pad 1) -> layer1..layer4 ->
global average pool -> 512 (ResNet-18, BasicBlock [2,2,2,2]) or 2048 (ResNet-50, Bottleneck
[3,4,6,3], expansion 4, stride on the 3x3 conv) features. A block's shortcut is
``downsample`` = 1x1 conv + BN whenever its output shape differs from its input's. Images are
NHWC. Submodules carry torchvision's names (``layer1.0.downsample.0`` becomes
``layer1_0/downsample_0``) so :mod:`hjax.models.torchvision_weights` maps keys one to one.

BatchNorm is frozen as in DomainBed (``freeze_bn``): it always normalizes with the running
statistics, in training too, with PyTorch's eps=1e-5. Its scale and bias are trainable params;
the running mean/var are the ``batch_stats`` collection, which :class:`ResNetModel` holds as
constants outside the params, so no optimizer step or weight decay can touch them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hjax.models.linear_model import Model

# arch -> (block kind, blocks per stage). Stage widths are 64, 128, 256, 512.
ARCHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}
EXPANSION = {"basic": 1, "bottleneck": 4}
STAGE_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5                     # PyTorch's default; Flax's is 1e-6


def feature_dim(arch: str) -> int:
    return STAGE_WIDTHS[-1] * EXPANSION[_arch(arch)[0]]


def _arch(arch: str):
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not valid; choose one of: {', '.join(ARCHS)}")
    return ARCHS[arch]


# torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), BN weight 1 bias 0.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features, kernel, stride, name, dtype):
    pad = kernel // 2             # explicit, as PyTorch: "SAME" pads asymmetrically at stride 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_conv_init,
                   dtype=dtype, param_dtype=jnp.float32, name=name)


def _bn(name, dtype):
    # use_running_average=True always: frozen BN reads batch_stats and never writes them.
    return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


class Block(nn.Module):
    """BasicBlock (two 3x3 convs) or Bottleneck (1x1 -> 3x3 with the stride -> 1x1 x4)."""
    kind: str
    width: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv, bn = partial(_conv, dtype=self.dtype), partial(_bn, dtype=self.dtype)
        out_width = self.width * EXPANSION[self.kind]
        if self.kind == "basic":
            convs = [(self.width, 3, self.stride), (self.width, 3, 1)]
        else:
            convs = [(self.width, 1, 1), (self.width, 3, self.stride), (out_width, 1, 1)]
        h = x
        for i, (features, kernel, stride) in enumerate(convs, start=1):
            h = bn(f"bn{i}")(conv(features, kernel, stride, f"conv{i}")(h))
            if i < len(convs):
                h = nn.relu(h)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_width:
            shortcut = bn("downsample_1")(conv(out_width, 1, self.stride, "downsample_0")(x))
        return nn.relu(h + shortcut)


class ResNet(nn.Module):
    """NHWC images -> [n, 512 | 2048] float32 features (before the dropout and the head).

    ``train=True`` only switches the dropout on (it needs a ``"dropout"`` rng); BatchNorm is
    frozen either way. ``rate`` overrides ``dropout`` with a traced value (vmapped trials of
    different ``resnet_dropout``; the same draws as ``dropout`` at an equal rate).
    """
    arch: str = "resnet50"
    dropout: float = 0.0
    dtype: Any = jnp.float32      # compute dtype (e.g. bfloat16); params stay float32

    @nn.compact
    def __call__(self, x, train: bool = False, rate=None):
        kind, stages = _arch(self.arch)
        x = nn.relu(_bn("bn1", self.dtype)(_conv(64, 7, 2, "conv1", self.dtype)(x)))
        # Flax pads max_pool with -inf, as PyTorch's MaxPool2d does.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s, (width, blocks) in enumerate(zip(STAGE_WIDTHS, stages), start=1):
            for b in range(blocks):
                stride = 2 if s > 1 and b == 0 else 1
                x = Block(kind, width, stride, self.dtype, name=f"layer{s}_{b}")(x)
        # Pool in float32 (float64 for a float64 oracle) and return that: the head, the loss
        # and every penalty then run in float32 whatever the compute dtype (docs/precision.md).
        z = jnp.mean(x.astype(jnp.promote_types(self.dtype, jnp.float32)), axis=(-3, -2))
        if rate is None:
            rate = self.dropout
        return Dropout()(z, rate, deterministic=not train or self.dropout == 0.0)


class Dropout(nn.Module):
    """flax's ``nn.Dropout`` with the rate a call argument that may be traced: the same rng
    (the module keeps nn.Dropout's auto-name, Dropout_0), the same mask and scaling at an
    equal rate, and at rate 0 the identity (a Bernoulli(1) mask keeps everything)."""

    @nn.compact
    def __call__(self, x, rate, deterministic: bool):
        if deterministic:
            return x
        # A Python rate gives nn.Dropout's (float64) keep probability; a traced one float32's.
        keep = 1.0 - rate if isinstance(rate, (int, float)) else 1.0 - rate.astype(x.dtype)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


def initial_batch_stats(featurizer: ResNet) -> dict:
    """Fresh running statistics (mean 0, var 1, as PyTorch's), from shapes alone (no compute)."""
    shapes = jax.eval_shape(featurizer.init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3), jnp.float32))["batch_stats"]
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (jnp.zeros if path[-1].key == "mean" else jnp.ones)(s.shape, s.dtype),
        shapes)


class ResNetModel(Model):
    """A ResNet featurizer with frozen BN statistics held as constants, and a linear head.

    ``params = {"featurizer": <conv kernels, BN scale/bias>, "classifier": {kernel, bias}}``
    as for every :class:`Model`; the BN running mean/var live in ``self.batch_stats`` (from
    imported weights, or fresh), never in ``params``. ``featurizer_params``, when given (e.g.
    ImageNet weights from :mod:`hjax.models.torchvision_weights`), are what :meth:`init`
    returns for the featurizer; only the head is then drawn from the key.
    """

    def __init__(self, featurizer: ResNet, num_outputs: int, *, batch_stats=None,
                 featurizer_params=None):
        super().__init__(featurizer, num_outputs)
        self.batch_stats = (initial_batch_stats(featurizer) if batch_stats is None
                            else batch_stats)
        self.featurizer_params = featurizer_params

    def init(self, key, example_images):
        kf, kc = jax.random.split(key)
        f_params = self.featurizer_params
        if f_params is None:
            f_params = self.featurizer.init(kf, example_images)["params"]
        z = self._apply_featurizer(f_params, example_images)
        c_params = self.classifier.init(kc, z)["params"]["Dense_0"]
        return {"featurizer": f_params, "classifier": c_params}

    def _apply_featurizer(self, f_params, images, dropout_key=None, dropout_rate=None):
        variables = {"params": f_params, "batch_stats": self.batch_stats}
        if dropout_key is None:
            return self.featurizer.apply(variables, images)
        return self.featurizer.apply(variables, images, train=True, rate=dropout_rate,
                                     rngs={"dropout": dropout_key})

    def features(self, params, images, *, dropout_key=None, dropout_rate=None):
        """[n, 512 | 2048] features. No dropout unless ``dropout_key`` is given (training
        with ``resnet_dropout`` > 0: pass a fresh key per step; ``dropout_rate``, possibly
        traced, overrides the model's rate); ``features(params, images)`` is deterministic,
        so evaluation and every existing caller need no change."""
        return self._apply_featurizer(params["featurizer"], images, dropout_key, dropout_rate)

    def apply(self, params, images, *, dropout_key=None, dropout_rate=None):
        return self.head(params["classifier"],
                         self.features(params, images, dropout_key=dropout_key,
                                       dropout_rate=dropout_rate))


def resnet_model(arch: str, num_classes: int, *, dropout: float = 0.0, dtype=jnp.float32,
                 batch_stats=None, featurizer_params=None) -> ResNetModel:
    """DomainBed's ResNet model: ``arch`` in {"resnet18", "resnet50"}, ``dropout`` =
    ``resnet_dropout`` on the features, ``dtype`` the compute dtype (bfloat16 on
    accelerators; params, features and head stay float32). ``batch_stats`` /
    ``featurizer_params``: pretrained ones (see ``torchvision_weights.load_torchvision``)."""
    _arch(arch)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    return ResNetModel(ResNet(arch, dropout, dtype), num_classes, batch_stats=batch_stats,
                       featurizer_params=featurizer_params)
