"""The torchvision-layout ResNets (hjax.models.resnet) and their weight files, without torch.

Forward passes are ResNet-18/50 on 2 images of 32x32 to keep CPU time small; the equivalence
with torchvision itself is tests/test_resnet_torchvision.py (needs torch).
"""

import importlib.util
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hjax.models import ResNetModel, resnet_model
from hjax.models import torchvision_weights as tw
from hjax.models.torchvision_weights import WeightsFileError

IMAGES = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))


def expected_torchvision_keys(arch):
    """torchvision's state_dict keys (fc and num_batches_tracked aside), written out by hand."""
    bottleneck, blocks = {"resnet18": (False, [2, 2, 2, 2]),
                          "resnet50": (True, [3, 4, 6, 3])}[arch]
    bn = lambda m: [f"{m}.weight", f"{m}.bias", f"{m}.running_mean", f"{m}.running_var"]
    keys = ["conv1.weight", *bn("bn1")]
    for stage, n in enumerate(blocks, start=1):
        for b in range(n):
            for i in range(1, 4 if bottleneck else 3):
                keys += [f"layer{stage}.{b}.conv{i}.weight", *bn(f"layer{stage}.{b}.bn{i}")]
            if b == 0 and (stage > 1 or bottleneck):     # stride 2, or 64 -> 256 channels
                keys += [f"layer{stage}.{b}.downsample.0.weight",
                         *bn(f"layer{stage}.{b}.downsample.1")]
    return keys


def random_state_dict(arch, seed=0):
    """A torchvision-keyed state_dict with random values (positive running_var)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in tw.expected_keys(arch).items():
        value = rng.normal(0.0, 0.05, shape).astype(np.float32)
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif key.endswith(".weight") and len(shape) == 1:         # BN scale near 1
            value = 1.0 + value
        state[key] = value
    state["bn1.num_batches_tracked"] = np.array(7, np.int64)      # ignored on import
    return state


def write_safetensors(path, tensors):
    """A minimal safetensors writer: {name: (dtype name, little-endian bytes, shape)}."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, data, shape) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def bf16_bytes(x):
    """float32 -> bfloat16 by truncation (the high 16 bits)."""
    return (np.asarray(x, "<f4").view("<u4") >> 16).astype("<u2").tobytes()


@pytest.fixture(scope="module")
def r18():
    state = random_state_dict("resnet18")
    f_params, stats = tw.from_torchvision(state, "resnet18")
    model = resnet_model("resnet18", 3, batch_stats=stats, featurizer_params=f_params)
    return state, model, model.init(jax.random.key(0), IMAGES)


def test_parameter_counts_equal_torchvision():
    for arch, count in (("resnet18", 11_689_512), ("resnet50", 25_557_032)):
        model = resnet_model(arch, 1000)
        params = jax.eval_shape(model.init, jax.random.key(0), IMAGES)
        assert sum(x.size for x in jax.tree.leaves(params)) == count, arch
        assert set(params["classifier"]) == {"kernel", "bias"}
        # Running statistics are constants of the model, never params.
        names = {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(params)}
        assert names == {"kernel", "scale", "bias"}
        stats = jax.tree_util.tree_leaves_with_path(model.batch_stats)
        assert {p[-1].key for p, _ in stats} == {"mean", "var"}


def test_feature_shapes_resnet18_and_resnet50(r18):
    _, model, params = r18
    assert isinstance(model, ResNetModel)
    z = model.features(params, IMAGES)
    assert z.shape == (2, 512) and z.dtype == jnp.float32 and bool(jnp.isfinite(z).all())
    assert model.apply(params, IMAGES).shape == (2, 3)
    # Random weights from numpy: Flax's own init of ResNet-50 costs ~10 s of CPU here.
    f50, stats50 = tw.from_torchvision(random_state_dict("resnet50"), "resnet50")
    m50 = resnet_model("resnet50", 5, batch_stats=stats50, featurizer_params=f50)
    p50 = m50.init(jax.random.key(0), IMAGES)
    assert m50.features(p50, IMAGES).shape == (2, 2048)
    assert p50["classifier"]["kernel"].shape == (2048, 5)


