"""Transfer measure of trained models from the training domains to the test domain.

Behind ``experiments/transferability.py``. For a trained model (featurizer + linear head h*),
the features of the trained featurizer are fixed and ``hjax.core.diagnostics.transfer_measure``
is evaluated over the ball of heads {h : ||h - h*|| <= delta} (head-only, as Hemati et al.):

- source S: the training domains' mean loss Lbar = (1/E) sum_e L_e (their examples pooled
  with weight 1 / (E n_e) each; equal to the plain pooled loss when the domains have equal
  sizes, as in the IRM protocol);
- target T: the test domain (the mean over test domains if a dataset has several).

Each result row holds the measure, its estimated parts, the two second-order bounds
(``bound`` = delta ||Δg|| + delta²/2 ||ΔH||₂, which is NOT an upper bound in general, and
``corrected_bound`` = bound + offset, which is, to second order) and the test accuracy of the
worst head in the ball (``worst_target_accuracy``) next to that of h* itself.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hjax.core import diagnostics
from hjax.analysis.alignment_tracking import head_loss_fn
from hjax.io.params_io import to_host

ROW_KEYS = ("measure", "gap_sup", "gap_center", "source_inf", "target_inf", "bound",
            "offset", "corrected_bound", "hessian_spectral", "hessian_residual",
            "gradient_distance", "worst_target_accuracy")


def pooled_batch(features: Sequence, labels: Sequence) -> dict:
    """Domains -> one batch whose weighted loss is the mean of the per-domain mean losses."""
    e = len(features)
    weights = [np.full(len(y), 1.0 / (e * len(y)), np.float32) for y in labels]
    return {"features": jnp.concatenate([jnp.asarray(z) for z in features]),
            "labels": jnp.asarray(np.concatenate(labels).astype(np.int32)),
            "weights": jnp.asarray(np.concatenate(weights))}


def accuracy_fn(num_outputs: int):
    def acc(head, batch):
        logits = batch["features"] @ head["kernel"] + head["bias"]
        if num_outputs == 1:
            pred = (logits[:, 0] > 0).astype(jnp.int32)
        else:
            pred = jnp.argmax(logits, axis=-1)
        return jnp.sum(batch["weights"] * (pred == batch["labels"]))
    return acc


@functools.lru_cache(maxsize=None)
def _compiled_measure(num_outputs: int, num_restarts: int, num_steps: int, lr: float):
    loss_fn, acc = head_loss_fn(num_outputs), accuracy_fn(num_outputs)

    @jax.jit
    def fn(head, source, target, delta, key):
        tm = diagnostics.transfer_measure(loss_fn, head, source, target, delta=delta, key=key,
                                          num_restarts=num_restarts, num_steps=num_steps,
                                          lr=lr, accuracy_fn=acc)
        out = {k: getattr(tm, k) for k in ROW_KEYS}
        out["target_accuracy"] = acc(head, target)
        out["source_accuracy"] = acc(head, source)
        return out

    return fn


def evaluate_model(model, params, envs, info, deltas: Sequence[float], key, *,
                   num_restarts: int = 8, num_steps: int = 200, lr: float = 0.1) -> list[dict]:
    """One row per delta: the transfer measure train domains -> test domain of one model."""
    # Host copies: trained params may be replicated over a mesh, loaded ones are numpy; the
    # evaluation runs on one device either way (and compiles to the same program).
    params = to_host(params)
    feats = jax.jit(model.features)

    def batch(indices):
        zs = [feats(params, jnp.asarray(envs[i].images)) for i in indices]
        return pooled_batch(zs, [envs[i].labels for i in indices])

    source, target = batch(info.train_envs), batch(info.test_envs)
    head = jax.tree_util.tree_map(jnp.asarray, params["classifier"])  # [d, C], [C]
    fn = _compiled_measure(model.num_outputs, num_restarts, num_steps, float(lr))
    rows = []
    for i, delta in enumerate(deltas):
        out = fn(head, source, target, jnp.float32(delta), jax.random.fold_in(key, i))
        row = {"delta": float(delta)}
        row.update({k: float(v) for k, v in out.items()})
        rows.append(row)
    return rows
