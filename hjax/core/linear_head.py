"""Closed forms for a linear head h(z) = z @ kernel + bias on fixed features (docs/protocols.md, "Closed forms for a linear head").

Head params follow Flax ``nn.Dense``: ``{"kernel": [d, C], "bias": [C]}``. Two losses:

- ``"softmax"``: softmax cross-entropy, integer labels in [0, C).
- ``"logistic"``: one logit (C = 1), labels in {0, 1}, binary cross-entropy with logits.

Every function takes optional per-example ``weights`` (summing to 1 over the batch) so that a
domain can be padded to a common size with zero weights; ``None`` means the plain mean.
The closed forms cost O(n d C) per gradient / HVP, the same as the forward pass, and are
ordinary jnp code, so they can be differentiated further (e.g. into the featurizer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LOSSES = ("softmax", "logistic")


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")


def _weights(features, weights):
    n = features.shape[0]
    if weights is None:
        return jnp.full((n,), 1.0 / n, dtype=features.dtype)
    return weights.astype(features.dtype)


def loss_kind(num_outputs: int) -> str:
    """The loss of a head with ``num_outputs`` logits: one logit is logistic, more softmax."""
    return "logistic" if num_outputs == 1 else "softmax"


def logits(head_params, features):
    """The head as an affine map (Flax Dense layout): features [..., d] -> logits [..., C]."""
    return features @ head_params["kernel"] + head_params["bias"]


def probs_and_residual(head_logits, labels, loss=None):
    """p_i and p_i - y_i, both [..., C]: ``loss="softmax"`` takes integer labels,
    ``"logistic"`` one logit and {0, 1} labels; None reads it from the number of logits."""
    if (loss or loss_kind(head_logits.shape[-1])) == "logistic":
        p = jax.nn.sigmoid(head_logits)
        y = labels.reshape(p.shape).astype(p.dtype)
    else:
        p = jax.nn.softmax(head_logits, axis=-1)
        y = jax.nn.one_hot(labels, head_logits.shape[-1], dtype=p.dtype)
    return p, p - y


def _probs_and_residual(head_params, features, labels, loss, head_logits=None):
    """p_i and p_i - y_i, both [n, C]; ``head_logits`` reuses the caller's head outputs."""
    out = logits(head_params, features) if head_logits is None else head_logits
    return probs_and_residual(out, labels, loss)


def per_example_loss(head_logits, labels):
    """Per-example NLL [...]: softmax cross-entropy, or binary cross-entropy for one logit."""
    if head_logits.shape[-1] == 1:
        return optax.sigmoid_binary_cross_entropy(head_logits[..., 0],
                                                  labels.astype(head_logits.dtype))
    return optax.softmax_cross_entropy_with_integer_labels(head_logits, labels)


def domain_losses(head_logits, labels, weights=None):
    """Mean NLL over the example axis, [..., n, C] -> [...]: weighted by ``weights`` [..., n]
    (each domain's summing to 1, zero on padding), or the plain mean when ``weights`` is None."""
    nll = per_example_loss(head_logits, labels)
    if weights is None:
        return jnp.mean(nll, axis=-1)
    return jnp.sum(weights * nll, axis=-1)


def domain_accuracies(head_logits, labels, weights=None):
    """Accuracy over the example axis (weighted like :func:`domain_losses`)."""
    if head_logits.shape[-1] == 1:
        pred = (head_logits[..., 0] > 0).astype(labels.dtype)
    else:
        pred = jnp.argmax(head_logits, axis=-1).astype(labels.dtype)
    correct = pred == labels
    if weights is None:
        return jnp.mean(correct, axis=-1)
    return jnp.sum(weights * correct, axis=-1)


def per_example_grads(features, head_logits, labels):
    """Per-example head gradients (p_i - y_i) z~_i^T, flattened in the :func:`flatten` layout:
    features [..., n, d], logits [..., n, C] -> [..., n, (d + 1) C]."""
    _, r = probs_and_residual(head_logits, labels)
    kernel = features[..., :, None] * r[..., None, :]
    return jnp.concatenate([kernel.reshape(kernel.shape[:-2] + (-1,)), r], axis=-1)


def loss_value(head_params, features, labels, loss="softmax", weights=None):
    """Weighted mean loss of the head on ``features``."""
    _check_loss(loss)
    w = _weights(features, weights)
    return jnp.sum(w * per_example_loss(logits(head_params, features), labels))


def grad(head_params, features, labels, loss="softmax", weights=None):
    """g = sum_i w_i (p_i - y_i) z~_i^T, split into kernel and bias."""
    _check_loss(loss)
    w = _weights(features, weights)
    _, r = _probs_and_residual(head_params, features, labels, loss)
    wr = w[:, None] * r
    return {"kernel": features.T @ wr, "bias": jnp.sum(wr, axis=0)}


