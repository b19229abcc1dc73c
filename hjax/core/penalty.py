"""The Hessian-alignment penalties of Hemati et al. (ICCV 2023): HGP, Hutchinson, exact diagonal.

    penalty = red_e [ alpha * ||A_e - Abar||^2 + beta * ||g_e - gbar||^2 ]

with red = mean (DomainBed form) or sum (ColoredMNIST-script form), all curvature taken with
respect to the head parameters only (docs/protocols.md, "Notation" and "The penalties"):

- ``"hgp"``: A_e = H_e g_e and Abar = Hbar gbar (the mean Hessian times the mean gradient,
  not the mean of the H_e g_e), by forward-over-reverse HVPs; no Hessian is formed.
- ``"hutchinson"``: A_e = Rademacher estimate of diag(H_e) with fresh probes per domain;
  Abar = an independent estimate of diag(Hbar) (probes shared by all domains, so the
  domains' products average to Hbar z).
  With ``probes="shared"`` (an hjax extension) every domain and the reference use the same
  probes, so Dhat_e - Dhat_ref = (1/K) sum_k z_k * ((H_e - Hbar) z_k): an unbiased estimate of
  diag(H_e - Hbar) whose variance (the off-diagonal mass of H_e - Hbar) vanishes as the
  Hessians align, where independent probes leave a variance floor that no alignment removes.
  It also needs one estimate per domain instead of two.
- ``"exact_diag"`` (an hjax extension): A_e = diag(H_e) and Abar = diag(Hbar) exactly, the
  K -> infinity limit of Hutchinson.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hjax.core import linear_head, stacked_head
from hjax.core.curvature import exact_diag_from_hvp, hutchinson_from_hvp, hutchinson_probe

PyTree = Any
METHODS = ("hgp", "hutchinson", "exact_diag")
REDUCTIONS = ("mean", "sum")
PROBES = ("independent", "shared")
PROBE_PRODUCTS = ("auto", "hvp", "dense")


class PenaltyTerms(NamedTuple):
    """Unweighted terms: red_e ||A_e - Abar||^2 and red_e ||g_e - gbar||^2."""
    hessian: jax.Array
    gradient: jax.Array


def _path(path) -> str:
    return "".join(str(k) for k in path) or "(the array itself)"


def stack_domain_batches(domain_batches) -> PyTree:
    """A list of per-domain batches -> one pytree with a leading domain axis; else unchanged.

    Only a ``list`` is read as per-domain batches (DomainBed's ``minibatches`` form, e.g.
    ``[(x_0, y_0), (x_1, y_1), ...]``); a tuple or dict is one stacked batch, since
    ``(features, labels)`` with leaves [E, ...] is a common stacked form. The domains' batches
    must have the same structure and shapes (pad to a common size, e.g. with per-example
    weights in the loss, if they differ).
    """
    if not isinstance(domain_batches, list):
        return domain_batches
    if len(domain_batches) < 2:
        raise ValueError(f"need at least 2 domains to align, got a list of "
                         f"{len(domain_batches)} per-domain batch(es)")
    first = jax.tree_util.tree_flatten_with_path(domain_batches[0])
    for e, batch in enumerate(domain_batches[1:], start=1):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(batch)
        if treedef != first[1]:
            raise ValueError(f"domain_batches[{e}] has structure {treedef} but "
                             f"domain_batches[0] has {first[1]}; every domain's batch needs "
                             f"the same structure to be stacked")
        for (path, a), (_, b) in zip(first[0], leaves):
            if jnp.shape(a) != jnp.shape(b):
                raise ValueError(
                    f"domain_batches[{e}]{_path(path)} has shape {jnp.shape(b)} but "
                    f"domain_batches[0]{_path(path)} has {jnp.shape(a)}; per-domain batches "
                    f"are stacked, so their shapes must agree (pad to a common size, e.g. "
                    f"with per-example weights in loss_fn)")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *domain_batches)


def _num_domains(domain_batches, num_domains: int | None = None) -> int:
    """E, the leading (domain) axis shared by every leaf, checked as far as shapes allow.

    A batch without a domain axis (``{"x": [n, d], "y": [n]}``) has consistent leading axes
    too (E = n), so the rank is checked as well: without ``num_domains``, every leaf must keep
    at least one axis once the domain axis is removed (a per-domain batch holds examples),
    which turns that mistake's ``y`` into an error. ``num_domains=E`` pins E instead and then
    admits per-domain scalars (leaves of shape [E]).
    """
    leaves = jax.tree_util.tree_leaves_with_path(domain_batches)
    if not leaves:
        raise ValueError("domain_batches has no array leaves; expected leaves with a "
                         "leading domain axis of size E >= 2")
    if num_domains is not None and (isinstance(num_domains, bool)
                                    or not isinstance(num_domains, int) or num_domains < 2):
        raise ValueError(f"num_domains must be an integer >= 2, got {num_domains!r}")
    sizes = {}
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(f"domain_batches{_path(path)} is a scalar; every leaf needs a "
                             f"leading domain axis of size E >= 2")
        if len(shape) == 1 and num_domains is None:
            raise ValueError(
                f"domain_batches{_path(path)} has shape {shape}: with the domain axis removed "
                f"it is a scalar, so the batch may lack its domain axis (expected leaves "
                f"[E, n, ...], e.g. features [E, n, d] and labels [E, n]); stack the domains' "
                f"batches on a leading axis, pass a list of per-domain batches, or give "
                f"num_domains=E if this leaf is one value per domain")
        sizes.setdefault(shape[0], _path(path))
    if len(sizes) > 1:
        found = ", ".join(f"{n} ({where})" for n, where in sorted(sizes.items()))
        raise ValueError(f"domain_batches leaves have different leading (domain) axes: "
                         f"{found}; all must share one size E >= 2")
    n = next(iter(sizes))
    if num_domains is not None and n != num_domains:
        raise ValueError(f"domain_batches has a leading (domain) axis of {n}, but "
                         f"num_domains={num_domains}")
    if n < 2:
        raise ValueError(f"need at least 2 domains to align, got E={n}")
    return n


def _validate(method, key, num_probes, reduction, probes):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if probes not in PROBES:
        raise ValueError(f"unknown probes {probes!r}; valid: {', '.join(PROBES)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    if method == "hutchinson":
        if key is None:
            raise ValueError("method='hutchinson' needs a PRNG key: pass key=jax.random.key(...)")
        if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}")


def _tree_mean0(tree):
    return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), tree)


def _sq_dist_per_domain(stacked, ref):
    """||stacked[e] - ref||^2 over all leaves, for every domain e -> [E]."""
    parts = jax.tree_util.tree_map(
        lambda s, r: jnp.sum(jnp.reshape(s - r, (s.shape[0], -1)) ** 2, axis=1), stacked, ref)
    return jax.tree_util.tree_reduce(operator.add, parts)


def _penalty_terms(linearize, exact_diag, head_params, domain_batches, *, method, key,
                   num_probes, reduction, stop_gradient_reference, chunk_size,
                   probes="independent", probe_estimates=None, num_domains=None):
    """Shared combiner: ``linearize(params, batch) -> (g, v -> H v)`` for one domain.

    ``probe_estimates(params, batch, hvp_fn, keys) -> [estimate per key]`` computes one
    domain's Hutchinson estimates; the default probes the data with ``hvp_fn``.
    """
    num_domains = _num_domains(domain_batches, num_domains)
    _validate(method, key, num_probes, reduction, probes)
    if probe_estimates is None:
        def probe_estimates(params, batch, hvp_fn, keys):
            return [hutchinson_from_hvp(hvp_fn, params, k, num_probes, chunk_size)
                    for k in keys]

    if method == "hgp":
        grads = jax.vmap(lambda b: linearize(head_params, b)[0])(domain_batches)
        gbar = _tree_mean0(grads)

        def per_domain(batch, g_e):
            _, hvp_fn = linearize(head_params, batch)
            both = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), g_e, gbar)
            out = jax.vmap(hvp_fn)(both)     # [H_e g_e, H_e gbar], one shared forward pass
            return (jax.tree_util.tree_map(lambda x: x[0], out),
                    jax.tree_util.tree_map(lambda x: x[1], out))

        a_e, h_gbar = jax.vmap(per_domain)(domain_batches, grads)
        abar = _tree_mean0(h_gbar)          # Hbar gbar = mean_e H_e gbar
    elif method == "hutchinson" and probes == "shared":
        def per_domain(batch):
            g_e, hvp_fn = linearize(head_params, batch)
            return g_e, probe_estimates(head_params, batch, hvp_fn, [key])[0]

        grads, a_e = jax.vmap(per_domain)(domain_batches)
        gbar = _tree_mean0(grads)
        abar = _tree_mean0(a_e)             # same probes: mean_e z*(H_e z) = z*(Hbar z)
    elif method == "hutchinson":
        keys = jax.random.split(key, num_domains + 1)
        ref_key = keys[num_domains]

        def per_domain(batch, k):
            g_e, hvp_fn = linearize(head_params, batch)
            own, ref = probe_estimates(head_params, batch, hvp_fn, [k, ref_key])
            return g_e, own, ref

        grads, a_e, ref = jax.vmap(per_domain)(domain_batches, keys[:num_domains])
        gbar = _tree_mean0(grads)
        abar = _tree_mean0(ref)             # shared probes: mean_e z*(H_e z) = z*(Hbar z)
    else:
        def per_domain(batch):
            g_e, hvp_fn = linearize(head_params, batch)
            return g_e, exact_diag(head_params, batch, hvp_fn)

        grads, a_e = jax.vmap(per_domain)(domain_batches)
        gbar = _tree_mean0(grads)
        abar = _tree_mean0(a_e)

    return _combine(grads, gbar, a_e, abar, reduction=reduction,
                    stop_gradient_reference=stop_gradient_reference)


def _combine(grads, gbar, a_e, abar, *, reduction, stop_gradient_reference):
    """The two terms from the per-domain vectors (stacked [E, ...]) and their references."""
    if stop_gradient_reference:
        abar = jax.lax.stop_gradient(abar)
        gbar = jax.lax.stop_gradient(gbar)
    reduce = jnp.mean if reduction == "mean" else jnp.sum
    return PenaltyTerms(hessian=reduce(_sq_dist_per_domain(a_e, abar)),
                        gradient=reduce(_sq_dist_per_domain(grads, gbar)))


def hessian_penalty_terms(loss_fn: Callable[[PyTree, PyTree], jax.Array], head_params: PyTree,
                          domain_batches: PyTree, *, method: str = "hutchinson",
                          num_probes: int = 100, key: jax.Array | None = None,
                          reduction: str = "mean", stop_gradient_reference: bool = True,
                          chunk_size: int | None = None,
                          probes: str = "independent",
                          num_domains: int | None = None) -> PenaltyTerms:
    """The Hessian term and the gradient term of :func:`hessian_penalty`, unweighted.

    Arguments as :func:`hessian_penalty`.
    """
    domain_batches = stack_domain_batches(domain_batches)

    def linearize(params, batch):
        return jax.linearize(jax.grad(lambda p: loss_fn(p, batch)), params)

    def exact_diag(params, batch, hvp_fn):
        return exact_diag_from_hvp(hvp_fn, params, chunk_size)

    return _penalty_terms(linearize, exact_diag, head_params, domain_batches, method=method,
                          key=key, num_probes=num_probes, reduction=reduction,
                          stop_gradient_reference=stop_gradient_reference,
                          chunk_size=chunk_size, probes=probes, num_domains=num_domains)


def hessian_penalty(loss_fn: Callable[[PyTree, PyTree], jax.Array], head_params: PyTree,
                    domain_batches: PyTree, *, method: str = "hutchinson", alpha: float = 1.0,
                    beta: float = 1.0, num_probes: int = 100, key: jax.Array | None = None,
                    reduction: str = "mean", stop_gradient_reference: bool = True,
                    chunk_size: int | None = None, probes: str = "independent",
                    num_domains: int | None = None) -> jax.Array:
    """Hessian- and gradient-alignment penalty across E >= 2 domains (scalar).

    Args:
      loss_fn: ``loss_fn(head_params, batch) -> scalar``, the mean loss of one domain's batch.
      head_params: the classifier-head parameters (any pytree); curvature is taken w.r.t. them.
      domain_batches: the E >= 2 domains' batches, either stacked (a pytree, e.g. a dict or
        tuple, whose leaves all have a leading domain axis of size E: domain e's batch is
        ``tree_map(lambda a: a[e], domain_batches)``) or as a ``list`` of E per-domain
        batches of equal structure and shapes (stacked here). Every leaf must have at least
        one axis besides the domain axis (e.g. features [E, n, d], labels [E, n]) unless
        ``num_domains`` is given; a batch without its domain axis is refused, not read as n
        domains. Anything in it (e.g. featurizer outputs) receives gradients through the
        penalty.
      method: "hgp", "hutchinson" or "exact_diag" (see module docstring).
      alpha, beta: weights of the Hessian term and of the gradient term.
      num_probes: Rademacher probes per estimate (Hutchinson only).
      key: PRNG key, required for Hutchinson.
      reduction: "mean" over domains (DomainBed form) or "sum" (ColoredMNIST-script form).
      stop_gradient_reference: stop gradients through Abar and gbar (the authors' DomainBed
        form) or let them flow (their ColoredMNIST form). The value is the same either way.
      chunk_size: how many probes (Hutchinson) or basis vectors (exact_diag) are vmapped at
        once; the default keeps one chunk to ~16M tangent elements.
      probes: Hutchinson only. "independent" (the paper's form: fresh probes per domain and an
        independent estimate of diag(Hbar)) or "shared" (hjax extension: one probe set for all
        domains and the reference; no variance floor once the Hessians align, half the HVPs).
      num_domains: optional E, checked against the leading axis; with it, leaves of shape [E]
        (one value per domain) are allowed.

    Returns:
      red_e [alpha ||A_e - Abar||^2 + beta ||g_e - gbar||^2], a scalar.

    Raises:
      ValueError: one line saying which leaf or argument is wrong and what was expected.
    """
    terms = hessian_penalty_terms(loss_fn, head_params, domain_batches, method=method,
                                  num_probes=num_probes, key=key, reduction=reduction,
                                  stop_gradient_reference=stop_gradient_reference,
                                  chunk_size=chunk_size, probes=probes,
                                  num_domains=num_domains)
    return alpha * terms.hessian + beta * terms.gradient


def linear_head_penalty_terms(head_params: PyTree, features: jax.Array, labels: jax.Array, *,
                              loss: str = "softmax", weights: jax.Array | None = None,
                              method: str = "hutchinson", num_probes: int = 100,
                              key: jax.Array | None = None, reduction: str = "mean",
                              stop_gradient_reference: bool = True,
                              chunk_size: int | None = None,
                              probes: str = "independent",
                              probe_products: str = "auto",
                              logits: jax.Array | None = None) -> PenaltyTerms:
    """Fast path of :func:`hessian_penalty_terms` for a linear head on features.

    Same value as the generic path with ``loss_fn = linear_head.loss_value`` (up to float
    rounding; with the same key, Hutchinson draws the same probes), computed with the closed
    forms of docs/protocols.md, "Closed forms for a linear head": exact diagonals in O(n d C) instead of P HVPs.

    Args:
      head_params: ``{"kernel": [d, C], "bias": [C]}`` (Flax Dense layout; C = 1 for logistic).
      features: [E, n, d] featurizer outputs per domain.
      labels: [E, n] integer labels (class indices, or {0, 1} for ``loss="logistic"``).
      loss: "softmax" (cross-entropy) or "logistic" (one logit).
      weights: optional [E, n] per-example weights, each domain's summing to 1; use it to pad
        domains of unequal size to a common n (zero weight on padding).
      probe_products: how Hutchinson's K products H_e z_k are formed (same probes, same value
        up to rounding): "hvp" probes the data (O(n P K) per estimate), "dense" forms the
        [P, P] head Hessian once per domain (O(n P^2), P = (d + 1) C) and multiplies it by the
        probes; "auto" picks the one with fewer multiply-adds (dense for ColoredMNIST's
        391-parameter head and 150 probes on 25,000 examples, where it halves the penalty's
        cost; hvp for large heads, small batches or few probes).
      logits: optional ``features @ kernel + bias`` [E, n, C] that the caller already has
        (e.g. from the model's forward pass), so that no method recomputes it; it must be
        that function of ``head_params`` and ``features`` for the gradients to be right.
    """
    linear_head._check_loss(loss)
    _check_linear_head_inputs(head_params, features, labels, weights, loss)
    if probe_products not in PROBE_PRODUCTS:
        raise ValueError(f"unknown probe_products {probe_products!r}; valid: "
                         f"{', '.join(PROBE_PRODUCTS)}")
    batches = {"features": features, "labels": labels}
    if weights is not None:
        batches["weights"] = weights
    if logits is not None:
        batches["logits"] = logits
    if method in ("hgp", "exact_diag"):
        _num_domains(batches)
        _validate(method, key, num_probes, reduction, probes)
        # All domains at once, in fewer passes over the features (hjax.core.stacked_head).
        return _combine(*stacked_head.domain_terms(
            head_params, features, labels, loss=loss, weights=weights, method=method,
            logits=logits), reduction=reduction, stop_gradient_reference=stop_gradient_reference)

    def linearize(params, batch):
        return linear_head.linearize(params, batch["features"], batch["labels"], loss,
                                     batch.get("weights"), batch.get("logits"))

    def exact_diag(params, batch, hvp_fn):
        return linear_head.hessian_diag(params, batch["features"], batch["labels"], loss,
                                        batch.get("weights"), batch.get("logits"))

    def dense_estimates(params, batch, hvp_fn, keys):
        h = linear_head.hessian_dense(params, batch["features"], batch["labels"], loss,
                                      batch.get("weights"), batch.get("logits"))
        return [_hutchinson_dense(params, h, k, num_probes) for k in keys]

    use_dense = method == "hutchinson" and (
        probe_products == "dense" or probe_products == "auto" and _dense_is_cheaper(
            features.shape[1], features.shape[2], head_params["bias"].shape[-1],
            num_probes, 1 if probes == "shared" else 2))
    return _penalty_terms(linearize, exact_diag, head_params, batches, method=method, key=key,
                          num_probes=num_probes, reduction=reduction,
                          stop_gradient_reference=stop_gradient_reference,
                          chunk_size=chunk_size, probes=probes,
                          probe_estimates=dense_estimates if use_dense else None)


def _check_linear_head_inputs(head_params, features, labels, weights, loss="softmax") -> None:
    """Head keys, the [E, n, d] / [E, n] shapes, a one-output head for ``"logistic"`` and, for
    concrete labels, their range, named in one line when they are wrong. Labels traced under
    ``jit`` have no values to check: out-of-range ones then give a meaningless penalty."""
    keys = sorted(head_params) if hasattr(head_params, "keys") else None
    if keys != ["bias", "kernel"]:
        found = (f"keys {keys}" if keys is not None
                 else f"a {type(head_params).__name__}")
        raise ValueError(
            f"head_params must be a dict with keys ['bias', 'kernel'] (Flax Dense layout: "
            f"kernel [d, C], bias [C]); got {found}. Rename the head's parameters, or use "
            f"hessian_penalty with a loss_fn for another head")
    kernel, bias = jnp.shape(head_params["kernel"]), jnp.shape(head_params["bias"])
    if len(kernel) != 2 or bias != kernel[1:]:
        raise ValueError(f"head_params has kernel {kernel} and bias {bias}; expected "
                         f"kernel [d, C] and bias [C]")
    if jnp.ndim(features) != 3 or jnp.shape(features)[-1] != kernel[0]:
        raise ValueError(f"features has shape {jnp.shape(features)}; expected [E, n, d] with "
                         f"d = {kernel[0]} (the kernel's first axis)")
    for name, a in (("labels", labels), ("weights", weights)):
        if a is not None and jnp.shape(a) != jnp.shape(features)[:2]:
            raise ValueError(f"{name} has shape {jnp.shape(a)}; expected [E, n] = "
                             f"{jnp.shape(features)[:2]}, like features' first two axes")
    if loss == "logistic" and kernel[1] != 1:
        raise ValueError(f"loss='logistic' needs a head with one output (kernel [d, 1], "
                         f"bias [1]); this head has {kernel[1]} (kernel {kernel}): use "
                         f"loss='softmax' for a {kernel[1]}-class head")
    if not isinstance(labels, jax.core.Tracer) and jnp.size(labels):
        hi = 1 if loss == "logistic" else kernel[1] - 1
        values = np.asarray(labels)        # numpy: no tracing, also inside a jitted caller
        lo_found, hi_found = values.min().item(), values.max().item()
        if lo_found < 0 or hi_found > hi:
            raise ValueError(f"labels range over [{lo_found}, {hi_found}]; loss={loss!r} with "
                             f"this head needs labels in [0, {hi}]")


def _dense_is_cheaper(n, d, c, num_probes, estimates_per_domain, max_params=4096):
    """Multiply-adds (forward and backward) of the two ways to form one domain's products."""
    p = (d + 1) * c
    by_hvp = 3 * estimates_per_domain * 2 * n * p * num_probes
    # The logistic head's Gram matrix has a one-matmul backward (linear_head.weighted_gram).
    by_dense = (2 if c == 1 else 3) * n * p * p + 3 * estimates_per_domain * p * p * num_probes
    return p <= max_params and by_dense < by_hvp


def _hutchinson_dense(head_params, h, key, num_probes):
    """(1/K) sum_k z_k * (H z_k) with H given densely, over the probes that
    :func:`hjax.core.curvature.hutchinson_from_hvp` draws (``hutchinson_probe``)."""
    probes = jax.vmap(lambda i: hutchinson_probe(key, i, head_params))(
        jnp.arange(num_probes))
    z = linear_head.flatten(probes)                       # [K, P]
    est = jnp.mean(z * (z @ h), axis=0)                   # H is symmetric
    d, c = head_params["kernel"].shape
    return linear_head.unflatten(est, d, c)


def linear_head_penalty(head_params: PyTree, features: jax.Array, labels: jax.Array, *,
                        loss: str = "softmax", weights: jax.Array | None = None,
                        method: str = "hutchinson", alpha: float = 1.0, beta: float = 1.0,
                        num_probes: int = 100, key: jax.Array | None = None,
                        reduction: str = "mean", stop_gradient_reference: bool = True,
                        chunk_size: int | None = None,
                        probes: str = "independent",
                        probe_products: str = "auto",
                        logits: jax.Array | None = None) -> jax.Array:
    """:func:`hessian_penalty` for a linear head on features, by the closed forms."""
    terms = linear_head_penalty_terms(head_params, features, labels, loss=loss,
                                      weights=weights, method=method, num_probes=num_probes,
                                      key=key, reduction=reduction,
                                      stop_gradient_reference=stop_gradient_reference,
                                      chunk_size=chunk_size, probes=probes,
                                      probe_products=probe_products, logits=logits)
    return alpha * terms.hessian + beta * terms.gradient
