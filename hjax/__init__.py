"""hjax: domain generalization by Hessian alignment (HGP, Hutchinson) in JAX.

The public API is the curvature core (:mod:`hjax.core`): the penalties and their building
blocks. Layers, each importable from its package: ``hjax.core`` (head curvature math),
``hjax.models``, ``hjax.data``, ``hjax.io``, ``hjax.objectives`` (one registry of every
algorithm), ``hjax.analysis``, ``hjax.protocols`` (training protocols) and ``hjax.cli``
(command lines). docs/architecture.md describes them.
"""

from hjax.core import diagnostics, linear_head
from hjax.core.curvature import (exact_hessian_diag, grad_and_hvp, hutchinson_diag, hvp,
                                 rademacher_like)
from hjax.core.penalty import (METHODS, PenaltyTerms, hessian_penalty, hessian_penalty_terms,
                               linear_head_penalty, linear_head_penalty_terms)

__version__ = "0.1.0"

__all__ = [
    "METHODS", "PenaltyTerms", "diagnostics", "exact_hessian_diag", "grad_and_hvp",
    "hessian_penalty", "hessian_penalty_terms", "hutchinson_diag", "hvp", "linear_head",
    "linear_head_penalty", "linear_head_penalty_terms", "rademacher_like",
]