def curvature_times(p, u, loss, class_axis=-1):
    """A_i u_i with A_i = diag(p_i) - p_i p_i^T (softmax) or s_i (1 - s_i) (logistic); the
    classes lie on ``class_axis`` of ``p`` and ``u`` (other axes broadcast)."""
    if loss == "softmax":
        return p * u - p * jnp.sum(p * u, axis=class_axis, keepdims=True)
    return p * (1 - p) * u


def linearize(head_params, features, labels, loss="softmax", weights=None, head_logits=None):
    """(g, v -> H v) for the head loss; the forward pass is shared by every product."""
    _check_loss(loss)
    w = _weights(features, weights)
    p, r = _probs_and_residual(head_params, features, labels, loss, head_logits)
    wr = w[:, None] * r
    g = {"kernel": features.T @ wr, "bias": jnp.sum(wr, axis=0)}

    def hvp_fn(v):
        u = features @ v["kernel"] + v["bias"]          # tangent of the logits, [n, C]
        au = w[:, None] * curvature_times(p, u, loss)
        return {"kernel": features.T @ au, "bias": jnp.sum(au, axis=0)}

    return g, hvp_fn


def hvp(head_params, features, labels, v, loss="softmax", weights=None):
    """H v = sum_i w_i A_i V z~_i z~_i^T."""
    return linearize(head_params, features, labels, loss, weights)[1](v)


def hessian_diag(head_params, features, labels, loss="softmax", weights=None, head_logits=None):
    """diag(H)[j, c] = sum_i w_i p_ic (1 - p_ic) z~_ij^2 (exact, O(n d C))."""
    _check_loss(loss)
    w = _weights(features, weights)
    p, _ = _probs_and_residual(head_params, features, labels, loss, head_logits)
    # Softmax: diag of diag(p) - p p^T is p (1 - p); logistic: s (1 - s). Same expression.
    a = w[:, None] * p * (1 - p)
    return {"kernel": (features ** 2).T @ a, "bias": jnp.sum(a, axis=0)}


def flatten(tree):
    """Head pytree(s) -> flat vectors in the layout of :func:`hessian_dense`: index j * C + c
    for kernel[j, c], then d * C + c for bias[c]. Leading batch axes are kept."""
    kernel, bias = tree["kernel"], tree["bias"]
    lead = bias.shape[:-1]
    return jnp.concatenate([kernel.reshape(lead + (-1,)), bias], axis=-1)


def unflatten(flat, d: int, num_outputs: int):
    """Inverse of :func:`flatten` (for a single head)."""
    return {"kernel": flat[:d * num_outputs].reshape(d, num_outputs),
            "bias": flat[d * num_outputs:]}


def hessian_dense(head_params, features, labels, loss="softmax", weights=None, head_logits=None):
    """The head Hessian as a dense [P, P] matrix, P = (d + 1) C, in the :func:`flatten` layout:
    H = sum_i w_i (z~_i z~_i^T) (x) A_i, O(n P^2). Cheaper than probing the data with HVPs when
    the head is small next to the probe count (a Hutchinson estimate costs O(n P K))."""
    _check_loss(loss)
    w = _weights(features, weights)
    p, _ = _probs_and_residual(head_params, features, labels, loss, head_logits)
    zt = jnp.concatenate([features, jnp.ones_like(features[:, :1])], axis=1)   # [n, d + 1]
    n, c = p.shape
    if loss == "logistic":
        return weighted_gram(zt, w * (p * (1 - p))[:, 0])                       # [d+1, d+1]
    # sum_i w_i z~z~^T (x) diag(p_i)  -  sum_i w_i (z~_i (x) p_i)(z~_i (x) p_i)^T
    diag_part = jnp.einsum("ij,ic,ik->jck", zt, w[:, None] * p, zt)              # [d+1, C, d+1]
    eye = jnp.eye(c, dtype=p.dtype)
    first = (diag_part[:, :, :, None] * eye[None, :, None, :]).reshape(zt.shape[1] * c, -1)
    b = (zt[:, :, None] * p[:, None, :]).reshape(n, -1)
    return first - b.T @ (w[:, None] * b)


@jax.custom_vjp
def weighted_gram(x, a):
    """x^T diag(a) x for x [n, m], a [n], with a one-matmul backward pass.

    Autodiff transposes the three terms of the product rule into three [n, m] x [m, m]
    matmuls; with S = G + G^T for the cotangent G, all three share T = x S:
    dx = a * T and da = rowsum(x * T) / 2. It is the costliest part of the dense Hutchinson
    path, so this saves about a third of that path's arithmetic.
    """
    return x.T @ (a[:, None] * x)


def _weighted_gram_fwd(x, a):
    return weighted_gram(x, a), (x, a)


def _weighted_gram_bwd(res, g):
    x, a = res
    t = x @ (g + g.T)
    return a[:, None] * t, 0.5 * jnp.sum(x * t, axis=1)


weighted_gram.defvjp(_weighted_gram_fwd, _weighted_gram_bwd)
