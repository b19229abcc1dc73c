"""An algorithm's DomainBed objective as a function of the head and the features."""

from __future__ import annotations

from hjax.models.linear_model import Model
from hjax.protocols.domainbed.algorithms import Batch, make_objective


class _FeaturesIn:
    """The model the objective sees: its "images" are the featurizer's features."""
    featurizer = None
    head = staticmethod(Model.head)

    @staticmethod
    def features(params, features):
        return features


def feature_objective(name: str, hp):
    """``(head, features [E, B, d], labels [E, B], state, key, step) -> (loss, (state, logs))``:
    :func:`make_objective` with the featurizer split off, for code that runs the featurizer
    itself (forward, and backward through ``jax.vjp``: the chain rule gives the joint step's
    gradient), e.g. to share one compiled featurizer between algorithms or dtypes."""
    loss_fn = make_objective(name, _FeaturesIn(), hp)

    def objective(head, features, labels, state, key, step):
        return loss_fn({"classifier": head}, state, Batch(features, labels), key, step)
    return objective
