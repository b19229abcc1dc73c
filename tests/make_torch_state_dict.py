"""Makes tests/data/torch_state_dict.pth and its reference .npz (run once, with torch).

Not part of the suite: torch is not a dependency. It was run once with torch 2.13.0 (CPU)
and numpy in a separate virtual environment:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python tests/make_torch_state_dict.py

The state dict has torchvision ResNet key names and every case the torch-free reader
(hjax.data.torch_zip) must get right: float32 conv and BN tensors, an int64 scalar
(``num_batches_tracked``), a float16 tensor, a transposed (non-contiguous) view and a view at
an offset into a larger storage, two tensors sharing one storage, and a bfloat16 tensor.
``torch_state_dict.npz`` holds what torch itself reads back from the file
(``torch.load(weights_only=True)``, each tensor as numpy; bfloat16 widened to float32), so
the test compares the torch-free reader with torch without needing torch.
"""

from __future__ import annotations

import collections
import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).parent / "data"


def state_dict() -> collections.OrderedDict:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(6, 5, generator=g)
    state = collections.OrderedDict()
    state["conv1.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    state["bn1.weight"] = torch.rand(4, generator=g)
    state["bn1.bias"] = torch.randn(4, generator=g)
    state["bn1.running_mean"] = torch.randn(4, generator=g)
    state["bn1.running_var"] = torch.rand(4, generator=g) + 0.5
    state["bn1.num_batches_tracked"] = torch.tensor(123, dtype=torch.int64)
    state["layer1.0.conv1.weight"] = torch.randn(4, 4, 1, 1, generator=g).half()
    state["fc.weight"] = big.t()                    # non-contiguous: strides (1, 5)
    state["fc.bias"] = big[2, 1:4]                  # offset 11 into the same storage
    state["layer1.0.bn1.weight"] = torch.randn(3, generator=g).to(torch.bfloat16)
    return state


def main() -> None:
    OUT.mkdir(exist_ok=True)
    pth = OUT / "torch_state_dict.pth"
    torch.save(state_dict(), pth)
    loaded = torch.load(pth, map_location="cpu", weights_only=True)
    arrays = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in
              loaded.items()}
    np.savez(OUT / "torch_state_dict.npz", **arrays)
    print(f"wrote {pth} ({pth.stat().st_size} bytes), {len(arrays)} tensors")


if __name__ == "__main__":
    main()