def test_batchnorm_frozen_under_adam_with_weight_decay(r18):
    _, model, params = r18
    stats_before = jax.tree.map(np.array, model.batch_stats)
    # DomainBed's optimizer: coupled L2 weight decay, then Adam.
    opt = optax.chain(optax.add_decayed_weights(0.1), optax.adam(1e-2))
    labels = jnp.array([0, 2])

    @jax.jit
    def step(p, s):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, IMAGES), labels).mean()
        updates, s = opt.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    new, _ = step(params, opt.init(params))
    jax.tree.map(np.testing.assert_array_equal, model.batch_stats, stats_before)
    f_old, f_new = params["featurizer"], new["featurizer"]
    for name in ("scale", "bias"):          # BN affine params are trained
        assert not np.allclose(f_old["bn1"][name], f_new["bn1"][name])
        assert not np.allclose(f_old["layer4_1"]["bn2"][name], f_new["layer4_1"]["bn2"][name])
    # Running statistics, not the batch's: an image's features do not depend on its batch.
    np.testing.assert_allclose(model.features(new, IMAGES[:1]), model.features(new, IMAGES)[:1],
                               rtol=1e-5, atol=1e-5)


def test_dropout_only_with_a_key(r18):
    state, _, params = r18
    f_params, stats = tw.from_torchvision(state, "resnet18")
    model = resnet_model("resnet18", 3, dropout=0.5, batch_stats=stats)
    plain = model.features(params, IMAGES)
    np.testing.assert_array_equal(plain, model.features(params, IMAGES))
    key = jax.random.key(3)
    dropped = model.features(params, IMAGES, dropout_key=key)
    np.testing.assert_array_equal(dropped, model.features(params, IMAGES, dropout_key=key))
    kept = np.asarray(dropped) != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(np.asarray(dropped)[kept], 2 * np.asarray(plain)[kept], rtol=1e-5)
    # No dropout configured: a key changes nothing.
    no_drop = resnet_model("resnet18", 3, batch_stats=stats)
    np.testing.assert_array_equal(no_drop.features(params, IMAGES, dropout_key=key), plain)


def test_bfloat16_compute_float32_params(r18):
    state, model, params = r18
    f_params, stats = tw.from_torchvision(state, "resnet18")
    half = resnet_model("resnet18", 3, dtype=jnp.bfloat16, batch_stats=stats)
    z16, z32 = half.features(params, IMAGES), model.features(params, IMAGES)
    assert z16.dtype == jnp.float32
    assert all(x.dtype == jnp.float32
               for x in jax.tree.leaves(jax.eval_shape(half.init, jax.random.key(0), IMAGES)))
    np.testing.assert_allclose(z16, z32, atol=0.05 * float(jnp.abs(z32).max()))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_exporter_gives_every_torchvision_key(arch):
    model = resnet_model(arch, 10)
    f_params = jax.eval_shape(model.init, jax.random.key(0), IMAGES)["featurizer"]
    f_params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), f_params)
    state = tw.to_torchvision(f_params, model.batch_stats, arch)
    assert list(state) == expected_torchvision_keys(arch)
    assert list(tw.expected_keys(arch)) == expected_torchvision_keys(arch)
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (
        (128, 64, 1, 1) if arch == "resnet18" else (512, 256, 1, 1))


def test_round_trip_export_import(r18, tmp_path):
    state, model, params = r18
    exported = tw.to_torchvision(params["featurizer"], model.batch_stats, "resnet18")
    assert set(exported) == set(state) - {"bn1.num_batches_tracked"}
    for key, value in exported.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    path = str(tmp_path / "r18.npz")
    tw.save_npz(path, exported)
    f_params, stats = tw.load_torchvision(path, "resnet18")
    jax.tree.map(np.testing.assert_array_equal, f_params, params["featurizer"])
    jax.tree.map(np.testing.assert_array_equal, stats, model.batch_stats)
    again = tw.pretrained_resnet_model(path, "resnet18", 3)
    p2 = again.init(jax.random.key(0), IMAGES)
    np.testing.assert_array_equal(again.apply(p2, IMAGES), model.apply(params, IMAGES))


def test_safetensors_and_npz_readers(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4)).astype(np.float32)
    b = rng.normal(size=(5,)).astype(np.float32)
    path = str(tmp_path / "w.safetensors")
    write_safetensors(path, {"a": ("F32", a.astype("<f4").tobytes(), a.shape),
                             "h": ("F16", a.astype("<f2").tobytes(), a.shape),
                             "b": ("BF16", bf16_bytes(b), b.shape),
                             "n": ("I64", np.int64(9).astype("<i8").tobytes(), ())})
    got = tw.read_safetensors(path)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["h"], a.astype(np.float16))
    assert got["b"].dtype == np.float32 and got["n"] == 9
    np.testing.assert_allclose(got["b"], b, rtol=2 ** -7)            # bfloat16: 8-bit mantissa
    np.testing.assert_array_equal(
        got["b"], (b.view(np.uint32) & 0xFFFF0000).view(np.float32))  # exactly truncated
    npz = str(tmp_path / "w.npz")
    np.savez(npz, a=a, b=b)
    got = tw.read_state_dict(npz)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)


