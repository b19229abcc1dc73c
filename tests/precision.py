"""The suite's arithmetic precision, stated in one place.

Tests compare against oracles (dense Hessians, closed forms, finite differences) and against
another framework (torchvision) with float32 tolerances. On CPUs float32 matmuls and
convolutions are exact float32; on NVIDIA GPUs from Ampere on, JAX's default precision and
PyTorch's cuDNN default use TF32 (10-bit mantissa, ~1e-3 relative error per product), which
breaks those tolerances (ResNet-50 against torchvision: 1.1e-4 with TF32 on an H200, 1.3e-7 on
a CPU). So the whole suite runs at full float32 precision on every backend:

* JAX: ``jax_default_matmul_precision = "highest"`` for the test process and, through
  ``JAX_DEFAULT_MATMUL_PRECISION``, for every subprocess a test starts (tests/conftest.py
  calls :func:`configure_jax`). It governs dots and convolutions whose ``precision`` is not
  given; code that sets it explicitly (hjax.models.tf32's emulated TF32) is unaffected.
* PyTorch: :func:`torch_full_float32` turns TF32 off for matmuls and cuDNN convolutions.

With this, every tolerance in the suite is a float32 tolerance and holds on CPU and GPU.
"""

from __future__ import annotations

import os

MATMUL_PRECISION = "highest"


def configure_jax() -> None:
    import jax

    os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = MATMUL_PRECISION
    jax.config.update("jax_default_matmul_precision", MATMUL_PRECISION)


def torch_full_float32(torch) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
