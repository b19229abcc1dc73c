"""The Flax ResNets equal torchvision's, on the same weights and input (needs torch).

Skipped where torchvision is not importable (CI has no torch). To run it, install torch and
a torchvision built for that torch into the venv (CPU wheels suffice; never add them to
requirements.txt): ``.venv/bin/pip install torch torchvision``, then
``.venv/bin/python -m pytest -m torchvision tests/test_resnet_torchvision.py``.

Random seeded weights, with random BN statistics and affine params so that every mapped
tensor matters; torchvision in eval mode (DomainBed's frozen BN) with ``fc`` removed.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from precision import torch_full_float32  # noqa: E402

from hjax.models import torchvision_weights as tw  # noqa: E402

pytestmark = pytest.mark.torchvision
# Both sides in full float32 (tests/precision.py; conftest sets JAX's): with TF32 convolutions
# on a GPU ResNet-50 differs by ~1e-4, over the float32 tolerance below.
torch_full_float32(torch)


def random_torchvision(arch, seed=0):
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                # Scales below 1 keep the features O(1), as trained nets do: with 1, ResNet-50's
                # residual sum grows to ~100, where float32 rounding alone is ~1e-4.
                module.weight.uniform_(0.2, 0.6)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_forward_equals_torchvision(arch, tmp_path):
    net = random_torchvision(arch)
    path = str(tmp_path / f"{arch}.pth")
    torch.save(net.state_dict(), path)                  # through the .pth reader
    # The exporter gives exactly torchvision's keys, less fc and the BN counters.
    want = {k for k in net.state_dict()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(tw.expected_keys(arch)) == want

    net.fc = torch.nn.Identity()
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)  # NCHW
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()

    images = jnp.asarray(x.transpose(0, 2, 3, 1))                                  # NHWC
    model = tw.pretrained_resnet_model(path, arch, 10)
    params = model.init(jax.random.key(0), images)
    got = np.asarray(model.features(params, images))
    diff = float(np.abs(got - expected).max())
    print(f"{arch}: max |flax - torchvision| = {diff:.3g} (features up to "
          f"{np.abs(expected).max():.3g})")
    assert got.shape == expected.shape == (2, 512 if arch == "resnet18" else 2048)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    # And back: the exported tensors load into torchvision unchanged.
    exported = tw.to_torchvision(params["featurizer"], model.batch_stats, arch)
    state = net.state_dict()
    for key, value in exported.items():
        np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)