def assert_one_line(err, *parts):
    text = str(err.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, text


def test_clear_errors_for_bad_files(r18, tmp_path):
    state = r18[0]
    # Truncated safetensors and npz.
    full = str(tmp_path / "full.safetensors")
    small = {k: state[k] for k in ("conv1.weight", "bn1.weight")}
    write_safetensors(full, {k: ("F32", v.tobytes(), v.shape) for k, v in small.items()})
    cut = str(tmp_path / "cut.safetensors")
    with open(full, "rb") as f, open(cut, "wb") as g:
        g.write(f.read()[:-100])
    with pytest.raises(WeightsFileError) as err:
        tw.load_torchvision(cut, "resnet18")
    assert_one_line(err, cut, "truncated", "bn1.weight")
    npz = str(tmp_path / "cut.npz")
    np.savez(str(tmp_path / "full.npz"), **small)
    with open(tmp_path / "full.npz", "rb") as f, open(npz, "wb") as g:
        g.write(f.read()[:3000])
    with pytest.raises(WeightsFileError) as err:
        tw.load_torchvision(npz, "resnet18")
    assert_one_line(err, npz, "corrupt or not an .npz file")
    # A missing key, a wrong shape, the other architecture either way.
    missing = {k: v for k, v in state.items() if k != "layer3.1.bn2.running_var"}
    with pytest.raises(WeightsFileError) as err:
        tw.from_torchvision(missing, "resnet18", source="m.npz")
    assert_one_line(err, "m.npz", "missing key 'layer3.1.bn2.running_var'")
    bad = dict(state, **{"layer1.0.conv2.weight": np.zeros((64, 64, 1, 1), np.float32)})
    with pytest.raises(WeightsFileError) as err:
        tw.from_torchvision(bad, "resnet18", source="s.npz")
    assert_one_line(err, "s.npz", "'layer1.0.conv2.weight' has shape (64, 64, 1, 1)",
                    "expected (64, 64, 3, 3)")
    with pytest.raises(WeightsFileError) as err:
        tw.from_torchvision(state, "resnet50", source="r18.npz")
    assert_one_line(err, "r18.npz", "'layer1.0.conv1.weight'", "resnet50",
                    "looks like a resnet18")
    r50 = {k: np.zeros(s, np.float32) for k, s in tw.expected_keys("resnet50").items()}
    with pytest.raises(WeightsFileError) as err:
        tw.from_torchvision(r50, "resnet18", source="r50.npz")
    assert_one_line(err, "r50.npz", "unexpected key 'layer1.0.conv3.weight'",
                    "looks like a resnet50")
    for name in ("w.bin", "absent.npz"):
        with pytest.raises(WeightsFileError) as err:
            tw.load_torchvision(str(tmp_path / name), "resnet18")
        assert_one_line(err, name)


def test_pth_without_torch_says_what_to_do(tmp_path):
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed")
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    with pytest.raises(WeightsFileError) as err:
        tw.load_torchvision(str(path), "resnet18")
    assert_one_line(err, str(path), "needs torch", "convert_weights", ".npz or .safetensors")


def test_convert_weights_cli(r18, tmp_path, capsys):
    from hjax.cli.convert_weights import main

    state = r18[0]
    src = str(tmp_path / "r18.safetensors")
    write_safetensors(src, {k: ("F32" if v.dtype == np.float32 else "I64", v.tobytes(), v.shape)
                            for k, v in state.items()})
    out = str(tmp_path / "out.npz")
    main(["convert_weights", f"--input={src}", f"--output={out}", "--arch=resnet18"])
    assert "wrote" in capsys.readouterr().out
    converted = tw.read_npz(out)
    assert set(converted) == set(tw.expected_keys("resnet18"))
    for key, value in converted.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    with pytest.raises(SystemExit) as exit_:
        main(["convert_weights", f"--input={src}", f"--output={out}", "--arch=resnet50"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and src in err and "looks like a resnet18" in err
    with pytest.raises(SystemExit) as exit_:
        main(["convert_weights", "--help"])
    assert exit_.value.code == 0
    assert "--arch" in capsys.readouterr().out
