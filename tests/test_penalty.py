"""hessian_penalty and its linear-head fast path against dense-Hessian oracles."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import hjax
from heads import dense_curvature, domain, head_loss_fn, make_problem


def oracle_terms(loss_fn, head, batches, num_domains, method, reduction="mean"):
    """The two terms from dense per-domain Hessians, computed independently of hjax."""
    gs, hs = zip(*[dense_curvature(loss_fn, head, domain(batches, e))
                   for e in range(num_domains)])
    gbar, hbar = sum(gs) / num_domains, sum(hs) / num_domains
    if method == "hgp":
        a, abar = [h @ g for h, g in zip(hs, gs)], hbar @ gbar
    else:
        a, abar = [jnp.diag(h) for h in hs], jnp.diag(hbar)
    red = np.mean if reduction == "mean" else np.sum
    return (red([float(jnp.sum((x - abar) ** 2)) for x in a]),
            red([float(jnp.sum((g - gbar) ** 2)) for g in gs]))


CASES = [("softmax", 3), ("softmax", 5), ("logistic", 1)]


@pytest.mark.parametrize("loss,num_classes", CASES)
@pytest.mark.parametrize("num_domains", [2, 3, 5])
@pytest.mark.parametrize("method", ["hgp", "exact_diag"])
def test_penalty_equals_dense_hessian_oracle(loss, num_classes, num_domains, method):
    head, batches = make_problem(num_domains, num_domains, num_classes=num_classes, loss=loss)
    loss_fn = head_loss_fn(loss)
    hess, grad = oracle_terms(loss_fn, head, batches, num_domains, method)
    assert hess > 0 and grad > 0
    expected = 0.7 * hess + 1.3 * grad
    generic = jax.jit(functools.partial(hjax.hessian_penalty, loss_fn, method=method,
                                        alpha=0.7, beta=1.3))
    np.testing.assert_allclose(generic(head, batches), expected, rtol=2e-4)
    fast = jax.jit(functools.partial(hjax.linear_head_penalty, loss=loss, method=method,
                                     alpha=0.7, beta=1.3))
    np.testing.assert_allclose(fast(head, batches["features"], batches["labels"]), expected,
                               rtol=2e-4)


@pytest.mark.parametrize("method", ["hgp", "exact_diag"])
def test_sum_reduction_is_num_domains_times_mean(method):
    head, batches = make_problem(0, 3)
    loss_fn = head_loss_fn("softmax")
    hess, grad = oracle_terms(loss_fn, head, batches, 3, method, reduction="sum")
    terms = jax.jit(lambda h, b: hjax.hessian_penalty_terms(loss_fn, h, b, method=method,
                                                            reduction="sum"))(head, batches)
    np.testing.assert_allclose([terms.hessian, terms.gradient], [hess, grad], rtol=2e-4)


def test_hutchinson_approaches_exact_diag_with_many_probes():
    head, batches = make_problem(4, 3, n=20)
    f, y = batches["features"], batches["labels"]
    exact = hjax.linear_head_penalty_terms(head, f, y, method="exact_diag").hessian
    run = jax.jit(lambda k, num_probes: hjax.linear_head_penalty_terms(
        head, f, y, method="hutchinson", key=k, num_probes=num_probes).hessian,
        static_argnums=1)
    keys = jax.random.split(jax.random.key(0), 8)
    errors = {k: np.mean([abs(float(run(key, k)) - float(exact)) for key in keys])
              for k in (10, 4000)}
    assert errors[4000] < 0.05 * float(exact), (errors, exact)
    assert errors[4000] < errors[10] / 5, errors


def test_hutchinson_generic_and_fast_paths_draw_the_same_probes():
    head, batches = make_problem(5, 2, loss="logistic")
    key = jax.random.key(3)
    generic = jax.jit(lambda h: hjax.hessian_penalty(head_loss_fn("logistic"), h, batches,
                                                     method="hutchinson", key=key,
                                                     num_probes=17))(head)
    fast = jax.jit(lambda h: hjax.linear_head_penalty(h, batches["features"],
                                                      batches["labels"], loss="logistic",
                                                      method="hutchinson", key=key,
                                                      num_probes=17))(head)
    np.testing.assert_allclose(generic, fast, rtol=1e-4)
    other = jax.jit(lambda h: hjax.linear_head_penalty(h, batches["features"],
                                                       batches["labels"], loss="logistic",
                                                       method="hutchinson",
                                                       key=jax.random.key(4),
                                                       num_probes=17))(head)
    assert abs(float(other) - float(fast)) > 1e-7


def _shared_probe_oracle(loss, head, batches, num_domains, key, num_probes, reduction):
    """Shared probes from dense Hessians: red_e ||Hutchinson(H_e - Hbar)||^2 with the same key."""
    from jax.flatten_util import ravel_pytree
    from hjax.core.curvature import hutchinson_from_hvp
    loss_fn = head_loss_fn(loss)
    hs = [dense_curvature(loss_fn, head, domain(batches, e))[1] for e in range(num_domains)]
    hbar = sum(hs) / num_domains
    _, unravel = ravel_pytree(head)
    per_domain = []
    for h in hs:
        def hvp_fn(v, m=h - hbar):
            return unravel(m @ ravel_pytree(v)[0])
        est = hutchinson_from_hvp(hvp_fn, head, key, num_probes)
        per_domain.append(float(jnp.sum(ravel_pytree(est)[0] ** 2)))
    return (np.mean if reduction == "mean" else np.sum)(per_domain)


@pytest.mark.parametrize("loss,num_classes", [("softmax", 3), ("logistic", 1)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_shared_probes_estimate_the_diagonal_of_the_hessian_difference(loss, num_classes,
                                                                       reduction):
    # With one probe set, Dhat_e - Dhat_ref is Hutchinson's estimate of diag(H_e - Hbar): the
    # oracle applies the same probes to the dense difference from jax.hessian.
    head, batches = make_problem(6, 3, num_classes=num_classes, loss=loss)
    key = jax.random.key(11)
    expected = _shared_probe_oracle(loss, head, batches, 3, key, 13, reduction)
    kw = dict(method="hutchinson", probes="shared", key=key, num_probes=13,
              reduction=reduction)
    generic = jax.jit(lambda h: hjax.hessian_penalty_terms(head_loss_fn(loss), h, batches,
                                                           **kw).hessian)(head)
    fast = jax.jit(lambda h: hjax.linear_head_penalty_terms(
        h, batches["features"], batches["labels"], loss=loss, **kw).hessian)(head)
    np.testing.assert_allclose([generic, fast], [expected, expected], rtol=1e-4)


def test_shared_probes_have_no_variance_floor_when_hessians_align():
    # Two domains with the same data have H_0 = H_1: independent probes still give a positive
    # Hessian term (the estimator's variance), shared probes give zero.
    head, batches = make_problem(7, 1, n=16)
    same = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a]), batches)
    f, y = same["features"], same["labels"]
    terms = jax.jit(lambda key, probes: hjax.linear_head_penalty_terms(
        head, f, y, method="hutchinson", key=key, num_probes=20, probes=probes).hessian,
        static_argnums=1)
    for k in range(3):
        key = jax.random.key(k)
        indep, shared = terms(key, "independent"), terms(key, "shared")
        assert float(indep) > 1e-6
        # Zero up to rounding: under jit XLA may reassociate H_0 - Hbar.
        assert abs(float(shared)) < 1e-10 * float(indep)


def test_shared_probes_approach_exact_diag_with_many_probes():
    head, batches = make_problem(4, 3, n=20)
    f, y = batches["features"], batches["labels"]
    exact = float(hjax.linear_head_penalty_terms(head, f, y, method="exact_diag").hessian)
    shared = jax.jit(lambda key: hjax.linear_head_penalty_terms(
        head, f, y, method="hutchinson", probes="shared", key=key, num_probes=4000).hessian)
    est = np.mean([float(shared(jax.random.key(i))) for i in range(4)])
    assert abs(est - exact) < 0.05 * exact, (est, exact)


@pytest.mark.parametrize("loss,num_classes", [("softmax", 3), ("logistic", 1)])
@pytest.mark.parametrize("probes", ["independent", "shared"])
def test_dense_and_hvp_probe_products_agree_in_value_and_gradient(loss, num_classes, probes):
    # Same probes either way: the dense head Hessian times z_k equals the HVP with z_k, and
    # the gradients into the head and the features (the custom Gram backward) agree too.
    head, batches = make_problem(8, 2, n=15, num_classes=num_classes, loss=loss)
    f, y = batches["features"], batches["labels"]
    w = jnp.full(y.shape, 1.0 / y.shape[1]).at[:, -3:].set(0.0)     # padded domains
    w = w / jnp.sum(w, axis=1, keepdims=True)

    def penalty(h, f, mode):
        return hjax.linear_head_penalty(h, f, y, loss=loss, weights=w, method="hutchinson",
                                        key=jax.random.key(2), num_probes=9, probes=probes,
                                        probe_products=mode, reduction="sum",
                                        stop_gradient_reference=False)
    by_hvp = jax.jit(jax.value_and_grad(penalty, (0, 1)), static_argnums=2)(head, f, "hvp")
    dense = jax.jit(jax.value_and_grad(penalty, (0, 1)), static_argnums=2)(head, f, "dense")
    assert float(by_hvp[0]) > 0
    chex.assert_trees_all_close(dense, by_hvp, rtol=1e-4, atol=1e-6)


def test_unknown_probe_products_raises():
    head, batches = make_problem(0, 2)
    with pytest.raises(ValueError, match="unknown probe_products 'gram'"):
        hjax.linear_head_penalty(head, batches["features"], batches["labels"],
                                 key=jax.random.key(0), probe_products="gram")


def test_auto_probe_products_pick_the_cheaper_way():
    from hjax.core.penalty import _dense_is_cheaper
    assert _dense_is_cheaper(25_000, 390, 1, 150, 2)      # ColoredMNIST's head: dense
    assert not _dense_is_cheaper(64, 128, 2, 300, 2)      # DomainBed minibatch: HVPs
    assert not _dense_is_cheaper(25_000, 390, 1, 1, 2)    # one probe: HVPs
    assert not _dense_is_cheaper(10 ** 6, 2048, 7, 300, 2)  # P = 14,343: too large to form


@pytest.mark.parametrize("method", ["hgp", "hutchinson", "exact_diag"])
def test_penalty_reaches_features_and_stop_gradient_changes_only_the_gradient(method):
    head, batches = make_problem(6, 3)
    loss_fn = head_loss_fn("softmax")

    def penalty(features, sg):
        b = {"features": features, "labels": batches["labels"]}
        return hjax.hessian_penalty(loss_fn, head, b, method=method, key=jax.random.key(1),
                                    num_probes=8, stop_gradient_reference=sg)

    value_grad = jax.jit(jax.value_and_grad(penalty), static_argnums=1)
    v_sg, g_sg = value_grad(batches["features"], True)
    v_flow, g_flow = value_grad(batches["features"], False)
    np.testing.assert_allclose(v_sg, v_flow, rtol=1e-6)
    for g in (g_sg, g_flow):
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 1e-6
    diff = float(jnp.max(jnp.abs(g_sg - g_flow))) / float(jnp.max(jnp.abs(g_sg)))
    if method == "exact_diag":
        # Abar = mean_e A_e and gbar = mean_e g_e, so d/dAbar sum_e ||A_e - Abar||^2 =
        # -2 sum_e (A_e - Abar) = 0: stopping the reference cannot change the gradient.
        assert diff < 1e-5
    else:
        assert diff > 1e-4
    # Head-parameter gradients too.
    head_grad = jax.jit(jax.grad(lambda h: hjax.hessian_penalty(
        loss_fn, h, batches, method=method, key=jax.random.key(1), num_probes=8)))(head)
    assert float(jnp.max(jnp.abs(head_grad["kernel"]))) > 1e-6


@pytest.mark.parametrize("method", ["hgp", "exact_diag"])
@pytest.mark.parametrize("sg", [True, False])
def test_penalty_gradient_matches_finite_differences(method, sg):
    with jax.enable_x64(True):
        head, batches = make_problem(7, 2, n=8, d=3)
        head = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), head)
        features = batches["features"].astype(jnp.float64)
        loss_fn = head_loss_fn("softmax")

        def penalty(feats, h):
            return hjax.hessian_penalty(loss_fn, h, {"features": feats,
                                                     "labels": batches["labels"]},
                                        method=method, stop_gradient_reference=sg)

        gf, gh = jax.jit(jax.grad(penalty, argnums=(0, 1)))(features, head)
        penalty = jax.jit(penalty)
        direction = jax.random.normal(jax.random.key(2), features.shape, jnp.float64)
        eps = 1e-6
        fd = (penalty(features + eps * direction, head)
              - penalty(features - eps * direction, head)) / (2 * eps)
        if not sg or method == "exact_diag":   # exact_diag: sg is a no-op on the gradient
            np.testing.assert_allclose(jnp.vdot(gf, direction), fd, rtol=1e-5)
        else:
            # HGP's Abar = Hbar gbar is not the mean of the A_e: sg drops a real dependence.
            assert abs(float(jnp.vdot(gf, direction)) - float(fd)) > 1e-6 * abs(float(fd))
        assert bool(jnp.all(jnp.isfinite(gh["kernel"])))


class JitTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("hgp", "hutchinson", "exact_diag")
    def test_jit_and_no_jit_agree(self, method):
        head, batches = make_problem(8, 3)
        f, y = batches["features"], batches["labels"]
        key = jax.random.key(0)
        ref = hjax.linear_head_penalty(head, f, y, method=method, key=key, num_probes=5)
        fn = self.variant(functools.partial(hjax.linear_head_penalty, method=method,
                                            num_probes=5))
        chex.assert_trees_all_close(fn(head, f, y, key=key), ref, rtol=1e-5)

    def test_repeated_calls_trace_once(self):
        head, batches = make_problem(9, 2)
        loss_fn = head_loss_fn("softmax")

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(h, b, key):
            return jax.grad(lambda p: hjax.hessian_penalty(loss_fn, p, b, key=key,
                                                           num_probes=4))(h)

        for i in range(3):
            b = jax.tree_util.tree_map(lambda a: a + i if a.dtype == jnp.float32 else a,
                                       batches)
            step(head, b, jax.random.key(i))


def _bad(**kw):
    head, batches = make_problem(0, 2)
    args = dict(loss_fn=head_loss_fn("softmax"), head_params=head, domain_batches=batches)
    args.update(kw)
    fn, head_params, domain_batches = args.pop("loss_fn"), args.pop("head_params"), \
        args.pop("domain_batches")
    return hjax.hessian_penalty(fn, head_params, domain_batches, **args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(domain_batches={"features": jnp.ones((1, 4, 4)), "labels": jnp.ones((1, 4), int)}),
     "at least 2 domains"),
    (dict(domain_batches={"features": jnp.ones((3, 4, 4)), "labels": jnp.ones((2, 4), int)}),
     "different leading"),
    (dict(method="fisher"), "unknown method 'fisher'"),
    (dict(method="hutchinson", key=None), "needs a PRNG key"),
    (dict(method="hutchinson", key=jax.random.key(0), num_probes=0), "num_probes"),
    (dict(reduction="max", method="hgp"), "unknown reduction 'max'"),
    (dict(method="hutchinson", key=jax.random.key(0), probes="paired"),
     "unknown probes 'paired'"),
])
def test_bad_input_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _bad(**kwargs)


# --- The forms a batch may take, and the ones that are refused ---------------------------

@pytest.mark.parametrize("method", ["hgp", "exact_diag", "hutchinson"])
def test_list_of_per_domain_batches_equals_stacked_batch_exactly(method):
    head, batches = make_problem(3, 3)
    loss_fn = head_loss_fn("softmax")
    as_list = [domain(batches, e) for e in range(3)]
    kw = dict(method=method, key=jax.random.key(1), num_probes=4, alpha=0.7, beta=1.3)
    stacked = hjax.hessian_penalty(loss_fn, head, batches, **kw)
    listed = hjax.hessian_penalty(loss_fn, head, as_list, **kw)
    assert float(stacked) > 0
    np.testing.assert_array_equal(listed, stacked)


def test_list_of_tuple_batches_is_the_domainbed_minibatches_form():
    head, batches = make_problem(4, 2)

    def loss_fn(h, batch):
        x, y = batch
        return hjax.linear_head.loss_value(h, x, y)

    minibatches = [(batches["features"][e], batches["labels"][e]) for e in range(2)]
    got = hjax.hessian_penalty(loss_fn, head, minibatches, method="hgp")
    want = hjax.hessian_penalty(head_loss_fn("softmax"), head, batches, method="hgp")
    np.testing.assert_array_equal(got, want)


def test_list_with_unequal_domain_sizes_names_the_domain_and_shapes():
    head, batches = make_problem(5, 2)
    as_list = [domain(batches, 0), jax.tree_util.tree_map(lambda a: a[1, :7], batches)]
    with pytest.raises(ValueError, match=r"domain_batches\[1\]\['features'\] has shape "
                                         r"\(7, 4\) but domain_batches\[0\]\['features'\] "
                                         r"has \(12, 4\)"):
        hjax.hessian_penalty(head_loss_fn("softmax"), head, as_list, method="hgp")


def test_list_with_different_structures_is_refused():
    head, batches = make_problem(5, 2)
    other = dict(domain(batches, 1), weights=jnp.full((12,), 1 / 12))
    with pytest.raises(ValueError, match=r"domain_batches\[1\] has structure"):
        hjax.hessian_penalty(head_loss_fn("softmax"), head, [domain(batches, 0), other],
                             method="hgp")


def test_list_of_one_domain_is_refused():
    head, batches = make_problem(5, 2)
    with pytest.raises(ValueError, match="at least 2 domains.*list of 1"):
        hjax.hessian_penalty(head_loss_fn("softmax"), head, [domain(batches, 0)],
                             method="hgp")


def test_batch_without_domain_axis_is_refused_with_expected_shape():
    # {"x": [n, d], "y": [n]} has consistent leading axes (n); read as n domains it would give
    # a number, so the rank check has to catch it.
    head, batches = make_problem(6, 2)
    one = domain(batches, 0)
    with pytest.raises(ValueError, match=r"domain_batches\['labels'\] has shape \(12,\).*"
                                         r"expected leaves \[E, n, \.\.\.\]"):
        hjax.hessian_penalty(head_loss_fn("softmax"), head, one, method="hgp")


def test_num_domains_admits_per_domain_scalars_and_checks_e():
    head, batches = make_problem(7, 3)
    scale = jnp.array([1.0, 2.0, 0.5])

    def scaled_loss(h, batch):
        return batch["scale"] * head_loss_fn("softmax")(h, batch)

    with_scale = dict(batches, scale=scale)
    got = hjax.hessian_penalty_terms(scaled_loss, head, with_scale, method="hgp",
                                     num_domains=3)
    # Oracle: the same penalty with the scale folded into per-example weights.
    weighted = dict(batches, weights=jnp.broadcast_to(scale[:, None] / 12, (3, 12)))
    want = hjax.hessian_penalty_terms(head_loss_fn("softmax"), head, weighted, method="hgp")
    np.testing.assert_allclose([got.hessian, got.gradient], [want.hessian, want.gradient],
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"leading \(domain\) axis of 3, but num_domains=2"):
        hjax.hessian_penalty(scaled_loss, head, with_scale, method="hgp", num_domains=2)
    with pytest.raises(ValueError, match="num_domains must be an integer >= 2"):
        hjax.hessian_penalty(scaled_loss, head, with_scale, method="hgp", num_domains=1)


def test_different_leading_axes_name_the_leaves():
    head, batches = make_problem(8, 3)
    bad = dict(batches, labels=batches["labels"][:2])
    with pytest.raises(ValueError, match=r"2 \(\['labels'\]\), 3 \(\['features'\]\)"):
        hjax.hessian_penalty(head_loss_fn("softmax"), head, bad, method="hgp")


def test_hessian_penalty_takes_chunk_size_and_keeps_its_value():
    head, batches = make_problem(9, 2)
    loss_fn = head_loss_fn("softmax")
    # Jitted: one compile each is cheaper than running the probe loops op by op.
    def penalty(**kw):
        return jax.jit(lambda h, b: hjax.hessian_penalty(loss_fn, h, b, **kw))(head, batches)

    kw = dict(method="hutchinson", key=jax.random.key(2), num_probes=6)
    np.testing.assert_allclose(penalty(chunk_size=4, **kw), penalty(**kw), rtol=1e-5)
    np.testing.assert_allclose(penalty(method="exact_diag", chunk_size=5),
                               penalty(method="exact_diag"), rtol=1e-5)


@pytest.mark.parametrize("head_params,match", [
    ({"w": jnp.ones((4, 3)), "b": jnp.ones(3)},
     r"keys \['bias', 'kernel'\].*got keys \['b', 'w'\]"),
    ({"kernel": jnp.ones((4, 3))}, r"got keys \['kernel'\]"),
    ((jnp.ones((4, 3)), jnp.ones(3)), "got a tuple"),
    ({"kernel": jnp.ones((4, 3)), "bias": jnp.ones(2)}, r"kernel \(4, 3\) and bias \(2,\)"),
])
def test_linear_head_penalty_names_found_and_expected_head_keys(head_params, match):
    _, batches = make_problem(10, 2)
    with pytest.raises(ValueError, match=match):
        hjax.linear_head_penalty(head_params, batches["features"], batches["labels"],
                                 method="hgp")


def test_linear_head_penalty_refuses_features_without_domain_axis():
    head, batches = make_problem(11, 2)
    with pytest.raises(ValueError, match=r"features has shape \(12, 4\); expected \[E, n, d\]"):
        hjax.linear_head_penalty(head, batches["features"][0], batches["labels"][0],
                                 method="hgp")
    with pytest.raises(ValueError, match=r"labels has shape \(2, 5\); expected \[E, n\]"):
        hjax.linear_head_penalty(head, batches["features"], batches["labels"][:, :5],
                                 method="hgp")


def test_linear_head_penalty_needs_a_one_output_head_for_logistic_and_labels_in_range():
    head, batches = make_problem(12, 2)               # a 3-class softmax head
    features, labels = batches["features"], batches["labels"]
    c = head["kernel"].shape[1]
    with pytest.raises(ValueError, match=rf"loss='logistic' needs a head with one output "
                                         rf".*this head has {c}"):
        hjax.linear_head_penalty(head, features, labels, loss="logistic", method="hgp")
    with pytest.raises(ValueError, match=rf"labels range over \[\d+, \d+\]; loss='softmax' "
                                         rf"with this head needs labels in \[0, {c - 1}\]"):
        hjax.linear_head_penalty(head, features, labels + 5, method="hgp")
    with pytest.raises(ValueError, match=r"needs labels in \[0, \d+\]"):
        hjax.linear_head_penalty(head, features, labels - 1, method="hutchinson",
                                 key=jax.random.key(0), num_probes=2)
    # Under jit the labels are traced: nothing to check, the penalty is computed.
    jitted = jax.jit(lambda y: hjax.linear_head_penalty(head, features, y, method="hgp"))
    np.testing.assert_allclose(jitted(labels), hjax.linear_head_penalty(
        head, features, labels, method="hgp"), rtol=1e-5)
