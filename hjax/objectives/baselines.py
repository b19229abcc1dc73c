"""The baselines that the paper explains as partial Hessian/gradient alignment (docs/protocols.md, "Baselines"
in docs/protocols.md): ERM, IRMv1, V-REx, CORAL, Fishr, IGA, SD, GroupDRO and Fish.

Each is one registered objective (see :mod:`hjax.objectives.registry` for the signature);
its penalty is unweighted, the protocol applies the weight and its schedule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hjax.core import linear_head
from hjax.objectives.registry import Output, register


def _zero(inputs):
    return jnp.zeros((), inputs.logits.dtype)


def _mean_only(name, inputs):
    # These penalties are defined on equal-sized minibatches; per-example weights (padding)
    # would need weighted half-batches or covariances that no published protocol uses.
    if inputs.weights is not None:
        raise ValueError(f"{name} needs unweighted minibatches (weights=None)")


@register("erm", "empirical risk minimization: no penalty", penalized=False)
def erm(inputs, state, key, hp, form):
    return Output(_zero(inputs), state)


def _dloss_dscale(logits, labels, weights):
    """d/ds of every domain's loss at a dummy logit scale s = 1 -> [E] (IRMv1's gradient)."""
    def scaled(scale):
        return linear_head.domain_losses(logits * scale, labels, weights)
    return jax.jacfwd(scaled)(jnp.ones((), logits.dtype))


@register("irm", "IRMv1: squared gradient of each domain's loss w.r.t. a dummy logit scale "
          "(DomainBed form: the product of the two half-batch gradients)")
def irm(inputs, state, key, hp, form):
    logits, labels = inputs.logits, inputs.labels
    if form.irm == "full_batch":
        grads = _dloss_dscale(logits, labels, inputs.weights)
        return Output(jnp.mean(grads ** 2), state)
    _mean_only("irm (half_batch_product)", inputs)
    even = _dloss_dscale(logits[:, ::2], labels[:, ::2], None)
    odd = _dloss_dscale(logits[:, 1::2], labels[:, 1::2], None)
    return Output(jnp.mean(even * odd), state)


@register("vrex", "V-REx: variance of the domain losses (IRM-script form: mean over domain "
          "pairs of (L_i - L_j)^2)")
def vrex(inputs, state, key, hp, form):
    losses = linear_head.domain_losses(inputs.logits, inputs.labels, inputs.weights)
    if form.vrex == "variance":
        return Output(jnp.mean((losses - jnp.mean(losses)) ** 2), state)
    diff = losses[:, None] - losses[None, :]
    e = losses.shape[0]
    return Output(jnp.sum(jnp.triu(diff ** 2, k=1)) / (e * (e - 1) / 2), state)


def coral_penalty(features):
    """Mean over domain pairs i < j of mean((mu_i - mu_j)^2) + mean((C_i - C_j)^2)."""
    e, b, _ = features.shape
    if e < 2:                    # one training domain (leave-one-out pair runs): no pairs
        return jnp.zeros((), features.dtype)
    mu = jnp.mean(features, axis=1)                                    # [E, d]
    centred = features - mu[:, None]
    cov = jnp.einsum("ebi,ebj->eij", centred, centred) / (b - 1)       # unbiased, [E, d, d]
    mean_diff = jnp.mean((mu[:, None] - mu[None]) ** 2, axis=-1)       # [E, E]
    cov_diff = jnp.mean((cov[:, None] - cov[None]) ** 2, axis=(-2, -1))
    upper = jnp.triu(jnp.ones((e, e), bool), k=1)
    return jnp.sum(jnp.where(upper, mean_diff + cov_diff, 0.0)) / (e * (e - 1) / 2)


@register("coral", "CORAL: mean and covariance alignment of the features")
def coral(inputs, state, key, hp, form):
    _mean_only("coral", inputs)
    return Output(coral_penalty(inputs.features), state)


def _fishr_init(head, num_domains, hp, form):
    if not form.fishr_ema:
        return ()
    k = head["kernel"]
    return {"ema": jnp.zeros((num_domains, (k.shape[0] + 1) * k.shape[1]), k.dtype)}


def gradient_variances(features, logits, labels, weights=None):
    """Per domain, the per-coordinate variance of the per-example head gradients, [E, P]."""
    g = linear_head.per_example_grads(features, logits, labels)        # [E, n, P]
    if weights is None:
        return jnp.mean((g - jnp.mean(g, axis=1, keepdims=True)) ** 2, axis=1)
    w = weights[..., None]
    mean = jnp.sum(w * g, axis=1, keepdims=True)
    return jnp.sum(w * (g - mean) ** 2, axis=1)


@register("fishr", "Fishr: align the domains' variances of per-example head gradients "
          "(DomainBed form: EMA-smoothed, mean over coordinates)", init_state=_fishr_init)
def fishr(inputs, state, key, hp, form):
    var = gradient_variances(inputs.features, inputs.logits, inputs.labels, inputs.weights)
    if form.fishr_ema:
        ema = hp["ema"]
        # DomainBed's moving average with the 1/(1 - ema) correction: the stored average is
        # detached; the one used carries this step's gradient at full amplitude.
        smoothed = ema * state["ema"] + (1 - ema) * var
        var = smoothed / (1 - ema)
        state = {"ema": jax.lax.stop_gradient(smoothed)}
    reduce = jnp.mean if form.reduction == "mean" else jnp.sum
    return Output(reduce((var - jnp.mean(var, axis=0)) ** 2), state)


@register("iga", "IGA: sum_e ||g_e - gbar||^2 over ALL parameters (double backprop)",
          scope="model")
def iga(inputs, state, key, hp, form):
    losses, grads = inputs.model_domain_grads()
    gbar = jax.lax.stop_gradient(jax.tree_util.tree_map(lambda g: jnp.mean(g, 0), grads))
    penalty = sum(jnp.sum((g - m[None]) ** 2) for g, m in
                  zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(gbar)))
    return Output(penalty, state, risk=jnp.mean(losses))


@register("sd", "spectral decoupling: mean(logits^2)")
def sd(inputs, state, key, hp, form):
    _mean_only("sd", inputs)
    return Output(jnp.mean(inputs.logits ** 2), state)


def _groupdro_init(head, num_domains, hp, form):
    return {"q": jnp.ones((num_domains,), jnp.float32)}


@register("groupdro", "GroupDRO: q-weighted domain losses, q_e <- q_e exp(eta L_e)",
          init_state=_groupdro_init, penalized=False)
def groupdro(inputs, state, key, hp, form):
    losses = linear_head.domain_losses(inputs.logits, inputs.labels, inputs.weights)
    q = state["q"] * jnp.exp(hp["eta"] * jax.lax.stop_gradient(losses))
    q = q / jnp.sum(q)
    loss = jnp.dot(losses, q)
    return Output(_zero(inputs), {"q": q}, {"robust_loss": loss}, risk=loss)


# Fish changes the step itself (inner steps over domains on a clone, then a meta step);
# the protocol supplies that step (hjax.protocols.domainbed.fish).
register("fish", "Fish: inner steps over domains on a clone, then a meta step",
         penalized=False)(None)
