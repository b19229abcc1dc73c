"""The full-batch IRM-script protocol (docs/protocols.md): one compiled, data-parallel train step.

Per step, on every training domain at once:

    loss = Lbar + l2 * sum_{all params} ||theta||^2 + lam(t) * penalty ;  if lam(t) > 1: loss /= lam(t)
    lam(t) = 1 for t < anneal_iters, penalty_weight afterwards

with full-batch Adam. Metrics of step t are those of the parameters *before* update t, as in
the original scripts, so the numbers reported "at the last step" are read the same way.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hjax.core.linear_head import domain_accuracies, domain_losses
from hjax.models import Model
from hjax.objectives import IRM_SCRIPT_FORM, Inputs, get_objective
from hjax.protocols import sharding

# The objectives this protocol runs (every one with a published or hjax-extension row).
METHODS = ("erm", "irm", "vrex", "fishr", "hgp", "hutchinson", "hutchinson_shared",
           "exact_diag")

# docs/protocols.md, IRM-protocol ColoredMNIST (the values of the IRM / Fishr scripts).
DEFAULT_HPARAMS = {
    "lr": 4.898536566546834e-4,
    "l2_weight": 1.10794568e-3,
    "penalty_weight": 91257.18613115903,
    "anneal_iters": 190,
    "hidden_dim": 390,
    "num_probes": 150,
    "alpha": 1.0,
    "beta": 1.0,
    "curvature": "closed_form",
}
# ERM is the same protocol with no penalty (and so no rescaling of the loss after annealing).
METHOD_DEFAULTS = {"erm": {"penalty_weight": 0.0}}


def method_hparams(method: str, **overrides) -> dict:
    """Defaults for ``method``, then any non-None overrides."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    hp = dict(DEFAULT_HPARAMS, **METHOD_DEFAULTS.get(method, {}))
    unknown = set(overrides) - set(hp)
    if unknown:
        raise ValueError(f"unknown hparams {sorted(unknown)}; valid: {', '.join(hp)}")
    hp.update({k: v for k, v in overrides.items() if v is not None})
    return hp


class DomainBatch(NamedTuple):
    """Every domain's examples, padded to one size: images [E, n, ...], labels/weights [E, n]."""
    images: Any
    labels: Any
    weights: Any


def stack_domains(envs, multiple: int = 1) -> DomainBatch:
    """Stack environments into one padded batch (padding has weight 0; n % multiple == 0)."""
    n = sharding.pad_to_multiple(max(len(e.labels) for e in envs), multiple)
    images = np.zeros((len(envs), n) + envs[0].images.shape[1:], np.float32)
    labels = np.zeros((len(envs), n), np.int32)
    weights = np.zeros((len(envs), n), np.float32)
    for i, env in enumerate(envs):
        k = len(env.labels)
        images[i, :k], labels[i, :k], weights[i, :k] = env.images, env.labels, 1.0 / k
    return DomainBatch(images, labels, weights)


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array


def penalty_weight(step, hp):
    return jnp.where(step >= hp["anneal_iters"], hp["penalty_weight"], 1.0)


def domain_features(model: Model, params, images, merge_domains: bool = False):
    """The featurizer on every domain's examples, [E, n, ...] -> [E, n, d].

    ``merge_domains=True`` runs it on one [E * n, ...] batch and splits the result again:
    the same values, but the backward pass then contracts the weight gradients over one
    example axis instead of two, which saves XLA's CPU backend a transposed copy of every
    hidden layer's cotangent (about 7% of ColoredMNIST's ERM step on 2 cores). Only for an
    example axis that is not sharded over several devices: merging it with the domain
    axis would make XLA regather the examples.
    """
    if not merge_domains:
        return model.features(params, images)
    e, n = images.shape[:2]
    z = model.features(params, images.reshape((e * n,) + images.shape[2:]))
    return z.reshape((e, n) + z.shape[1:])


def _resolve_merge(merge_domains):
    # Default: merge when this process sees a single device (no data-parallel sharding).
    return jax.device_count() == 1 if merge_domains is None else bool(merge_domains)


def make_loss_fn(model: Model, method: str, hp: dict, *,
                 merge_domains: bool | None = None) -> Callable:
    """``merge_domains``: see :func:`domain_features`; None merges when only one device is
    visible. Pass False when the batch's example axis is sharded over several devices."""
    objective = get_objective(method)
    merge = _resolve_merge(merge_domains)

    def loss_fn(params, batch: DomainBatch, key, step):
        features = domain_features(model, params, batch.images, merge)  # [E, n, d]
        logits = model.head(params["classifier"], features)            # [E, n, C]
        nll_e = domain_losses(logits, batch.labels, batch.weights)
        out = objective.penalty_fn(
            Inputs(params["classifier"], features, logits, batch.labels, batch.weights),
            (), key, hp, IRM_SCRIPT_FORM)
        penalty = out.penalty
        l2 = sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(params))
        lam = penalty_weight(step, hp)
        loss = jnp.mean(nll_e) + hp["l2_weight"] * l2 + lam * penalty
        # "if lam > 1: loss /= lam", written so that no branch divides by zero (a jnp.where
        # over loss / 0 would still send NaN gradients through the untaken branch).
        loss = loss / jnp.maximum(lam, 1.0)
        metrics = {"loss": loss, "nll": jnp.mean(nll_e), "penalty": penalty,
                   "acc": domain_accuracies(logits, batch.labels, batch.weights),
                   "domain_nll": nll_e, **out.logs}
        return loss, metrics

    return loss_fn


