"""make_environments on small synthetic MNIST (hjax.data.fake_mnist): fast, no real data."""

import chex
import numpy as np
import pytest

from hjax.data import DATASET_INFO, DATASETS, dataset_info, fake_mnist, make_environments
from hjax.data.protocols import DOMAINBED_FLIPS, IRM_FLIPS, label_shift_indices
from hjax.data.transforms import rotate

SMALL = fake_mnist(700, 300)
LARGE = fake_mnist(6000, 1000)   # for rate checks: ~2,500 images per environment
SIGMAS = 5


def ids_and_digits(images):
    """Decodes fake_mnist's identity pixels from environment images [n, h, w, c]."""
    step = 1 if images.shape[1] == 14 else 2   # 14x14 images were subsampled 2x
    row = np.rint(images[:, 0, : 3 * step : step, :].max(axis=-1) * 255).astype(int)
    return row[:, 0] * 256 + row[:, 1], (row[:, 2] - 10) // 20


def colors(images):
    """Index of the channel that holds the digit (the other one is zeroed)."""
    return images.sum(axis=(1, 2)).argmax(axis=-1)


def assert_rate(successes, n, p):
    assert abs(successes / n - p) <= SIGMAS * np.sqrt(p * (1 - p) / n), (successes / n, p)


@pytest.mark.parametrize("name", DATASETS)
def test_shapes_dtypes_and_names(name):
    info = dataset_info(name)
    envs = make_environments(name, 0, mnist=SMALL)
    assert tuple(e.name for e in envs) == info.env_names
    for env in envs:
        chex.assert_type(env.images, np.float32)
        chex.assert_type(env.labels, np.int32)
        chex.assert_shape(env.images, (len(env.labels),) + info.image_shape)
        chex.assert_rank(env.labels, 1)
        assert env.images.min() >= 0 and env.images.max() <= 1
        assert env.labels.min() >= 0 and env.labels.max() < info.num_classes


def test_metadata():
    assert DATASETS == ("colored_mnist", "colored_mnist_label_shift",
                        "domainbed_colored_mnist", "rotated_mnist")
    info = DATASET_INFO["colored_mnist"]
    assert (info.train_envs, info.test_envs, info.gray_envs) == ((0, 1), (2,), (3,))
    assert DATASET_INFO["colored_mnist_label_shift"].options["split"][0] == "intended"
    for info in DATASET_INFO.values():
        n = len(info.env_names)
        assert all(0 <= i < n for i in info.train_envs + info.test_envs + info.gray_envs)
        assert info.leave_one_out == (info.train_envs == info.test_envs)


