"""Exact population-level penalties of ColoredMNIST classifiers, correlation vs label shift.

Why the penalties behave differently under label shift, without training anything: each
image is reduced to its shape bit s = (digit < 5) and its color bit c, so every domain is a
distribution over 8 atoms (s, y, c) with y = s xor Bern(0.25) and c = y xor Bern(e_domain),
and every domain loss is an exact expectation. Three classifiers, each a logistic head on a
representation:

- "invariant": head on phi = [s] (color is not in the representation), calibrated, so
  p = 0.75 / 0.25; 75% on every domain.
- "erm": head on phi = [s, c, s*c] (a table over the 4 cells), fitted on the pooled
  training domains, i.e. what ERM converges to.
- "env_color": the same head, but each shape class gets the color posterior of the domain
  that holds most of it. Under label shift the shape bit nearly names the domain, so this
  classifier is calibrated within each domain while still reading color.

The script prints, for each setting, the gradient term and the Hessian terms of
``hjax.hessian_penalty_terms`` (ColoredMNIST-script form: summed over domains) of each
classifier, its accuracies and its train NLL, and what a term costs once the penalty weight
is switched on. The domains' digit mixes come from ``hjax.data.protocols.label_shift_indices`` on a
digit array with MNIST's class balance.

    python experiments/label_shift_population.py     (hjax.cli.label_shift_population)
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from hjax.data.protocols import IRM_FLIPS, LABEL_NOISE, LABEL_SHIFT_SPLITS, label_shift_indices
from hjax.core.penalty import hessian_penalty_terms

TRAIN_FLIPS, TEST_FLIP = IRM_FLIPS[:2], IRM_FLIPS[2]
# Digits < 5 among MNIST's 60,000 training images: 30,596.
LOW_FRACTION = 30596 / 60000
SETTINGS = ("correlation",) + tuple(f"label_shift_{s}" for s in LABEL_SHIFT_SPLITS)

ATOMS = np.array(list(itertools.product([0, 1], [0, 1], [0, 1])), np.float32)  # (s, y, c)


def atom_probs(p_low: float, flip: float) -> np.ndarray:
    """P(s, y, c) over ATOMS for a domain with P(s = 1) = p_low and color flip `flip`."""
    s, y, c = ATOMS.T
    p_s = np.where(s == 1, p_low, 1 - p_low)
    p_y = np.where(y == s, 1 - LABEL_NOISE, LABEL_NOISE)
    p_c = np.where(c == y, 1 - flip, flip)
    return (p_s * p_y * p_c).astype(np.float32)


def domain_low_fractions(setting: str, n: int = 50000) -> tuple[float, float]:
    """P(digit < 5) in env0 and env1 of `setting` (50,000 training images as in docs/protocols.md)."""
    n_low = round(LOW_FRACTION * n)
    digits = np.concatenate([np.zeros(n_low, int), np.full(n - n_low, 5)])
    digits = np.random.default_rng(0).permutation(digits)
    if setting == "correlation":
        idx = (np.arange(0, n, 2), np.arange(1, n, 2))
    else:
        idx = label_shift_indices(digits, setting.removeprefix("label_shift_"))
    return tuple(float(np.mean(digits[i] < 5)) for i in idx)


def representation(name: str, atoms: np.ndarray) -> np.ndarray:
    s, _, c = atoms.T
    if name == "invariant":
        return s[:, None]
    return np.stack([s, c, s * c], axis=1)


def _logit(p):
    return np.log(p) - np.log1p(-p)


def fitted_head(name: str, probs: np.ndarray) -> dict:
    """The head minimizing the expected logistic loss under `probs` (closed form; `probs`
    need only be right within each cell, so it may mix domains).

    Both representations can express any function of their inputs, so the minimizer
    predicts the posterior P(y = 1 | phi) cell by cell.
    """
    s, y, c = ATOMS.T

    def posterior(mask):
        return probs[mask & (y == 1)].sum() / probs[mask].sum()

    if name == "invariant":
        l0, l1 = (_logit(posterior(s == v)) for v in (0, 1))
        return {"w": jnp.array([l1 - l0]), "b": jnp.array(l0)}
    cell = {(a, b): _logit(posterior((s == a) & (c == b))) for a in (0, 1) for b in (0, 1)}
    w = [cell[1, 0] - cell[0, 0], cell[0, 1] - cell[0, 0],
         cell[1, 1] - cell[1, 0] - cell[0, 1] + cell[0, 0]]
    return {"w": jnp.array(w, jnp.float32), "b": jnp.array(cell[0, 0], jnp.float32)}


def expected_nll(head, batch):
    """E[logistic loss] of one domain: batch = (features [8, d], labels [8], probs [8])."""
    phi, y, p = batch
    logits = phi @ head["w"] + head["b"]
    return jnp.sum(p * (jax.nn.softplus(logits) - y * logits))


def accuracy(head, phi, probs) -> float:
    pred = (phi @ np.asarray(head["w"]) + float(head["b"])) > 0
    return float(np.sum(probs * (pred == (ATOMS[:, 1] == 1))))


def evaluate(setting: str) -> list[dict]:
    low0, low1 = domain_low_fractions(setting)
    train = np.stack([atom_probs(low0, TRAIN_FLIPS[0]), atom_probs(low1, TRAIN_FLIPS[1])])
    test = atom_probs(0.5, TEST_FLIP)
    rows = []
    s = ATOMS[:, 0]
    by_shape = np.where(s == 1, train[0] if low0 >= low1 else train[1],
                        train[1] if low0 >= low1 else train[0])
    fits = {"invariant": train.mean(0), "erm": train.mean(0), "env_color": by_shape}
    for name, fit_probs in fits.items():
        phi = representation(name, ATOMS)
        head = fitted_head(name, fit_probs)
        batches = (jnp.broadcast_to(phi, (2,) + phi.shape), jnp.broadcast_to(ATOMS[:, 1], (2, 8)),
                   jnp.asarray(train))
        terms = {m: hessian_penalty_terms(expected_nll, head, batches, method=m, reduction="sum",
                                          stop_gradient_reference=False)
                 for m in ("hgp", "exact_diag")}
        nll = float(np.mean([expected_nll(head, (phi, ATOMS[:, 1], p)) for p in train]))
        rows.append(dict(
            setting=setting, classifier=name, low_fractions=(low0, low1),
            env_acc=tuple(accuracy(head, phi, p) for p in train),
            test_acc=accuracy(head, phi, test), train_nll=nll,
            gradient=float(terms["hgp"].gradient), hgp_hessian=float(terms["hgp"].hessian),
            diag_hessian=float(terms["exact_diag"].hessian)))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| setting | P(digit<5) env0 / env1 | classifier | env0 / env1 / test acc | "
             "train NLL | gradient term | HGP Hessian term | diagonal Hessian term |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = " / ".join(f"{100 * a:.1f}" for a in (*r["env_acc"], r["test_acc"]))
        lows = " / ".join(f"{f:.2f}" for f in r["low_fractions"])
        lines.append(f"| {r['setting']} | {lows} | {r['classifier']} | {acc} | "
                     f"{r['train_nll']:.3f} | {r['gradient']:.2e} | {r['hgp_hessian']:.2e} | "
                     f"{r['diag_hessian']:.2e} |")
    return "\n".join(lines)
