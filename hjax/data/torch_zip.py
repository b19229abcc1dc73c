"""A ``torch.save``'d state dict (torch's zip format) read into numpy arrays, without torch.

The format (torch >= 1.6): a zip whose entries lie under one top folder: ``data.pkl`` (a
pickle), ``data/<key>`` (one raw storage each, in the byte order of the ``byteorder`` entry),
``version`` and others. In ``data.pkl`` each tensor is
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
whose ``storage`` is a persistent id ``('storage', torch.<Type>Storage, '<key>', location,
numel)``.

Like :mod:`hjax.data.safe_pickle`, the unpickler admits a handful of globals and nothing
else (``collections.OrderedDict``, the two tensor rebuild functions, the storage types):
any other global in the pickle refuses the file, so no pickled code runs. A persistent id
becomes a lazy storage (the entry is read when a tensor needs it) and a tensor becomes a
numpy array of the storage's bytes at its offset, size and strides (strides in elements,
bounds checked), copied so that it owns its memory. bfloat16 (which numpy lacks) is widened
to float32, the same as the safetensors reader does. torch's own ``weights_only=True`` loader
works the same way; tests/test_fetch_weights.py checks that both give the same arrays.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import NamedTuple

import numpy as np

from hjax.errors import ConfigError


class TorchFileError(ConfigError):
    """A file that is not a torch zip state dict hjax can read (one line)."""


# torch.<Name>Storage -> numpy dtype (little-endian); BFloat16 is widened to float32 by hand.
_STORAGES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
             "BFloat16Storage": "<u2", "LongStorage": "<i8", "IntStorage": "<i4",
             "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
             "BoolStorage": "?"}


class _StorageType(NamedTuple):
    name: str


class _Storage(NamedTuple):
    """A storage not read yet: the zip entry ``data/<key>`` of ``numel`` elements."""
    kind: str
    key: str
    numel: int


def _rebuild_tensor(storage, offset, size, stride, *_):
    return ("tensor", storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(tensor, *_):
    return tensor


_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}; only tensors of a state dict "
                "are read") from None

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        return _Storage(pid[1].name, str(pid[2]), int(pid[4]))


def _array(z: zipfile.ZipFile, prefix: str, big_endian: bool, record, key: str,
           path: str) -> np.ndarray:
    _, storage, offset, size, stride = record
    dtype = np.dtype(_STORAGES[storage.kind])
    if big_endian:
        dtype = dtype.newbyteorder(">")
    try:
        raw = z.read(f"{prefix}data/{storage.key}")
    except KeyError:
        raise TorchFileError(f"{path}: tensor {key!r}: storage entry data/{storage.key} "
                             "is missing") from None
    if len(raw) < storage.numel * dtype.itemsize:
        raise TorchFileError(f"{path}: tensor {key!r}: storage data/{storage.key} holds "
                             f"{len(raw)} bytes, fewer than its {storage.numel} elements")
    flat = np.frombuffer(raw, dtype, count=storage.numel)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
        raise TorchFileError(f"{path}: tensor {key!r}: bad size {size} / stride {stride}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= storage.numel:
        raise TorchFileError(f"{path}: tensor {key!r}: size {size}, stride {stride} and "
                             f"offset {offset} reach past its {storage.numel} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * dtype.itemsize for s in stride),
        writeable=False) if all(size) else np.empty(size, dtype)
    array = np.array(view, dtype=dtype.newbyteorder("<"))       # owns its memory
    if storage.kind == "BFloat16Storage":           # bfloat16 = the high 16 bits of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def read_torch_zip(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: numpy array} from a ``torch.save``'d state dict (or a checkpoint holding one
    under ``state_dict``). Raises TorchFileError with one line naming the file."""
    path = os.fspath(path)
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise TorchFileError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise TorchFileError(f"{path}: not a torch zip file (torch.save of torch >= 1.6): "
                             f"{' '.join(str(e).split())}") from None
    with z:
        pkl = [n for n in z.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise TorchFileError(f"{path}: not a torch zip file (no <folder>/data.pkl entry)")
        prefix = pkl[0][:-len("data.pkl")]
        try:
            order = z.read(f"{prefix}byteorder").decode().strip()
        except KeyError:
            order = "little"                 # files of torch < 2.1 have no entry: little
        try:
            obj = _Unpickler(io.BytesIO(z.read(pkl[0]))).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
                AttributeError, IndexError, zipfile.BadZipFile) as e:
            raise TorchFileError(f"{path}: {' '.join(str(e).split())[:200]}") from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise TorchFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        out = {}
        for key, record in obj.items():
            if not (isinstance(record, tuple) and record and record[0] == "tensor"):
                raise TorchFileError(f"{path}: {key!r} is a {type(record).__name__}, "
                                     "not a tensor")
            out[str(key)] = _array(z, prefix, order == "big", record, key, path)
        return out
