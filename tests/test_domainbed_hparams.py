"""The DomainBed hparam registry: defaults, deterministic draws, independent per name."""

import numpy as np
import pytest

from hjax.protocols.domainbed import algorithms, hparams

DATASET = "rotated_mnist"


def test_every_registered_algorithm_has_hparams_and_vice_versa():
    assert set(hparams.ALGORITHMS) == set(algorithms.ALGORITHMS)


def test_seed_zero_gives_the_documented_defaults():
    hp = hparams.make_hparams("hutchinson", DATASET, 0)
    assert hp == {"lr": 1e-3, "batch_size": 64, "weight_decay": 0.0,
                  "hutchinson_alpha": 1e-3, "hutchinson_beta": 5e-3,
                  "hutchinson_num_probes": 300}
    assert hparams.make_hparams("hgp", DATASET, 0)["hgp_alpha"] == 1e-4


@pytest.mark.parametrize("name", hparams.ALGORITHMS)
def test_random_draws_are_deterministic_and_in_range(name):
    a = hparams.random_hparams(name, DATASET, hparams_seed=3, trial_seed=1)
    assert a == hparams.random_hparams(name, DATASET, hparams_seed=3, trial_seed=1)
    assert a != hparams.random_hparams(name, DATASET, hparams_seed=4, trial_seed=1)
    assert 10 ** -4.5 <= a["lr"] <= 10 ** -2.5
    assert 8 <= a["batch_size"] <= 512 and isinstance(a["batch_size"], int)


def test_search_ranges_are_the_registered_ones():
    draws = [hparams.random_hparams("hutchinson", DATASET, s) for s in range(1, 30)]
    assert all(10 ** 1 <= d["hutchinson_alpha"] <= 10 ** 4 for d in draws)
    assert all(10 ** 2 <= d["hutchinson_beta"] <= 10 ** 6 for d in draws)
    draws = [hparams.random_hparams("irm", DATASET, s) for s in range(1, 30)]
    assert all(1 <= d["irm_penalty_anneal_iters"] < 10 ** 4 for d in draws)
    assert len({d["irm_lambda"] for d in draws}) == len(draws)


def test_adding_an_algorithm_or_hparam_does_not_change_other_draws(monkeypatch):
    before = {name: hparams.random_hparams(name, DATASET, 7, 2) for name in hparams.ALGORITHMS}
    extended = dict(hparams.ALGORITHM_HPARAMS)
    extended["aaa_new"] = {"new_weight": hparams.log_uniform(1.0, -2, 2)}
    extended["irm"] = {"a_new_irm_hparam": hparams.uniform(0.5, 0, 1), **extended["irm"]}
    monkeypatch.setattr(hparams, "ALGORITHM_HPARAMS", extended)
    for name, hp in before.items():
        after = hparams.random_hparams(name, DATASET, 7, 2)
        assert {k: after[k] for k in hp} == hp
    assert "a_new_irm_hparam" in hparams.random_hparams("irm", DATASET, 7, 2)


def test_shared_names_draw_the_same_value_across_algorithms():
    a = hparams.random_hparams("erm", DATASET, 5)
    b = hparams.random_hparams("fishr", DATASET, 5)
    assert a["lr"] == b["lr"] and a["batch_size"] == b["batch_size"]


def test_overrides_and_unknown_names():
    assert hparams.make_hparams("erm", DATASET, 0, overrides={"lr": 0.5})["lr"] == 0.5
    with pytest.raises(ValueError, match="unknown hparams"):
        hparams.make_hparams("erm", DATASET, 0, overrides={"irm_lambda": 1.0})
    with pytest.raises(ValueError, match="unknown algorithm"):
        hparams.make_hparams("nope", DATASET, 0)


@pytest.mark.parametrize("name,value,expected", [
    ("lr", "x", "hparam lr='x' must be a number (got str)"),
    ("lr", True, "hparam lr=True must be a number (got bool)"),
    ("batch_size", 12.5, "hparam batch_size=12.5 must be an integer (got float)"),
    ("batch_size", [8], "hparam batch_size=[8] must be an integer (got list)"),
])
def test_overrides_of_the_wrong_type_name_the_value_and_the_type(name, value, expected):
    with pytest.raises(ValueError) as e:
        hparams.make_hparams("erm", DATASET, 0, overrides={name: value})
    assert str(e.value) == expected
    # What JSON gives for such values is kept: an integral float for an integer, an int lr.
    hp = hparams.make_hparams("erm", DATASET, 0, overrides={"batch_size": 16.0, "lr": 1})
    assert hp["batch_size"] == 16 and hp["lr"] == 1


def test_seed_hash_is_stable():
    # A fixed value: draws must not change between Python processes or versions.
    assert hparams.seed_hash(1, 2, "lr") == 621822151
    assert isinstance(hparams.seed_hash(0), int) and 0 <= hparams.seed_hash(0) < 2 ** 31
    assert np.random.default_rng(hparams.seed_hash(0, 0, "lr")).uniform() == \
        np.random.default_rng(hparams.seed_hash(0, 0, "lr")).uniform()


def test_a_wrong_type_in_hparams_on_the_command_line_is_one_line(tmp_path, cli):
    proc = cli("domainbed_train", "--dataset=rotated_mnist", "--fake_data",
               f"--output_dir={tmp_path / 'job'}", '--hparams={"lr": "x"}')
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: hparam lr='x' must be a number (got str)"