def test_colored_mnist_sizes_and_holdout():
    envs = make_environments("colored_mnist", 0, mnist=SMALL)
    n_fit = 700 * 5 // 6                              # 50,000 of 60,000 for real MNIST
    assert [len(e.labels) for e in envs] == [(n_fit + 1) // 2, n_fit // 2, 700 - n_fit, 700 - n_fit]
    ids = [ids_and_digits(e.images)[0] for e in envs]
    train = np.concatenate(ids[:2])
    assert len(np.unique(train)) == len(train)        # env0 and env1 are disjoint
    assert not np.intersect1d(train, ids[2]).size     # test domain never seen in training
    np.testing.assert_array_equal(np.sort(np.concatenate([train, ids[2]])), np.arange(700))
    np.testing.assert_array_equal(ids[2], ids[3])


@pytest.mark.parametrize("name", ["colored_mnist", "colored_mnist_label_shift"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_test_domain_is_the_last_sixth_in_order_for_every_seed(name, seed):
    """The scripts' test domain: MNIST train[50000:60000] (here the last 1/6 of the fake
    training images), 2x subsampled, unshuffled, whatever the seed; never trained on."""
    envs = make_environments(name, seed, mnist=SMALL)
    n_fit = 700 * 5 // 6
    expected = SMALL.train_images[n_fit:, ::2, ::2].astype(np.float32) / np.float32(255)
    for env in envs[2:]:                                   # the test domain and its gray twin
        np.testing.assert_array_equal(env.images.max(axis=-1), expected)
    np.testing.assert_array_equal(envs[3].images[..., 0], expected)
    ids = [ids_and_digits(e.images)[0] for e in envs]
    np.testing.assert_array_equal(ids[2], np.arange(n_fit, 700))
    assert not np.intersect1d(np.concatenate(ids[:2]), ids[2]).size
    assert set(np.concatenate(ids[:2])) <= set(range(n_fit))


def test_training_environments_are_redrawn_per_seed_but_the_test_domain_is_not():
    a, b = (make_environments("colored_mnist", s, mnist=SMALL) for s in (0, 1))
    assert not np.array_equal(ids_and_digits(a[0].images)[0], ids_and_digits(b[0].images)[0])
    np.testing.assert_array_equal(ids_and_digits(a[2].images)[0],
                                  ids_and_digits(b[2].images)[0])


@pytest.mark.parametrize("name, flips", [
    ("colored_mnist", IRM_FLIPS),
    ("colored_mnist_label_shift", IRM_FLIPS),
    ("domainbed_colored_mnist", DOMAINBED_FLIPS),
])
def test_label_noise_and_color_agreement(name, flips):
    envs = make_environments(name, 3, mnist=LARGE)
    for env, flip in zip(envs, flips):
        _, digits = ids_and_digits(env.images)
        n = len(env.labels)
        assert_rate(np.sum(env.labels != (digits < 5)), n, 0.25)
        assert_rate(np.sum(colors(env.images) == env.labels), n, 1 - flip)
        # exactly one channel holds the digit
        assert np.all(env.images.min(axis=-1) == 0)


def test_gray_test_keeps_both_channels():
    *_, test, gray = make_environments("colored_mnist", 0, mnist=SMALL)
    np.testing.assert_array_equal(gray.images[..., 0], gray.images[..., 1])
    np.testing.assert_array_equal(gray.images[..., 0], test.images.sum(axis=-1))


@pytest.mark.parametrize("name", ["colored_mnist", "colored_mnist_label_shift"])
def test_gray_test_draws_its_own_label_noise(name):
    """As the scripts' second make_environment call: same images, labels flipped with
    probability 0.25 independently of the colored test domain's flips."""
    *_, test, gray = make_environments(name, 3, mnist=LARGE)
    _, digits = ids_and_digits(gray.images)
    n = len(gray.labels)
    assert_rate(np.sum(gray.labels != (digits < 5)), n, 0.25)
    # Two independent flips at 0.25 disagree with probability 2 * 0.25 * 0.75.
    assert_rate(np.sum(gray.labels != test.labels), n, 0.375)


@pytest.mark.parametrize("name", DATASETS)
def test_deterministic_per_seed(name):
    a, b, c = (make_environments(name, s, mnist=SMALL) for s in (0, 0, 1))
    chex.assert_trees_all_equal([e[1:] for e in a], [e[1:] for e in b])
    assert any(not np.array_equal(x.images, y.images) for x, y in zip(a, c))
    if name != "rotated_mnist":
        assert any(not np.array_equal(x.labels, y.labels) for x, y in zip(a, c))


def test_label_shift_indices_real_sizes():
    digits = np.random.default_rng(0).integers(0, 10, 50_000)
    low, high = np.flatnonzero(digits < 5), np.flatnonzero(digits >= 5)
    e0, e1 = label_shift_indices(digits, "reference")
    np.testing.assert_array_equal(e0, np.sort(np.concatenate([low, high[:1500]])))
    np.testing.assert_array_equal(e1, high[1500:])
    e0, e1 = label_shift_indices(digits, "intended")
    assert np.sum(digits[e0] < 5) == int(0.97 * len(low))
    assert np.sum(digits[e0] >= 5) == int(0.03 * len(high))
    np.testing.assert_array_equal(np.sort(np.concatenate([e0, e1])), np.arange(50_000))


@pytest.mark.parametrize("split", ["intended", "reference"])
def test_label_shift_class_proportions(split):
    envs = make_environments("colored_mnist_label_shift", 0, mnist=LARGE, split=split)
    d0, d1 = (ids_and_digits(e.images)[1] for e in envs[:2])
    low = np.sum(d0 < 5) + np.sum(d1 < 5)
    high = np.sum(d0 >= 5) + np.sum(d1 >= 5)
    n_fit = len(d0) + len(d1)
    assert n_fit == 6000 * 5 // 6
    if split == "intended":
        assert np.sum(d0 < 5) == int(0.97 * low) and np.sum(d0 >= 5) == int(0.03 * high)
    else:
        assert np.sum(d0 < 5) == low and np.sum(d0 >= 5) == int(0.03 * n_fit)
        assert np.all(d1 >= 5)
    ids = [ids_and_digits(e.images)[0] for e in envs[:3]]
    assert not np.intersect1d(np.concatenate(ids[:2]), ids[2]).size


def test_label_shift_default_is_intended():
    a = make_environments("colored_mnist_label_shift", 0, mnist=SMALL)
    b = make_environments("colored_mnist_label_shift", 0, mnist=SMALL, split="intended")
    chex.assert_trees_all_equal([e[1:] for e in a], [e[1:] for e in b])


def test_domainbed_envs_partition_all_images():
    envs = make_environments("domainbed_colored_mnist", 0, mnist=SMALL)
    ids = np.concatenate([ids_and_digits(e.images)[0] for e in envs])
    np.testing.assert_array_equal(np.sort(ids), np.arange(1000))
    assert [len(e.labels) for e in envs] == [334, 333, 333]


def test_rotated_mnist():
    envs = make_environments("rotated_mnist", 0, mnist=SMALL)
    assert [len(e.labels) for e in envs] == [167, 167, 167, 167, 166, 166]
    ids, digits = ids_and_digits(envs[0].images)        # angle 0 leaves pixels intact
    np.testing.assert_array_equal(envs[0].labels, digits)
    pool = np.concatenate([SMALL.train_images, SMALL.test_images])
    np.testing.assert_array_equal(envs[0].images[..., 0], pool[ids] / np.float32(255))
    assert sorted(set(np.concatenate([e.labels for e in envs]))) == list(range(10))


def test_rotate():
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(rotate(x, 0), x)
    np.testing.assert_array_equal(rotate(x, 90), np.rot90(x, axes=(1, 2)))  # counter-clockwise
    np.testing.assert_array_equal(rotate(x, 180), x[:, ::-1, ::-1])
    dot = np.zeros((1, 28, 28), np.uint8)
    dot[0, 13, 27] = 255                                 # right edge, just above centre row
    assert (rotate(dot, 45) > 0).sum() > 1               # bilinear spreads it
    assert rotate(dot, 45)[0, :13].sum() > 0             # and it moves up (counter-clockwise)


@pytest.mark.parametrize("call, message", [
    (lambda: make_environments("foo", mnist=SMALL),
     "unknown dataset 'foo'; valid: colored_mnist, colored_mnist_label_shift, "
     "domainbed_colored_mnist, rotated_mnist"),
    (lambda: make_environments("colored_mnist", mnist=SMALL, split="x"),
     "unknown option 'split' for dataset 'colored_mnist'; valid: (none)"),
    (lambda: make_environments("colored_mnist_label_shift", mnist=SMALL, split="x"),
     "unknown split 'x' for dataset 'colored_mnist_label_shift'; valid: intended, reference"),
    (lambda: make_environments("colored_mnist_label_shift", mnist=SMALL, splt="reference"),
     "unknown option 'splt' for dataset 'colored_mnist_label_shift'; valid: split"),
])
def test_bad_names_and_options(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message


def test_bad_mnist_shape_is_a_value_error():
    from hjax.data.schema import Mnist, canonical
    with pytest.raises(ValueError, match="train_images"):
        canonical(Mnist(np.zeros((3, 28, 27), np.uint8), np.zeros(3, int),
                        np.zeros((1, 28, 28), np.uint8), np.zeros(1, int)))


@pytest.mark.parametrize("name,split", [("colored_mnist", "intended"),
                                        ("colored_mnist_label_shift", "intended"),
                                        ("colored_mnist_label_shift", "reference")])
@pytest.mark.parametrize("seed", [0, 3, 20001])
def test_device_built_draws_equal_the_host_builders_bit_for_bit(name, split, seed):
    from hjax.data import irm_draws
    options = {"split": split} if name == "colored_mnist_label_shift" else {}
    reference = make_environments(name, seed=seed, mnist=LARGE, **options)
    draws = irm_draws.draw_irm(LARGE.train_labels, name, seed, split)
    fast = irm_draws.environments_from_draws(irm_draws.device_images(LARGE.train_images), draws)
    assert [e.name for e in fast] == [e.name for e in reference]
    for got, want in zip(fast, reference):
        assert got.images.dtype == want.images.dtype and got.labels.dtype == want.labels.dtype
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_array_equal(got.labels, want.labels)


def test_stacked_draws_pad_like_stack_domains_and_zero_the_padding():
    from hjax.data import irm_draws
    from hjax.protocols.irm_cmnist.train import stack_domains
    u8 = irm_draws.device_images(LARGE.train_images)
    restarts = [irm_draws.draw_irm(LARGE.train_labels, "colored_mnist_label_shift", s)
                for s in (1, 2)]
    stacked = irm_draws.stack_draws(restarts, (0, 1), multiple=7)
    images = np.asarray(irm_draws.materialize(u8, stacked.index, stacked.colors,
                                              stacked.weights, stacked.gray))
    for r, seed in enumerate((1, 2)):
        envs = make_environments("colored_mnist_label_shift", seed=seed, mnist=LARGE)
        want = stack_domains(envs[:2], 7)
        np.testing.assert_array_equal(images[r], want.images)
        np.testing.assert_array_equal(stacked.labels[r], want.labels)
        np.testing.assert_array_equal(stacked.weights[r], want.weights)
