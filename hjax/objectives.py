"""Full-batch domain-generalization penalties, registered by name (IRM-script protocol).

Each objective is a small pure function

    penalty_fn(head_params, features, logits, labels, weights, key, hparams) -> (penalty, logs)

over every training domain at once: ``features`` [E, n, d], ``logits`` [E, n, C],
``labels`` [E, n] and ``weights`` [E, n] (each domain's summing to 1; zero on padding, so
domains of unequal size and shards of unequal size share one array). The training protocol
(`hjax.train`) adds the mean NLL, the L2 term and the penalty annealing around it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hjax import linear_head
from hjax.penalty import hessian_penalty_terms, linear_head_penalty_terms


class Objective(NamedTuple):
    name: str
    penalty_fn: Callable
    description: str


OBJECTIVES: dict[str, Objective] = {}


def register(name: str, description: str):
    def wrap(fn):
        OBJECTIVES[name] = Objective(name, fn, description)
        return fn
    return wrap


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def head_loss_kind(logits) -> str:
    return "logistic" if logits.shape[-1] == 1 else "softmax"


def per_example_nll(logits, labels):
    if logits.shape[-1] == 1:
        return optax.sigmoid_binary_cross_entropy(logits[..., 0], labels.astype(logits.dtype))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def domain_nll(logits, labels, weights):
    """[E] weighted mean NLL of every domain."""
    return jnp.sum(weights * per_example_nll(logits, labels), axis=-1)


def domain_accuracy(logits, labels, weights):
    if logits.shape[-1] == 1:
        pred = (logits[..., 0] > 0).astype(labels.dtype)
    else:
        pred = jnp.argmax(logits, axis=-1).astype(labels.dtype)
    return jnp.sum(weights * (pred == labels), axis=-1)


@register("erm", "empirical risk minimization: no penalty")
def erm(head, features, logits, labels, weights, key, hp):
    return jnp.zeros((), logits.dtype), {}


@register("irm", "IRMv1: squared gradient of each domain's loss w.r.t. a dummy logit scale")
def irm(head, features, logits, labels, weights, key, hp):
    def scaled_nll(scale):
        return domain_nll(logits * scale, labels, weights)
    # d/ds of every domain's loss at s = 1, all domains at once (the loss is separable).
    grads = jax.jacfwd(scaled_nll)(jnp.ones((), logits.dtype))
    return jnp.mean(grads ** 2), {}


@register("vrex", "V-REx: mean over domain pairs of (L_i - L_j)^2 ((L_0 - L_1)^2 for E = 2)")
def vrex(head, features, logits, labels, weights, key, hp):
    nll = domain_nll(logits, labels, weights)
    diff = nll[:, None] - nll[None, :]
    num_domains = nll.shape[0]
    return jnp.sum(jnp.triu(diff ** 2, k=1)) / (num_domains * (num_domains - 1) / 2), {}


def per_example_head_grads(head, features, logits, labels):
    """Closed-form per-example gradients of the head: (p_i - y_i) z~_i, [E, n, (d + 1) C]."""
    if logits.shape[-1] == 1:
        resid = jax.nn.sigmoid(logits) - labels[..., None].astype(logits.dtype)
    else:
        resid = jax.nn.softmax(logits, -1) - jax.nn.one_hot(labels, logits.shape[-1],
                                                            dtype=logits.dtype)
    kernel = features[..., :, None] * resid[..., None, :]
    return jnp.concatenate([kernel.reshape(kernel.shape[:-2] + (-1,)), resid], axis=-1)


@register("fishr", "Fishr: sum_e ||Var_i[head grad_i]_e - mean_e Var_e||^2 (CMNIST-script form)")
def fishr(head, features, logits, labels, weights, key, hp):
    g = per_example_head_grads(head, features, logits, labels)
    mean = jnp.sum(weights[..., None] * g, axis=1, keepdims=True)
    var = jnp.sum(weights[..., None] * (g - mean) ** 2, axis=1)          # [E, P]
    return jnp.sum((var - jnp.mean(var, axis=0)) ** 2), {}


def _hessian_alignment(method, probes="independent"):
    def penalty_fn(head, features, logits, labels, weights, key, hp):
        if hp.get("curvature", "closed_form") == "closed_form":
            terms = linear_head_penalty_terms(
                head, features, labels, loss=head_loss_kind(logits), weights=weights,
                method=method, num_probes=hp["num_probes"], key=key, reduction="sum",
                stop_gradient_reference=False, probes=probes, logits=logits)
        else:
            kind = head_loss_kind(logits)

            def loss_fn(h, batch):
                return linear_head.loss_value(h, batch["features"], batch["labels"], kind,
                                              batch["weights"])

            batches = {"features": features, "labels": labels, "weights": weights}
            terms = hessian_penalty_terms(loss_fn, head, batches, method=method,
                                          num_probes=hp["num_probes"], key=key,
                                          reduction="sum", stop_gradient_reference=False,
                                          probes=probes)
        hess, grad = terms.hessian, terms.gradient
        penalty = hp.get("alpha", 1.0) * hess + hp.get("beta", 1.0) * grad
        return penalty, {"hessian_term": hess, "gradient_term": grad}
    return penalty_fn


register("hgp", "HGP: align H_e g_e and g_e across domains (ColoredMNIST-script form)")(
    _hessian_alignment("hgp"))
register("hutchinson", "Hutchinson: align Rademacher diag(H_e) estimates and g_e")(
    _hessian_alignment("hutchinson"))
register("hutchinson_shared", "hjax extension: Hutchinson with one probe set shared by all "
         "domains and the reference (no variance floor once the Hessians align)")(
    _hessian_alignment("hutchinson", probes="shared"))
register("exact_diag", "hjax extension: align the exact diag(H_e) and g_e")(
    _hessian_alignment("exact_diag"))
