"""Head-Hessian and gradient alignment tracked during training (``run.py --track_alignment_every``).

At a tracking step the current (pre-update) params give features ``model.features(params,
images)``; on those features the closed-form head loss (``hjax.core.linear_head.loss_value``,
logistic for a one-logit head, softmax otherwise, weighted so that zero-weight padding does
not count) is handed to ``hjax.core.diagnostics``. Two comparisons are recorded:

- ``*_train``: between the two training domains, H_0 vs H_1 and g_0 vs g_1 (with more than
  two training domains: the maximum over pairs).
- ``*_train_test``: between the training domains' mean loss Lbar = (1/E) sum_e L_e (the
  source of the transferability bound; Hbar, gbar) and the test domain (the mean loss of
  the test domains if there are several). Each domain's weights sum to 1, so Lbar is also
  the loss of the pooled examples weighted by 1/E (the two training domains have equal
  sizes in the IRM protocol, so it is the pooled loss as well).

Keys of the returned dict (Python floats):
``hess_spectral_*`` (||H_a - H_b||_2 by power iteration), ``hess_spectral_*_residual`` (its
power-iteration residual; above ``tol`` means not converged), ``hess_frobenius_*``
(||H_a - H_b||_F, exact from P Hessian-vector products: the IRM head has P = 391) and
``grad_dist_*`` (||g_a - g_b||). All quantities are w.r.t. the head params only
(docs/protocols.md, "Notation"). The whole computation is one jitted function that runs outside the compiled
train step, so runs without tracking pay nothing.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hjax.core import diagnostics, linear_head

TRACKED_KEYS = ("hess_spectral_train", "hess_spectral_train_residual", "hess_frobenius_train",
                "grad_dist_train", "hess_spectral_train_test",
                "hess_spectral_train_test_residual", "hess_frobenius_train_test",
                "grad_dist_train_test")


def head_loss_fn(num_outputs: int) -> Callable:
    """``loss_fn(head, batch)`` on a dict batch {features [n, d], labels [n], weights [n]}."""
    kind = "logistic" if num_outputs == 1 else "softmax"

    def loss_fn(head, batch):
        return linear_head.loss_value(head, batch["features"], batch["labels"], kind,
                                      batch["weights"])

    return loss_fn


def domain_batches(features, labels, weights) -> list[dict]:
    """Split [E, n, ...] arrays into E per-domain dict batches."""
    return [{"features": features[e], "labels": labels[e], "weights": weights[e]}
            for e in range(features.shape[0])]


def difference_operators(num_train: int, num_test: int) -> np.ndarray:
    """Rows of coefficients c over the domains [train..., test...]: D = sum_d c_d H_d.

    One row per pair of training domains (H_a - H_b), then the last row
    Hbar_train - Hbar_test (the mean over training domains minus the mean over test
    domains). The same coefficients applied to the gradients give the gradient differences.
    """
    n = num_train + num_test
    eye = np.eye(n, dtype=np.float32)
    rows = [eye[a] - eye[b] for a in range(num_train) for b in range(a + 1, num_train)]
    source = np.concatenate([np.full(num_train, 1.0 / num_train), np.zeros(num_test)])
    target = np.concatenate([np.zeros(num_train), np.full(num_test, 1.0 / num_test)])
    rows.append((source - target).astype(np.float32))
    return np.stack(rows)


def alignment_metrics(loss_fn: Callable, head: Any, train_batches: Sequence,
                      test_batches: Sequence, key, *, num_iters: int = 100,
                      tol: float = 1e-4) -> dict[str, jax.Array]:
    """The tracked distances as arrays (jittable; ``loss_fn``, ``num_iters`` static).

    Uses ``hjax.core.diagnostics.combination_distances`` so that all domains are linearized
    once and every operator is power-iterated in one loop: the same computation as
    ``hessian_spectral_distance`` / ``hessian_frobenius_distance`` (exact) /
    ``gradient_distance`` on (train a, train b) and on (mean of train, mean of test), since
    the Hessian and gradient of a mean of losses are the means of theirs.
    """
    if len(train_batches) < 2 or len(test_batches) < 1:
        raise ValueError("alignment tracking needs >= 2 training domains and a test domain")
    coef = difference_operators(len(train_batches), len(test_batches))
    d = diagnostics.combination_distances(loss_fn, head, list(train_batches) + list(test_batches),
                                          coef, key, num_iters=num_iters, tol=tol)
    spec, res, frob, grad = d["spectral"], d["spectral_residual"], d["frobenius"], d["gradient"]
    # With more than two training domains, "train" is the worst pair.
    i = jnp.argmax(spec[:-1])
    return {
        "hess_spectral_train": spec[i], "hess_spectral_train_residual": res[i],
        "hess_frobenius_train": jnp.max(frob[:-1]), "grad_dist_train": jnp.max(grad[:-1]),
        "hess_spectral_train_test": spec[-1], "hess_spectral_train_test_residual": res[-1],
        "hess_frobenius_train_test": frob[-1], "grad_dist_train_test": grad[-1],
    }


def make_alignment_fn(model, num_test: int, *, num_iters: int = 100, tol: float = 1e-4):
    """``fn(params, train, evals, key, step) -> dict of arrays``, to be jitted.

    ``train`` and ``evals`` are ``hjax.protocols.irm_cmnist.train.DomainBatch``es (images [E, n, ...], labels and
    weights [E, n]); the first ``num_test`` domains of ``evals`` are the test domains (the
    rest, e.g. the gray test, are ignored).
    """
    loss_fn = head_loss_fn(model.num_outputs)

    def fn(params, train, evals, key, step):
        key = jax.random.fold_in(key, step)
        head = params["classifier"]
        z_train = model.features(params, train.images)
        z_test = model.features(params, evals.images[:num_test])
        return alignment_metrics(
            loss_fn, head, domain_batches(z_train, train.labels, train.weights),
            domain_batches(z_test, evals.labels[:num_test], evals.weights[:num_test]), key,
            num_iters=num_iters, tol=tol)

    return fn


class AlignmentTracker:
    """Compiled tracking for one restart: ``tracker(params, step) -> dict of floats``.

    Compiles lazily on the first call (``compile_time_s``) and keeps the wall time of each
    call (``call_times_s``) so that tracking cost stays visible and out of step times.
    """

    def __init__(self, model, num_test: int, train, evals, key, *, num_iters: int = 100,
                 tol: float = 1e-4):
        self.train, self.evals, self.key = train, evals, key
        self.fn = jax.jit(make_alignment_fn(model, num_test, num_iters=num_iters, tol=tol))
        self.compiled = None
        self.compile_time_s = 0.0
        self.call_times_s: list[float] = []

    def __call__(self, params, step: int) -> dict[str, float]:
        step = jnp.asarray(step, jnp.int32)
        if self.compiled is None:
            t0 = time.perf_counter()
            self.compiled = self.fn.lower(params, self.train, self.evals, self.key,
                                          step).compile()
            self.compile_time_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = self.compiled(params, self.train, self.evals, self.key, step)
        out = {k: float(v) for k, v in out.items()}
        self.call_times_s.append(time.perf_counter() - t0)
        return out
