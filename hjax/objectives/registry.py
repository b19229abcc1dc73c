"""The one registry of domain-generalization objectives, shared by every training protocol.

An objective is a small pure function of every training domain's head inputs at once

    penalty_fn(inputs: Inputs, state, key, hp, form: Form) -> Output

where ``inputs`` holds the head params, features [E, n, d], logits [E, n, C], labels [E, n]
and optional per-example weights [E, n] (each domain's summing to 1; zero on padding; None
is the plain mean). ``hp`` holds the objective's own hyperparameters under short names
(``alpha``, ``beta``, ``num_probes``, ``ema``, ``eta``): each protocol maps its hparam names
onto them. The protocol adds the mean NLL, weights the returned penalty with its own
schedule (the IRM scripts' annealed weight, DomainBed's per-algorithm lambdas) and owns the
optimizer.

Where the IRM-script protocol and DomainBed differ on purpose (V-REx pairwise vs variance,
IRMv1 full-batch vs half-batch product, sums vs means over domains, stop-gradient of the
references, Fishr's EMA), the difference is a field of :class:`Form`, not a second
implementation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Form:
    """How a protocol writes the objectives where the published protocols differ.

    reduction: "sum" or "mean" of the alignment terms over domains (and, for Fishr, over
      head coordinates).
    stop_gradient_reference: stop gradients through the domain means (gbar, Abar) that the
      Hessian-alignment terms compare each domain with.
    irm: "full_batch" (d/ds L_e)^2, or "half_batch_product" (d/ds L_e on the even half
      times d/ds L_e on the odd half: DomainBed's unbiased estimate).
    vrex: "pairwise", the mean over domain pairs of (L_i - L_j)^2 ((L_0 - L_1)^2 for two
      domains), or "variance" of the domain losses.
    fishr_ema: smooth Fishr's gradient variances with an exponential moving average (hp
      ``ema``), carried in the objective's state.
    """
    reduction: str = "mean"
    stop_gradient_reference: bool = True
    irm: str = "half_batch_product"
    vrex: str = "variance"
    fishr_ema: bool = True

    def __post_init__(self):
        for name, valid in (("reduction", ("mean", "sum")),
                            ("irm", ("full_batch", "half_batch_product")),
                            ("vrex", ("pairwise", "variance"))):
            if getattr(self, name) not in valid:
                raise ValueError(f"Form.{name}={getattr(self, name)!r} is not valid; choose "
                                 f"one of: {', '.join(valid)}")


# The IRM / Fishr / authors' ColoredMNIST scripts (protocol notes in docs/protocols.md).
IRM_SCRIPT_FORM = Form(reduction="sum", stop_gradient_reference=False, irm="full_batch",
                       vrex="pairwise", fishr_ema=False)
# DomainBed and the authors' DomainBed fork.
DOMAINBED_FORM = Form()


class Inputs(NamedTuple):
    """Every training domain's head inputs, stacked on a leading domain axis E."""
    head: PyTree                    # {"kernel": [d, C], "bias": [C]}
    features: jax.Array             # [E, n, d]
    logits: jax.Array               # [E, n, C], = features @ kernel + bias
    labels: jax.Array               # [E, n]
    weights: jax.Array | None = None    # [E, n]; None = plain mean over n
    # Only objectives with scope="model" (IGA) use it: () -> (losses [E], grads over ALL
    # params, each leaf stacked [E, ...]). Protocols pass it lazily; it costs a backward pass.
    model_domain_grads: Callable[[], tuple[jax.Array, PyTree]] | None = None


class Output(NamedTuple):
    penalty: jax.Array              # scalar; the protocol weights it
    state: PyTree = ()              # the objective's new state (Fishr's EMA, GroupDRO's q)
    logs: Mapping[str, jax.Array] = {}
    # A risk that replaces the protocol's mean NLL (GroupDRO's q-weighted loss), or None.
    risk: jax.Array | None = None


def _no_state(head, num_domains, hp, form):
    return ()


class Objective(NamedTuple):
    name: str
    description: str
    penalty_fn: Callable | None      # None: the protocol supplies the whole step (Fish)
    init_state: Callable = _no_state  # (head, num_domains, hp, form) -> state
    scope: str = "head"               # "head", or "model" (needs Inputs.model_domain_grads)
    penalized: bool = True            # False: no penalty term to log (ERM, GroupDRO, Fish)


OBJECTIVES: dict[str, Objective] = {}


def register(name: str, description: str, *, init_state: Callable = _no_state,
             scope: str = "head", penalized: bool = True):
    """Decorator: register ``penalty_fn`` under ``name`` (a name is registered once)."""
    def wrap(fn):
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = Objective(name, description, fn, init_state, scope, penalized)
        return fn
    return wrap


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
