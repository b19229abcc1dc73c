"""TF32 matmuls emulated in float32, to test what GPU arithmetic does to a result on a CPU.

PyTorch from 1.7 to 1.11 ran float32 matmuls on Ampere GPUs in TF32 by default: each operand
is rounded to TF32's 10-bit mantissa (8-bit exponent, as float32) and the products are
accumulated in float32. :func:`tf32_dot_general` does the same on any backend: it rounds the
operands (to nearest, ties to even) and multiplies in float32, and its backward pass rounds
the cotangent and the operands of the two transposed products, as those are matmuls too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DROPPED_BITS = 13                    # float32 has 23 mantissa bits, TF32 keeps 10


def round_to_tf32(x: jax.Array) -> jax.Array:
    """float32 -> the nearest TF32 value (ties to even), still stored as float32."""
    x = jnp.asarray(x, jnp.float32)
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    keep_lsb = (bits >> _DROPPED_BITS) & 1
    bits = (bits + jnp.uint32((1 << (_DROPPED_BITS - 1)) - 1) + keep_lsb) \
        & jnp.uint32(~((1 << _DROPPED_BITS) - 1) & 0xFFFFFFFF)
    rounded = lax.bitcast_convert_type(bits, jnp.float32)
    return jnp.where(jnp.isfinite(x), rounded, x)        # inf and NaN pass unchanged


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tf32_dot(lhs, rhs, dimension_numbers):
    return lax.dot_general(round_to_tf32(lhs), round_to_tf32(rhs), dimension_numbers)


def _tf32_dot_fwd(lhs, rhs, dimension_numbers):
    lhs, rhs = round_to_tf32(lhs), round_to_tf32(rhs)
    return lax.dot_general(lhs, rhs, dimension_numbers), (lhs, rhs)


def _tf32_dot_bwd(dimension_numbers, res, g):
    lhs, rhs = res
    _, vjp = jax.vjp(lambda a, b: lax.dot_general(a, b, dimension_numbers), lhs, rhs)
    return vjp(round_to_tf32(g))


_tf32_dot.defvjp(_tf32_dot_fwd, _tf32_dot_bwd)


def tf32_dot_general(lhs, rhs, dimension_numbers, precision=None,
                     preferred_element_type=None):
    """``lax.dot_general`` in emulated TF32 (a drop-in ``dot_general`` for ``flax.linen.Dense``;
    ``precision`` and ``preferred_element_type`` are accepted and ignored: it is float32)."""
    del precision, preferred_element_type
    return _tf32_dot(lhs, rhs, dimension_numbers)
