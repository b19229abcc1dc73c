"""torchvision ResNet state_dicts <-> the Flax params and batch_stats of :mod:`hjax.models.resnet`.

The mapping, key by key (``fc.*`` and ``*.num_batches_tracked`` are ignored):

    <module>.weight (conv, OIHW)   -> params[<path>]["kernel"]  (HWIO)
    <module>.weight / .bias (BN)   -> params[<path>]["scale"] / ["bias"]
    <module>.running_mean / _var   -> batch_stats[<path>]["mean"] / ["var"]

where ``<path>`` is the module name with ``layerS.B`` -> ``layerS_B`` and
``downsample.K`` -> ``downsample_K``. Files: ``.npz`` (numpy; keys = state_dict keys: what
``python -m hjax.cli.convert_weights`` writes), ``.safetensors`` (read here with the standard
library and numpy) and ``.pth`` (only where torch is importable). A file that does not fit the
architecture raises :class:`WeightsFileError` (a ``ValueError``) with one line naming the file
and the first bad key.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from typing import Iterator

import numpy as np

from hjax.errors import ConfigError
from hjax.models.resnet import ARCHS, EXPANSION, STAGE_WIDTHS


class WeightsFileError(ConfigError):
    """A weights file that cannot be read or does not fit the architecture (one line)."""


def _one_line(e: BaseException, limit: int = 160) -> str:
    """A library's error message as one short line (torch's run to several sentences)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------- the layout

def layout(arch: str) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(torchvision module name, "conv" | "bn", torch shape) for every module, in order.

    Built from the architecture alone, the same way torchvision builds the model."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not valid; choose one of: {', '.join(ARCHS)}")
    kind, stages = ARCHS[arch]
    expansion = EXPANSION[kind]
    yield "conv1", "conv", (64, 3, 7, 7)
    yield "bn1", "bn", (64,)
    in_ch = 64
    for s, (width, blocks) in enumerate(zip(STAGE_WIDTHS, stages), start=1):
        for b in range(blocks):
            stride = 2 if s > 1 and b == 0 else 1
            prefix, out_ch = f"layer{s}.{b}", width * expansion
            if kind == "basic":
                convs = [(width, in_ch, 3), (width, width, 3)]
            else:
                convs = [(width, in_ch, 1), (width, width, 3), (out_ch, width, 1)]
            for i, (o, c, k) in enumerate(convs, start=1):
                yield f"{prefix}.conv{i}", "conv", (o, c, k, k)
                yield f"{prefix}.bn{i}", "bn", (o,)
            if stride != 1 or in_ch != out_ch:
                yield f"{prefix}.downsample.0", "conv", (out_ch, in_ch, 1, 1)
                yield f"{prefix}.downsample.1", "bn", (out_ch,)
            in_ch = out_ch


def flax_path(module: str) -> tuple[str, ...]:
    """'layer1.0.downsample.1' -> ('layer1_0', 'downsample_1')."""
    parts, path = module.split("."), []
    while parts:
        head = parts.pop(0)
        if parts and parts[0].isdigit():
            head = f"{head}_{parts.pop(0)}"
        path.append(head)
    return tuple(path)


