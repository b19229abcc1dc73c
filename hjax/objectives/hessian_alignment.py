"""Hessian alignment of the classifier head (Hemati et al., ICCV 2023): HGP, Hutchinson and the
hjax extensions ``hutchinson_shared`` and ``exact_diag``, as registered objectives.

penalty = alpha * red_e ||A_e - Abar||^2 + beta * red_e ||g_e - gbar||^2, with ``red`` and
the stop-gradient of the references from the protocol's :class:`~hjax.objectives.Form`.
hp: ``alpha``, ``beta`` (default 1), ``num_probes`` (Hutchinson), ``curvature``
("closed_form", the default, or "autodiff": jvp-of-grad on the head loss, for checking).
"""

from __future__ import annotations

import jax.numpy as jnp

from hjax.core import linear_head
from hjax.core.penalty import hessian_penalty_terms, linear_head_penalty_terms
from hjax.objectives.registry import Output, register

CURVATURES = ("closed_form", "autodiff")


def _terms(inputs, key, hp, form, method, probes):
    kind = linear_head.loss_kind(inputs.logits.shape[-1])
    common = dict(method=method, num_probes=hp.get("num_probes", 1), key=key,
                  reduction=form.reduction,
                  stop_gradient_reference=form.stop_gradient_reference, probes=probes)
    curvature = hp.get("curvature", "closed_form")
    if curvature == "closed_form":
        return linear_head_penalty_terms(inputs.head, inputs.features, inputs.labels,
                                         loss=kind, weights=inputs.weights,
                                         logits=inputs.logits, **common)
    if curvature != "autodiff":
        raise ValueError(f"unknown curvature {curvature!r}; valid: {', '.join(CURVATURES)}")

    def loss_fn(head, batch):
        return linear_head.loss_value(head, batch["features"], batch["labels"], kind,
                                      batch.get("weights"))

    batches = {"features": inputs.features, "labels": inputs.labels}
    if inputs.weights is not None:
        batches["weights"] = inputs.weights
    return hessian_penalty_terms(loss_fn, inputs.head, batches, **common)


def _hessian_alignment(method, probes="independent"):
    def penalty_fn(inputs, state, key, hp, form):
        if inputs.features.shape[0] < 2:    # one training domain: nothing to align
            zero = jnp.zeros((), inputs.logits.dtype)
            return Output(zero, state, {"hessian_term": zero, "gradient_term": zero})
        terms = _terms(inputs, key, hp, form, method, probes)
        penalty = hp.get("alpha", 1.0) * terms.hessian + hp.get("beta", 1.0) * terms.gradient
        return Output(penalty, state,
                      {"hessian_term": terms.hessian, "gradient_term": terms.gradient})
    return penalty_fn


register("hgp", "HGP: align H_e g_e and g_e of the head across domains")(
    _hessian_alignment("hgp"))
register("hutchinson", "Hutchinson: align Rademacher estimates of diag(H_e), and g_e")(
    _hessian_alignment("hutchinson"))
register("hutchinson_shared", "hjax extension: Hutchinson with one probe set shared by all "
         "domains and the reference (no variance floor once the Hessians align)")(
    _hessian_alignment("hutchinson", probes="shared"))
register("exact_diag", "hjax extension: align the exact diag(H_e), and g_e")(
    _hessian_alignment("exact_diag"))
