"""Emulated TF32 matmuls (hjax.models.tf32) against hand-rounded operands and float32."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hjax.models import irm_mlp
from hjax.models.tf32 import round_to_tf32, tf32_dot_general

MATMUL_DIMS = (((1,), (0,)), ((), ()))          # [n, k] x [k, m]


def test_rounding_keeps_ten_mantissa_bits_to_nearest_ties_to_even():
    ulp = 2.0 ** -10                            # TF32's spacing on [1, 2)
    x = np.array([1.0, 1 + ulp, 1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + ulp / 8,
                  -(1 + ulp / 4), 3.0, np.inf, -np.inf], np.float32)
    want = np.array([1.0, 1 + ulp, 1.0, 1 + 2 * ulp, 1 + ulp, -1.0, 3.0, np.inf, -np.inf],
                    np.float32)
    np.testing.assert_array_equal(np.asarray(round_to_tf32(x)), want)
    assert np.isnan(np.asarray(round_to_tf32(np.float32(np.nan))))
    y = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    r = np.asarray(jax.jit(round_to_tf32)(y))
    assert not np.any(r.view(np.uint32) & 0x1FFF)                # low 13 bits cleared
    assert np.max(np.abs(r - y) / np.abs(y)) <= 2.0 ** -11       # half an ulp
    assert np.mean(r != y) > 0.99


class Tf32DotTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_products_and_their_gradients_use_rounded_operands(self):
        kx, kw, kg = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (32, 24))
        w = jax.random.normal(kw, (24, 8))
        g = jax.random.normal(kg, (32, 8))
        dot = self.variant(lambda a, b: tf32_dot_general(a, b, MATMUL_DIMS))
        grads = self.variant(jax.grad(lambda a, b: jnp.sum(
            g * tf32_dot_general(a, b, MATMUL_DIMS)), argnums=(0, 1)))
        rx, rw, rg = round_to_tf32(x), round_to_tf32(w), round_to_tf32(g)
        chex.assert_trees_all_close(dot(x, w), rx @ rw, rtol=1e-6, atol=1e-6)
        dx, dw = grads(x, w)
        chex.assert_trees_all_close((dx, dw), (rg @ rw.T, rx.T @ rg), rtol=1e-6, atol=1e-6)
        # ... which differ from float32's at TF32's precision, not at float32's.
        rel = float(jnp.max(jnp.abs(dx - g @ w.T)) / jnp.max(jnp.abs(g @ w.T)))
        assert 1e-5 < rel < 1e-2, rel


def test_tf32_mlp_has_the_float32_params_and_nearly_its_outputs():
    images = jax.random.uniform(jax.random.key(1), (16, 14, 14, 2))
    fp32, tf32 = irm_mlp(32), irm_mlp(32, matmul="tf32")
    params = fp32.init(jax.random.key(2), images)
    chex.assert_trees_all_equal(params, tf32.init(jax.random.key(2), images))
    a, b = fp32.apply(params, images), tf32.apply(params, images)
    assert 0 < float(jnp.max(jnp.abs(a - b))) < 1e-2 * float(jnp.max(jnp.abs(a)))
    with pytest.raises(ValueError, match="'bf16'"):
        irm_mlp(32, matmul="bf16").init(jax.random.key(2), images)
