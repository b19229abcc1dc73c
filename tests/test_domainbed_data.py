"""DomainBed data protocol: in/out splits and with-replacement sampling below real sizes."""

import jax
import numpy as np

from hjax.data import fake_mnist, make_environments
from hjax.data.protocols import Environment
from hjax.protocols.domainbed.data import sample_batches, split_environments, stack_train
from hjax.models.mnist_cnn import MNIST_CNN_WIDTHS, scaled_widths


def _env(name, n, offset):
    images = np.arange(offset, offset + n, dtype=np.float32)[:, None, None, None] * np.ones(
        (1, 2, 2, 1), np.float32)
    return Environment(name, images, np.arange(offset, offset + n, dtype=np.int32))


def test_splits_are_80_20_disjoint_complete_and_deterministic():
    envs = [_env("a", 100, 0), _env("b", 51, 1000)]
    ins, outs = split_environments(envs, trial_seed=3)
    for env, i, o in zip(envs, ins, outs):
        assert len(o.labels) == int(0.2 * len(env.labels))
        assert sorted(np.concatenate([i.labels, o.labels])) == sorted(env.labels)
    ins2, outs2 = split_environments(envs, trial_seed=3)
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(outs, outs2))
    ins3, outs3 = split_environments(envs, trial_seed=4)
    assert not np.array_equal(outs[0].labels, outs3[0].labels)
    # Env e's split depends on (trial_seed, e) only, not on the other environments.
    ins4, outs4 = split_environments([envs[0]], trial_seed=3)
    assert np.array_equal(outs4[0].labels, outs[0].labels)


def test_sampling_stays_below_each_real_size_and_is_keyed():
    envs = [_env("a", 5, 0), _env("b", 40, 100)]
    train = stack_train(envs)
    assert train.images.shape[:2] == (2, 40) and list(np.asarray(train.sizes)) == [5, 40]
    sample = jax.jit(sample_batches, static_argnums=2)
    images, labels = sample(jax.random.key(0), train, 64)
    labels = np.asarray(labels)
    assert labels.shape == (2, 64) and images.shape == (2, 64, 2, 2, 1)
    assert set(labels[0]) <= set(range(5)) and len(set(labels[0])) > 1   # with replacement
    assert set(labels[1]) <= set(range(100, 140))
    np.testing.assert_array_equal(np.asarray(images)[..., 0, 0, 0], labels)
    again = np.asarray(sample(jax.random.key(0), train, 64)[1])
    other = np.asarray(sample(jax.random.key(1), train, 64)[1])
    assert np.array_equal(labels, again) and not np.array_equal(labels, other)


def test_domainbed_environments_split_on_fake_mnist():
    envs = make_environments("rotated_mnist", 0, mnist=fake_mnist(60, 0))
    ins, outs = split_environments(envs, trial_seed=0)
    assert [len(i.labels) + len(o.labels) for i, o in zip(ins, outs)] == [10] * 6
    assert ins[0].images.shape[1:] == (28, 28, 1)


def test_cnn_widths_scale_to_groupnorm_multiples():
    assert scaled_widths(1.0) == MNIST_CNN_WIDTHS == (64, 128, 128, 128)
    assert scaled_widths(0.125) == (8, 16, 16, 16)
    assert all(w % 8 == 0 for w in scaled_widths(0.3))


def test_mnist_cnn_shapes_and_parameter_count():
    import jax.numpy as jnp

    from hjax.models.mnist_cnn import mnist_cnn_model
    model = mnist_cnn_model(num_classes=2)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((3, 28, 28, 2))))
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
    # DomainBed's MNIST_CNN on 2 channels: 4 convs (+ biases) and 4 GroupNorms (scale, bias).
    assert count(params["featurizer"]) == (2 * 9 * 64 + 64) + (64 * 9 * 128 + 128) \
        + 2 * (128 * 9 * 128 + 128) + 2 * (64 + 3 * 128)
    assert params["classifier"]["kernel"].shape == (128, 2)
    out = jax.eval_shape(lambda p: model.apply(p, jnp.zeros((3, 28, 28, 2))), params)
    assert out.shape == (3, 2)