def make_train_step(model: Model, method: str, hp: dict, *,
                    merge_domains: bool | None = None):
    """(state, batch, key) -> (state, metrics); jit it (the whole loss is one function).

    ``merge_domains``: as in :func:`make_loss_fn` (pass ``mesh.devices.size == 1``)."""
    loss_fn = make_loss_fn(model, method, hp, merge_domains=merge_domains)
    optimizer = optax.adam(hp["lr"])

    def init(params):
        return TrainState(params=params, opt_state=optimizer.init(params),
                          step=jnp.zeros((), jnp.int32))

    def step(state: TrainState, batch: DomainBatch, key):
        key = jax.random.fold_in(key, state.step)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, key, state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), metrics

    return init, step


def make_eval(model: Model):
    def evaluate(params, batch: DomainBatch):
        logits = model.apply(params, batch.images)
        return {"acc": domain_accuracies(logits, batch.labels, batch.weights),
                "nll": domain_losses(logits, batch.labels, batch.weights)}
    return evaluate


class Diverged(Exception):
    pass


def _floats(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), tree)


def run_restart(model: Model, envs, info, method: str, hp: dict, *, key, steps: int,
                mesh, log_every: int = 100, on_step: Callable | None = None,
                on_log: Callable | None = None, fault_step: int | None = None,
                track_every: int = 0, track_fn: Callable | None = None,
                on_end: Callable | None = None) -> dict:
    """Train one restart and return its record (accuracies at the last step, timings).

    ``fault_step`` injects a NaN into the loss at that step (for testing divergence handling).
    ``track_every=N > 0`` records head-Hessian and gradient alignment
    (``hjax.analysis.alignment_tracking``) on the pre-update params every N steps and at the last
    step, outside the compiled train step; the values join that step's history row (a
    tracking step gets a row even off the ``log_every`` grid). ``track_fn(params, step) ->
    dict`` replaces the default tracker. ``on_end(params)`` receives the final params of a
    restart that did not diverge.
    """
    n_dev = mesh.devices.size
    train = stack_domains([envs[i] for i in info.train_envs], n_dev)
    held_out = [envs[i] for i in info.test_envs + info.gray_envs]
    evals = stack_domains(held_out, n_dev)
    train, evals = sharding.shard_examples(mesh, train), sharding.shard_examples(mesh, evals)

    init_key, step_key = jax.random.split(key)
    params = model.init(init_key, jnp.asarray(envs[0].images[:1]))
    init, step_fn = make_train_step(model, method, hp, merge_domains=n_dev == 1)
    state = sharding.replicate(mesh, init(params))
    step_key = sharding.replicate(mesh, step_key)

    t0 = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=0).lower(state, train, step_key).compile()
    evaluate = jax.jit(make_eval(model)).lower(state.params, evals).compile()
    compile_time = time.perf_counter() - t0

    tracker = None
    if track_every and track_fn is None:
        from hjax.analysis.alignment_tracking import AlignmentTracker
        # A key of its own, so that tracking leaves init and step keys (and results) alone.
        track_key = sharding.replicate(mesh, jax.random.fold_in(key, 0x7A11))
        tracker = track_fn = AlignmentTracker(model, len(info.test_envs), train, evals,
                                              track_key)

    history, step_times = [], []
    status, diverged_step, metrics, held, alignment = "ok", None, None, None, None
    for t in range(steps):
        tracked = bool(track_every) and (t % track_every == 0 or t == steps - 1)
        logged = t % log_every == 0 or t == steps - 1 or tracked
        if logged:
            held = evaluate(state.params, evals)     # pre-update params, like the scripts
        if tracked:
            alignment = track_fn(state.params, t)
        start = time.perf_counter()
        state, metrics = compiled(state, train, step_key)
        loss = float(metrics["loss"])                # one sync per step: detects NaN at once
        if fault_step is not None and t == fault_step:
            loss = float("nan")
        step_times.append(time.perf_counter() - start)
        if not math.isfinite(loss):
            status, diverged_step = "diverged", t
            break
        if logged:
            row = _log_row(t, metrics, held, info)
            if tracked:
                row.update(alignment)
            history.append(row)
            if on_log:
                on_log(row)
        if on_step:
            on_step(t)

    record = {"status": status, "diverged_step": diverged_step, "steps": steps,
              "step_time_s": statistics.median(step_times[1:] or step_times),
              "compile_time_s": compile_time, "num_devices": n_dev, "history": history}
    if track_every:
        record["track_every"] = track_every
    if tracker is not None:
        record["track_compile_time_s"] = tracker.compile_time_s
        record["track_time_s"] = (statistics.median(tracker.call_times_s)
                                  if tracker.call_times_s else None)
    if status == "ok":
        last = history[-1]
        record.update({k: last[k] for k in ("train_acc", "test_acc", "gray_test_acc",
                                            "train_nll", "penalty")})
    else:
        record.update({k: None for k in ("train_acc", "test_acc", "gray_test_acc",
                                          "train_nll", "penalty")})
    if on_end is not None and status == "ok":
        on_end(state.params)
    return record


def _log_row(t, metrics, held, info):
    m = _floats(metrics)
    h = _floats(held)
    n_test = len(info.test_envs)
    row = {"step": t, "train_nll": m["nll"], "train_acc": float(np.mean(m["acc"])),
           "train_env_acc": m["acc"], "penalty": m["penalty"], "loss": m["loss"],
           "test_acc": float(np.mean(h["acc"][:n_test])),
           "gray_test_acc": float(np.mean(h["acc"][n_test:])) if info.gray_envs else None}
    for k in ("hessian_term", "gradient_term"):
        if k in m:
            row[k] = m[k]
    return row
