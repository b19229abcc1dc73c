"""hjax.analysis.label_shift_population against closed forms: the exact population penalties
that the README's label-shift explanation rests on."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hjax.analysis import label_shift_population as pop

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "label_shift_population.py"


@pytest.fixture(scope="module")
def rows():
    return {(r["setting"], r["classifier"]): r for s in pop.SETTINGS for r in pop.evaluate(s)}


def test_atom_probabilities_are_distributions_with_the_spec_noise_and_flip():
    p = pop.atom_probs(0.3, 0.2)
    s, y, c = pop.ATOMS.T
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[s == 1].sum(), 0.3, rtol=1e-6)
    np.testing.assert_allclose(p[y != s].sum(), 0.25, rtol=1e-6)
    np.testing.assert_allclose(p[c != y].sum(), 0.2, rtol=1e-6)


def test_digit_mix_of_each_setting_follows_the_split():
    low0, low1 = pop.domain_low_fractions("correlation")
    assert abs(low0 - low1) < 0.01
    low0, low1 = pop.domain_low_fractions("label_shift_intended")
    # 97% of the digits < 5 in env0 and 3% of the digits >= 5.
    n_low = round(pop.LOW_FRACTION * 50000)
    np.testing.assert_allclose(low0, int(0.97 * n_low) / (int(0.97 * n_low)
                                                         + int(0.03 * (50000 - n_low))))
    low0, low1 = pop.domain_low_fractions("label_shift_reference")
    assert low1 == 0.0 and low0 == pytest.approx(n_low / (n_low + 1500))


@pytest.mark.parametrize("setting", pop.SETTINGS)
def test_accuracies_match_the_closed_forms(rows, setting):
    inv, erm = rows[setting, "invariant"], rows[setting, "erm"]
    # The shape classifier is right exactly when the label was not flipped; the color
    # classifier exactly when the color was not flipped.
    np.testing.assert_allclose([*inv["env_acc"], inv["test_acc"]], [0.75] * 3, atol=1e-6)
    np.testing.assert_allclose([*erm["env_acc"], erm["test_acc"]], [0.8, 0.9, 0.1], atol=1e-6)


@pytest.mark.parametrize("setting", pop.SETTINGS)
def test_invariant_classifier_has_no_gradient_or_hgp_term(rows, setting):
    # p = P(y | s) in every domain, so every domain's head gradient E[(p - y) phi] is zero.
    r = rows[setting, "invariant"]
    assert r["gradient"] < 1e-10 and r["hgp_hessian"] < 1e-10


@pytest.mark.parametrize("setting", pop.SETTINGS)
def test_invariant_diagonal_term_matches_closed_form(rows, setting):
    # diag H_e = p(1 - p) E_e[(s, 1)^2] = (3/16) (P_e(s = 1), 1); summed over the two domains,
    # sum_e ||A_e - Abar||^2 = (3/16)^2 (P_0 - P_1)^2 / 2.
    r = rows[setting, "invariant"]
    low0, low1 = r["low_fractions"]
    np.testing.assert_allclose(r["diag_hessian"], (3 / 16) ** 2 * (low0 - low1) ** 2 / 2,
                               rtol=1e-4, atol=1e-9)


def test_label_shift_weakens_the_gradient_term_and_reverses_the_diagonal_term(rows):
    corr = rows["correlation", "erm"]
    for split in ("intended", "reference"):
        ls = rows[f"label_shift_{split}", "erm"]
        assert ls["gradient"] < corr["gradient"] / 30
        assert rows[f"label_shift_{split}", "env_color"]["gradient"] < ls["gradient"]
        assert rows[f"label_shift_{split}", "invariant"]["diag_hessian"] > ls["diag_hessian"]
    assert rows["correlation", "invariant"]["diag_hessian"] < corr["diag_hessian"] / 100


def test_unknown_setting_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--settings=correlation,bogus"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "bogus" in proc.stderr
    assert "label_shift_intended" in proc.stderr