# Per module kind: (torch suffix, flax collection, flax leaf name).
_LEAVES = {"conv": [("weight", "params", "kernel")],
           "bn": [("weight", "params", "scale"), ("bias", "params", "bias"),
                  ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var")]}


def expected_keys(arch: str) -> dict[str, tuple[int, ...]]:
    """Every torchvision state_dict key the featurizer needs (fc and counters aside) -> shape."""
    return {f"{module}.{suffix}": shape
            for module, kind, shape in layout(arch) for suffix, _, _ in _LEAVES[kind]}


def _ignored(key: str) -> bool:
    return key.startswith("fc.") or key.endswith(".num_batches_tracked")


# ----------------------------------------------------------------------------- mapping

def _guess_arch(state: dict) -> str | None:
    for arch in ARCHS:
        want = expected_keys(arch)
        if all(k in state and tuple(state[k].shape) == s for k, s in want.items()):
            return arch
    return None


def from_torchvision(state: dict, arch: str, source: str = "state_dict") -> tuple[dict, dict]:
    """A torchvision state_dict (name -> array-like) -> (featurizer params, batch_stats), float32.

    Raises WeightsFileError naming ``source`` and the first missing, misshapen or unexpected key.
    """
    want = expected_keys(arch)

    def fail(what):
        other = _guess_arch(state)
        hint = f" (it looks like a {other} state_dict)" if other and other != arch else ""
        raise WeightsFileError(f"{source}: {what} for {arch}{hint}")

    for key in state:
        if key not in want and not _ignored(key):
            fail(f"unexpected key {key!r}")
    params, stats = {}, {}
    for module, kind, shape in layout(arch):
        for suffix, collection, leaf in _LEAVES[kind]:
            key = f"{module}.{suffix}"
            if key not in state:
                fail(f"missing key {key!r}")
            value = np.asarray(state[key])
            if tuple(value.shape) != shape:
                fail(f"{key!r} has shape {tuple(value.shape)}, expected {shape}")
            if kind == "conv":
                value = value.transpose(2, 3, 1, 0)                      # OIHW -> HWIO
            node = params if collection == "params" else stats
            for part in flax_path(module):
                node = node.setdefault(part, {})
            node[leaf] = np.asarray(value, np.float32)
    return params, stats


def to_torchvision(params, batch_stats, arch: str) -> dict[str, np.ndarray]:
    """(featurizer params, batch_stats) -> {torchvision key: float32 numpy array} (no fc).

    Every leaf must be used: a params tree of another architecture is an error."""
    trees = {"params": params, "batch_stats": batch_stats}
    used, out = set(), {}
    for module, kind, shape in layout(arch):
        for suffix, collection, leaf in _LEAVES[kind]:
            node = trees[collection]
            path = flax_path(module) + (leaf,)
            try:
                for part in path:
                    node = node[part]
            except (KeyError, TypeError):
                raise ValueError(f"{collection} has no {'/'.join(path)} for {arch}") from None
            value = np.asarray(node, np.float32)
            if kind == "conv":
                value = value.transpose(3, 2, 0, 1)                      # HWIO -> OIHW
            if value.shape != shape:
                raise ValueError(f"{collection} {'/'.join(path)} has torch shape {value.shape}, "
                                 f"expected {shape} for {arch}")
            out[f"{module}.{suffix}"] = value
            used.add((collection, path))
    for collection, tree in trees.items():
        for path, _ in _leaves(tree):
            if (collection, path) not in used:
                raise ValueError(f"{collection} {'/'.join(path)} is not part of {arch}")
    return out


def _leaves(tree, prefix=()):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for k, v in tree.items():
            yield from _leaves(v, prefix + (k,))
    else:
        yield prefix, tree


# ----------------------------------------------------------------------------- file readers

# safetensors dtype -> numpy dtype (little-endian); BF16 is widened to float32 by hand.
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
                       "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A .safetensors file -> {name: numpy array}: an 8-byte little-endian header length, a
    JSON header {name: {dtype, shape, data_offsets}}, then the raw little-endian data."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise WeightsFileError(f"{path}: cannot read ({e.strerror})") from None
    if len(raw) < 8:
        raise WeightsFileError(f"{path}: not a safetensors file (only {len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise WeightsFileError(f"{path}: truncated safetensors file (header of {n} bytes, "
                               f"file of {len(raw)})")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise WeightsFileError(f"{path}: bad safetensors header ({_one_line(e)})") from None
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except KeyError as e:
            raise WeightsFileError(f"{path}: tensor {name!r}: unsupported or missing "
                                   f"{_one_line(e)}") from None
        except (TypeError, ValueError) as e:
            raise WeightsFileError(f"{path}: tensor {name!r}: bad header entry "
                                   f"({_one_line(e)})") from None
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not 0 <= begin <= end or end - begin != size:
            raise WeightsFileError(f"{path}: tensor {name!r}: data_offsets {[begin, end]} do not "
                                   f"fit shape {shape} of {info['dtype']}")
        if end > len(data):
            raise WeightsFileError(f"{path}: truncated safetensors file (tensor {name!r} ends at "
                                   f"byte {end} of {len(data)} data bytes)")
        array = np.frombuffer(data[begin:end], dtype).reshape(shape)
        if info["dtype"] == "BF16":           # bfloat16 = the high 16 bits of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array.copy()              # own the memory, not the file's buffer
    return out


def read_npz(path: str) -> dict[str, np.ndarray]:
    """An .npz of {state_dict key: array}, read eagerly so a damaged member fails here."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except OSError as e:
        raise WeightsFileError(f"{path}: cannot read ({_one_line(e)})") from None
    except (zipfile.BadZipFile, ValueError, EOFError, KeyError, zipfile.LargeZipFile) as e:
        raise WeightsFileError(f"{path}: corrupt or not an .npz file ({npz_problem(e)})"
                               ) from None


def npz_problem(e: BaseException) -> str:
    """Why np.load(allow_pickle=False) failed, in a few words. Bytes that are neither a zip
    nor an .npy header make numpy guess "pickled data" and advise loading it unsafely:
    that advice is wrong for a damaged file, so it is never passed on."""
    if isinstance(e, ValueError) and "pickle" in str(e):
        return "neither a zip archive nor a numpy array"
    if isinstance(e, EOFError):
        return "empty or cut short"
    return _one_line(e)


def read_pth(path: str) -> dict[str, np.ndarray]:
    """A torch.save'd state_dict (needs torch; loaded with weights_only=True, no pickled code)."""
    try:
        import torch
    except ImportError:
        raise WeightsFileError(
            f"{path}: reading .pth needs torch, which is not installed; for torchvision's "
            f"ImageNet weights use --pretrained=imagenet (fetched by `python -m "
            f"hjax.cli.fetch_data --weights=ARCH`, no torch needed); else convert it with "
            f"`python -m hjax.cli.convert_weights --input=FILE.pth --output=FILE.npz` where torch "
            f"is installed, or give a .npz or .safetensors file") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:       # torch raises many kinds (RuntimeError, EOFError, pickle...)
        raise WeightsFileError(f"{path}: not a readable torch file ({_one_line(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]                  # a training checkpoint around it
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsFileError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor")
        value = value.detach()
        # numpy has no bfloat16: floats go through float32 (what hjax uses anyway).
        out[key] = (value.float() if value.is_floating_point() else value).numpy()
    return out


READERS = {".npz": read_npz, ".safetensors": read_safetensors, ".pth": read_pth,
           ".pt": read_pth}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{torchvision key: numpy array} from a .npz, .safetensors or .pth/.pt file."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in READERS:
        raise WeightsFileError(f"{path}: unknown weights format {ext or '(no extension)'!r}; "
                               f"give one of: {', '.join(READERS)}")
    if not os.path.isfile(path):
        raise WeightsFileError(f"{path}: no such file")
    return READERS[ext](path)


def load_torchvision(path: str, arch: str) -> tuple[dict, dict]:
    """(featurizer params, batch_stats) from a torchvision ``arch`` weights file."""
    return from_torchvision(read_state_dict(path), arch, source=path)


def save_npz(path: str, state: dict[str, np.ndarray]) -> None:
    """Write {key: array} as .npz atomically (a temp file renamed over ``path``)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **state)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pretrained_resnet_model(path: str, arch: str, num_classes: int, **kwargs):
    """:func:`hjax.models.resnet.resnet_model` with the weights of a torchvision file: ``init``
    then returns these featurizer params (only the head is drawn) and BN uses their statistics."""
    from hjax.models.resnet import resnet_model
    params, stats = load_torchvision(path, arch)
    return resnet_model(arch, num_classes, batch_stats=stats, featurizer_params=params, **kwargs)
