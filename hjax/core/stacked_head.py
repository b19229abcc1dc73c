"""HGP and exact-diagonal terms of a linear head for all domains at once, in few feature passes.

Same values as the per-domain closed forms of :mod:`hjax.core.linear_head` combined by
:mod:`hjax.core.penalty` (the tests compare both, and their gradients), written for the training
step's cost. With features Z [E, n, d] of a full-batch step, the head terms are cheap in
arithmetic but every product with Z reads all of it, and autodiff of per-domain code adds
one [n, d] matmul per product to the features' cotangent. Here:

- every product with Z is one einsum over all E * n rows against every domain's columns
  (diagonal blocks kept), and the two HGP products (H_e g_e and H_e gbar) share one pass;
- the features' cotangent of each product is a rank-k outer product (k <= 2C) that the
  custom VJPs below form as broadcast multiply-adds for k <= 4, so XLA fuses all of them,
  and the loss's own, into the one pass that writes dL/dZ;
- the model's logits are reused when the caller passes them.

On ColoredMNIST's step (2 x 25,000 x 390 features, one logit) HGP's head terms read the
features 6 times beyond ERM's step instead of 14 (experiments/bench_train.py for the time).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hjax.core import linear_head

# Above this many columns a matmul beats broadcast multiply-adds for an outer product.
_ELEMENTWISE_MAX_COLUMNS = 4


def _outer(a, b):
    """a @ b^T per domain: a [E, n, k], b [E, d, k] -> [E, n, d]."""
    k = a.shape[-1]
    if k > _ELEMENTWISE_MAX_COLUMNS:
        return jnp.einsum("enk,edk->end", a, b)
    return sum(a[:, :, j, None] * b[:, None, :, j] for j in range(k))


def _flat_times(z, v):
    """Z_e v_e for every domain as one matmul over all E * n feature rows.

    A batched (per-domain) matmul would read Z in its [E, n, d] shape while the model's own
    head reads it as [E * n, d]; XLA then writes the features out twice. Multiplying all
    of Z by every domain's columns and keeping the diagonal blocks costs E times the
    (tiny) arithmetic but reads Z once, in the shape the rest of the step uses. No reshape
    of Z: merging the domain axis with the example axis, which is the one sharded over
    devices, would make XLA gather all features onto every device.
    """
    e, n, d = z.shape
    k = v.shape[-1]
    out = jnp.einsum("end,dm->enm", z, jnp.moveaxis(v, 0, 1).reshape(d, e * k))
    out = out.reshape(e, n, e, k)
    return jnp.stack([out[i, :, i] for i in range(e)])                 # [E, n, k]


def _flat_transpose_times(z, a):
    """Z_e^T a_e for every domain as one matmul with block-diagonal columns."""
    e, n, d = z.shape
    k = a.shape[-1]
    blocks = a[:, :, None, :] * jnp.eye(e, dtype=a.dtype)[:, None, :, None]   # [E, n, E, k]
    # (a^T Z)^T, not Z^T a: XLA's CPU matmul is much slower with the long axis contracted
    # over the rows of its left operand (docs/benchmarks.md, "Figures behind the code").
    out = jnp.einsum("enm,end->md", blocks.reshape(e, n, e * k), z)          # [E * k, d]
    return jnp.swapaxes(out.reshape(e, k, d), 1, 2)                          # [E, d, k]


def _product(forward, backward):
    """``forward(z, x)`` with a custom VJP: ``backward(z, x, out_bar) -> (z_bar, x_bar)``."""
    fn = jax.custom_vjp(forward)
    fn.defvjp(lambda z, x: (forward(z, x), (z, x)), lambda res, out_bar: backward(*res, out_bar))
    return fn


# Z v per domain: z [E, n, d], v [E, d, k] -> [E, n, k].
_times = _product(
    _flat_times,
    lambda z, v, u_bar: (_outer(u_bar, v), _flat_transpose_times(z, u_bar)))

# Z^T a per domain: z [E, n, d], a [E, n, k] -> [E, d, k].
_transpose_times = _product(
    _flat_transpose_times,
    lambda z, a, h_bar: (_outer(a, h_bar), _flat_times(z, h_bar)))

# (Z * Z)^T a per domain (the exact Hessian diagonal), a [E, n, k] -> [E, d, k].
_squares_transpose_times = _product(
    lambda z, a: _flat_transpose_times(z * z, a),
    lambda z, a, h_bar: (2.0 * z * _outer(a, h_bar), _flat_times(z * z, h_bar)))


def domain_terms(head_params, features, labels, *, loss, weights, method, logits=None):
    """Per-domain vectors of ``method`` ("hgp" or "exact_diag"): (g_e, gbar, A_e, Abar) as head
    pytrees, g_e and A_e stacked over domains [E, ...]; :mod:`hjax.core.penalty` combines them.

    Arguments as :func:`hjax.linear_head_penalty_terms` (already validated there); ``logits``
    may pass the head's outputs on ``features`` [E, n, C] when the caller has them.
    """
    e, n, d = features.shape
    kernel, bias = head_params["kernel"], head_params["bias"]
    c = bias.shape[-1]
    dtype = features.dtype
    w = (jnp.full((e, n), 1.0 / n, dtype) if weights is None else weights.astype(dtype))
    if logits is None:
        logits = _times(features, jnp.broadcast_to(kernel, (e, d, c))) + bias
    p, r = linear_head.probs_and_residual(logits, labels, loss)
    r = w[..., None] * r                                             # [E, n, C]
    g_kernel = _transpose_times(features, r)                         # [E, d, C]
    g_bias = jnp.sum(r, axis=1)                                      # [E, C]
    gbar_kernel, gbar_bias = jnp.mean(g_kernel, axis=0), jnp.mean(g_bias, axis=0)

    if method == "hgp":
        # Both vectors in one pass: column 0 is g_e, column 1 is gbar.
        v_kernel = jnp.stack([g_kernel, jnp.broadcast_to(gbar_kernel, g_kernel.shape)], -1)
        v_bias = jnp.stack([g_bias, jnp.broadcast_to(gbar_bias, g_bias.shape)], -1)
        u = _times(features, v_kernel.reshape(e, d, 2 * c)).reshape(e, n, c, 2)
        u = u + v_bias[:, None]
        au = w[..., None, None] * linear_head.curvature_times(
            p[..., None], u, loss, class_axis=-2)                              # [E, n, C, 2]
        h_kernel = _transpose_times(features, au.reshape(e, n, 2 * c)).reshape(e, d, c, 2)
        h_bias = jnp.sum(au, axis=1)                                           # [E, C, 2]
        a_kernel, a_bias = h_kernel[..., 0], h_bias[..., 0]                    # H_e g_e
        # Abar = Hbar gbar = mean_e H_e gbar.
        abar_kernel = jnp.mean(h_kernel[..., 1], axis=0)
        abar_bias = jnp.mean(h_bias[..., 1], axis=0)
    elif method == "exact_diag":
        # Softmax and logistic alike: the diagonal of A_i is p (1 - p).
        a = w[..., None] * p * (1 - p)                                # [E, n, C]
        a_kernel = _squares_transpose_times(features, a)              # [E, d, C]
        a_bias = jnp.sum(a, axis=1)
        abar_kernel, abar_bias = jnp.mean(a_kernel, axis=0), jnp.mean(a_bias, axis=0)
    else:
        raise ValueError(f"stacked penalty terms support hgp and exact_diag, not {method!r}")

    def head(kernel_part, bias_part):
        return {"kernel": kernel_part, "bias": bias_part}

    return (head(g_kernel, g_bias), head(gbar_kernel, gbar_bias),
            head(a_kernel, a_bias), head(abar_kernel, abar_bias))
