"""Couplings: exact OT equals SciPy, Sinkhorn tends to exact, shared signature, jittable."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from flowjax import couplings
from flowjax.couplings._sinkhorn import draw_partners


def _clouds(n=64, d=2, seed=0):
    k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
    x0 = jax.random.normal(k0, (n, d))
    x1 = jax.random.normal(k1, (n, d)) * 0.5 + jnp.array([3.0] + [0.0] * (d - 1))
    return x0, x1


def _scipy_cost(x0, x1):
    a, b = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
    c = ((a[:, None] - b[None]) ** 2).sum(-1)
    r, k = linear_sum_assignment(c)
    return c[r, k].mean()


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("n, d", [(8, 2), (64, 2), (128, 5)])
def test_exact_ot_equals_scipy(n, d):
    x0, x1 = _clouds(n, d)
    res = jax.jit(couplings.ExactOT())(jax.random.PRNGKey(0), x0, x1)
    y0, y1 = res.x0, res.x1
    np.testing.assert_array_equal(y1, x1)
    assert not bool(res.fallback) and res.state is None and res.stats == {}  # x1 stays in place
    # y0 is a permutation of x0.
    np.testing.assert_allclose(np.sort(np.asarray(y0), 0), np.sort(np.asarray(x0), 0))
    cost = float(np.mean(np.sum((np.asarray(y0) - np.asarray(y1)) ** 2, -1)))
    assert cost == pytest.approx(_scipy_cost(x0, x1), rel=1e-5)
    assert float(res.cost) == pytest.approx(cost, rel=1e-5)


@pytest.mark.slow
def test_exact_ot_beats_every_permutation_small():
    x0, x1 = _clouds(6, 2, seed=3)
    res = couplings.ExactOT()(None, x0, x1)
    a, b = np.asarray(x0), np.asarray(x1)
    best = min(((a[list(p)] - b) ** 2).sum(-1).mean() for p in itertools.permutations(range(6)))
    assert float(res.cost) == pytest.approx(best, rel=1e-5)


@pytest.mark.slow
def test_exact_ot_works_on_images_and_under_vmap():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x0 = jax.random.normal(k[0], (3, 16, 4, 4, 1))
    x1 = jax.random.normal(k[1], (3, 16, 4, 4, 1))
    res = jax.vmap(couplings.ExactOT())(k, x0, x1)
    for i in range(3):
        assert float(res.cost[i]) == pytest.approx(
            _scipy_cost(x0[i].reshape(16, -1), x1[i].reshape(16, -1)), rel=1e-5)


@pytest.mark.slow
def test_sinkhorn_cost_tends_to_exact():
    x0, x1 = _clouds(128, 2)
    exact = _scipy_cost(x0, x1)
    gaps = []
    for eps in (1.0, 0.1, 0.01):
        c = couplings.Sinkhorn(eps, threshold=1e-4, max_iterations=20_000)
        aux = jax.jit(c)(jax.random.PRNGKey(0), x0, x1).stats
        assert bool(aux["converged"])
        gaps.append(float(aux["plan_cost"]) - exact)
    assert gaps[0] > gaps[1] > gaps[2] >= -1e-3 * exact
    assert gaps[2] < 2e-3 * exact


@pytest.mark.slow
def test_sinkhorn_sampled_pairs_follow_the_plan():
    x0, x1 = _clouds(64, 2)
    c = couplings.Sinkhorn(0.05, threshold=1e-4)
    plan, _ = couplings.sinkhorn_plan(x0, x1, epsilon=0.05, threshold=1e-4)
    keys = jax.random.split(jax.random.PRNGKey(1), 200)
    costs = jax.vmap(lambda k: jax.jit(c)(k, x0, x1).cost)(keys)
    # E[cost of the sampled pairs] = <P, C> * n (each column j is drawn from P[:, j] / b_j).
    expected = float(jnp.sum(plan * couplings.sq_distances(x0, x1)))
    assert float(costs.mean()) == pytest.approx(expected, rel=0.02)
    np.testing.assert_array_equal(c(jax.random.PRNGKey(0), x0, x1).x1, x1)


@pytest.mark.slow
def test_sinkhorn_argmax_is_deterministic():
    x0, x1 = _clouds(32, 2)
    c = couplings.Sinkhorn(0.01, sample=False, threshold=1e-5, max_iterations=10_000)
    a = c(None, x0, x1).x0
    res = c(jax.random.PRNGKey(1), x0, x1)
    np.testing.assert_array_equal(a, res.x0)
    assert float(res.cost) < 1.05 * _scipy_cost(x0, x1)


@pytest.mark.slow
def test_schrodinger_bridge_uses_eps_two_sigma_squared():
    x0, x1 = _clouds(32, 2)
    sb = couplings.SchrodingerBridge(0.5, threshold=1e-5)
    sk = couplings.Sinkhorn(0.5, threshold=1e-5)
    key = jax.random.PRNGKey(2)
    np.testing.assert_allclose(sb(key, x0, x1).stats["plan_cost"],
                               sk(key, x0, x1).stats["plan_cost"], rtol=1e-6)
    assert float(sb(key, x0, x1).stats["epsilon"]) == pytest.approx(0.5)


def test_independent_is_identity():
    x0, x1 = _clouds(16, 2)
    res = couplings.Independent()(None, x0, x1)
    np.testing.assert_array_equal(res.x0, x0)
    assert not couplings.Independent.reorders and couplings.ExactOT.reorders
    assert float(res.cost) == pytest.approx(float(jnp.mean(jnp.sum((x0 - x1) ** 2, -1))))


@pytest.mark.parametrize("make", [couplings.Independent, couplings.ExactOT,
                                  lambda: couplings.Sinkhorn(0.1)])
def test_bad_inputs(make):
    c = make()
    with pytest.raises(ValueError, match="`x0` and `x1`"):
        c(jax.random.PRNGKey(0), jnp.ones((4, 2)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="`x0` must have rank"):
        c(jax.random.PRNGKey(0), jnp.ones(()), jnp.ones(()))


def test_bad_parameters():
    with pytest.raises(ValueError, match="`epsilon`"):
        couplings.Sinkhorn(0.0)
    with pytest.raises(ValueError, match="`epsilon` must be > 0"):
        couplings.Sinkhorn(-0.1)
    with pytest.raises(ValueError, match="`sigma`"):
        couplings.SchrodingerBridge(-1.0)


@pytest.mark.slow
def test_scale_free_epsilon_is_invariant_to_scaling():
    """With scale_free=True, scaling the data by c leaves the plan unchanged."""
    x0, x1 = _clouds(64, 2)
    c = couplings.Sinkhorn(0.05, scale_free=True, sample=False, threshold=1e-4)
    res, res10 = c(None, x0, x1), c(None, 10.0 * x0, 10.0 * x1)
    (a, aux), (b, aux10) = (res.x0, res.stats), (res10.x0, res10.stats)
    np.testing.assert_allclose(10.0 * a, b, rtol=1e-5, atol=1e-5)
    assert float(aux10["plan_cost"]) == pytest.approx(100.0 * float(aux["plan_cost"]), rel=1e-3)
    assert float(aux["plan_cost"]) < 1.05 * _scipy_cost(x0, x1)


def _labelled(n=96, d=3, classes=4, seed=1):
    x0, x1 = _clouds(n, d, seed)
    cond = jax.random.randint(jax.random.PRNGKey(seed + 7), (n,), 0, classes)
    return x0, x1, cond


@pytest.mark.slow
def test_condition_aware_ot_is_exact_ot_within_each_class():
    x0, x1, cond = _labelled()
    res = couplings.ConditionAwareOT()(jax.random.PRNGKey(0), x0, x1, cond=cond)
    p0, p1 = res.x0, res.x1
    np.testing.assert_array_equal(p1, x1)
    rows = np.array([int(np.flatnonzero((np.asarray(x0) == np.asarray(r)).all(1))[0])
                     for r in p0])
    assert sorted(rows) == list(range(len(rows)))  # a permutation
    c = np.asarray(cond)
    # Each source row keeps the class it came with: the source seen with every
    # class is the unskewed one (Cheng and Schwing 2025).
    np.testing.assert_array_equal(c[rows], c)
    total = sum(_scipy_cost(x0[c == k], x1[c == k]) * np.sum(c == k) for k in np.unique(c))
    np.testing.assert_allclose(float(res.cost), total / len(c), rtol=1e-5)
    # Plain OT is cheaper, because it crosses classes.
    assert float(couplings.ExactOT()(None, x0, x1).cost) < float(res.cost) - 0.1


def test_condition_weight_interpolates_between_ot_and_per_class_ot():
    x0, x1, cond = _labelled()
    key = jax.random.PRNGKey(0)

    def cost(c, labels=cond):
        return float(c(key, x0, x1, cond=labels).cost)

    exact = float(couplings.ExactOT()(key, x0, x1).cost)
    per_class = cost(couplings.ConditionAwareOT())
    np.testing.assert_allclose(cost(couplings.ConditionAwareOT(1e-9)), exact, rtol=1e-6)
    np.testing.assert_allclose(cost(couplings.ConditionAwareOT(1e6)), per_class, rtol=1e-6)
    mid = cost(couplings.ConditionAwareOT(2.0))
    assert exact <= mid <= per_class
    # Real-valued conditions use the squared distance.
    real = jnp.asarray(cond, jnp.float32)[:, None]
    np.testing.assert_allclose(cost(couplings.ConditionAwareOT(1e6), real), per_class, rtol=1e-6)
    # The weight is a leaf: a jitted call taking the coupling traces once for new weights.
    traces = []

    @jax.jit
    def pair(coupling, a, b, c):
        traces.append(1)
        return coupling(None, a, b, cond=c).cost

    for w in (1e-9, 2.0, 1e6):
        np.testing.assert_allclose(pair(couplings.ConditionAwareOT(w), x0, x1, cond),
                                   cost(couplings.ConditionAwareOT(w)), rtol=1e-6)
    assert len(traces) == 1


@pytest.mark.slow
def test_condition_aware_ot_jits_and_vmaps():
    x0, x1, cond = _labelled(n=32)
    coupling = couplings.ConditionAwareOT()
    assert coupling.uses_cond and coupling.needs_cond and coupling.reorders
    assert not couplings.ExactOT().uses_cond
    eager = coupling(None, x0, x1, cond=cond).x0
    jitted = jax.jit(lambda a, b, c: coupling(None, a, b, cond=c).x0)(x0, x1, cond)
    np.testing.assert_array_equal(eager, jitted)
    stack = lambda a: jnp.stack([a, a[::-1]])  # noqa: E731
    batched = jax.vmap(lambda a, b, c: coupling(None, a, b, cond=c).x0)(
        stack(x0), stack(x1), stack(cond))
    np.testing.assert_array_equal(batched[0], eager)
    np.testing.assert_array_equal(
        batched[1], coupling(None, x0[::-1], x1[::-1], cond=cond[::-1]).x0)
    # What a coupling declares is its type's: it survives partial and jit.
    wrapped = functools.partial(coupling.__call__)
    assert type(wrapped.func.__self__).uses_cond


def test_condition_aware_ot_bad_inputs():
    x0, x1, cond = _labelled(n=16)
    with pytest.raises(ValueError, match="weight"):
        couplings.ConditionAwareOT(0.0)
    with pytest.raises(ValueError, match="cond"):
        couplings.ConditionAwareOT()(None, x0, x1, cond=cond[:8])
    with pytest.raises(TypeError, match="integer labels"):
        couplings.ConditionAwareOT()(None, x0, x1, cond=cond.astype(jnp.float32))
    with pytest.raises(ValueError, match="`cond` is required: ConditionAwareOT"):
        couplings.ConditionAwareOT()(None, x0, x1)


def test_renormalized_entropy_is_zero_for_a_permutation_and_one_for_independence():
    rng = np.random.default_rng(0)
    for n in (3, 64):
        perm = np.eye(n, dtype=np.float32)[rng.permutation(n)]
        assert float(couplings.renormalized_entropy(perm)) == pytest.approx(0.0, abs=1e-6)
        assert float(couplings.renormalized_entropy(perm / n)) == pytest.approx(0.0, abs=1e-6)
        indep = np.full((n, n), 1.0 / n ** 2, np.float32)
        assert float(couplings.renormalized_entropy(indep)) == pytest.approx(1.0, abs=1e-5)
        mix = 0.5 * perm / n + 0.5 * indep
        assert 0.0 < float(couplings.renormalized_entropy(mix)) < 1.0
    # Any marginals: a deterministic coupling diag(a) is 0, the product a b^T is 1.
    a, b = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(7))
    assert float(couplings.renormalized_entropy(np.diag(a))) == pytest.approx(0.0, abs=1e-6)
    assert float(couplings.renormalized_entropy(np.outer(a, b))) == pytest.approx(1.0, abs=1e-5)


def test_renormalized_entropy_of_sinkhorn_plans_falls_with_epsilon():
    x0, x1 = _clouds(64, 2)
    plan_at = jax.jit(lambda eps: couplings.sinkhorn_plan(
        x0, x1, epsilon=eps, scale_free=True, threshold=1e-4, max_iterations=20_000)[0])
    ents = []
    for eps in (10.0, 1.0, 0.1, 0.01, 0.001):
        plan = plan_at(eps)
        ents.append(float(couplings.renormalized_entropy(plan)))
        # Uniform marginals: H(P) / log n - 1.
        h = -float(jnp.sum(jax.scipy.special.xlogy(plan, plan)))
        assert ents[-1] == pytest.approx(h / np.log(64) - 1.0, abs=1e-4)
    assert all(a > b for a, b in zip(ents, ents[1:])), ents
    assert ents[0] > 0.99 and ents[-1] < 0.2, ents


@pytest.mark.slow
def test_warm_start_reaches_the_same_plan_in_fewer_iterations():
    """Potentials of one batch extrapolated to the next batch of the same distributions
    (Klein et al. 2025): the same plan, fewer iterations; from a batch's own potentials the
    solve stops at the first check. The state is an argument and a result of the same call."""
    sk = couplings.Sinkhorn(0.01, scale_free=True, threshold=1e-4, sample=False,
                            max_iterations=20_000, warm_start=True)
    traces = []

    @jax.jit
    def coupling(x0, x1, state):
        traces.append(1)
        return sk(None, x0, x1, state=state)

    first, second = _clouds(256, 2, seed=1), _clouds(256, 2, seed=2)
    prev = coupling(*first, sk.init_state(*first))
    cold = coupling(*second, sk.init_state(*second))
    warm = coupling(*second, prev.state)
    assert len(traces) == 1  # init_state has the structure of every later state
    assert bool(warm.stats["converged"])
    assert int(warm.stats["n_iters"]) < 0.8 * int(cold.stats["n_iters"])
    for name in ("plan_cost", "renormalized_entropy"):
        assert float(warm.stats[name]) == pytest.approx(float(cold.stats[name]), rel=1e-3)
    again = coupling(*second, cold.state)
    assert int(again.stats["n_iters"]) == 10
    np.testing.assert_allclose(again.state.g, cold.state.g, atol=1e-3)
    # state=None is a cold start too (a separate trace), to the same plan.
    none = sk(None, *second)
    assert float(none.stats["plan_cost"]) == pytest.approx(float(cold.stats["plan_cost"]),
                                                           rel=1e-3)
    assert couplings.Sinkhorn(0.1).init_state(*first) is None


def test_renormalized_entropy_and_warm_start_bad_inputs():
    with pytest.raises(ValueError, match="`plan` must have rank 2"):
        couplings.renormalized_entropy(jnp.ones(4))
    with pytest.raises(ValueError, match="`plan` must have more than one entry"):
        couplings.renormalized_entropy(jnp.ones((1, 1)))
    with pytest.raises((ValueError, RuntimeError), match="`plan` must be nonnegative"):
        couplings.renormalized_entropy(jnp.array([[1.0, -0.5], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="`plan` must have a floating dtype"):
        couplings.renormalized_entropy(jnp.eye(3, dtype=jnp.int32))
    with pytest.raises(ValueError, match="`threshold`"):
        couplings.Sinkhorn(0.1, threshold=0.0)
    with pytest.raises(ValueError, match="`max_iterations`"):
        couplings.Sinkhorn(0.1, max_iterations=0)
    x0, x1 = _clouds(8, 2)
    c = couplings.Sinkhorn(0.1, warm_start=True)
    key = jax.random.PRNGKey(0)
    with pytest.raises(TypeError, match="`state` must be a couplings.SinkhornPotentials"):
        c(key, x0, x1, state=(x1, jnp.zeros(8)))
    with pytest.raises(ValueError, match="`state` does not fit"):
        c(key, x0, x1, state=couplings.SinkhornPotentials(x1[:, :1], jnp.zeros(8)))
    with pytest.raises(ValueError, match="`state` is used only with warm_start=True"):
        couplings.Sinkhorn(0.1)(key, x0, x1, state=c.init_state(x0, x1))


def _schedule(init, decay):
    from ott.geometry.epsilon_scheduler import Epsilon

    return Epsilon(None, init=init, decay=decay)


def _momentum(**kw):
    from ott.solvers.linear.acceleration import Momentum

    return Momentum(**kw)


@pytest.mark.slow
def test_annealing_and_momentum_reach_the_plain_plan_in_fewer_iterations():
    """Epsilon annealing and over-relaxation change the path, not the fixed point: the plan
    at the target epsilon (its cost), its marginals to the threshold, fewer iterations."""
    x0, x1 = _clouds(96, 2)
    cost = couplings.sq_distances(x0, x1)
    sk = dict(epsilon=0.01, scale_free=True, threshold=1e-4, max_iterations=20_000)
    # Adaptive momentum two error checks after the annealing's 18 iterations (and, without
    # annealing, at the earliest: iteration 20).
    anneal = dict(epsilon_schedule=_schedule(50.0, 0.8))
    both = dict(anneal, momentum=_momentum(start=40), precompute_cost=True)
    plan, ok = jax.jit(functools.partial(couplings.sinkhorn_plan, **sk, **both))(x0, x1)
    assert bool(ok)
    rows, cols = np.abs(plan.sum(1) - 1 / 96).sum(), np.abs(plan.sum(0) - 1 / 96).sum()
    assert cols < 1e-4 and rows < 3e-4, (rows, cols)  # ott's stopping test is on the columns
    aux = {name: jax.jit(couplings.Sinkhorn(**sk, sample=False, **opts))(None, x0, x1).stats
           for name, opts in {"plain": {}, "anneal": anneal,
                              "momentum": dict(momentum=_momentum(start=20)),
                              "both": both}.items()}
    ref = aux["plain"]
    assert float(jnp.sum(plan * cost)) == pytest.approx(float(ref["plan_cost"]), rel=1e-4)
    for name, a in aux.items():
        assert bool(a["converged"]), name
        assert float(a["plan_cost"]) == pytest.approx(float(ref["plan_cost"]), rel=1e-4), name
        assert float(a["epsilon"]) == pytest.approx(0.01 * float(jnp.std(cost)), rel=1e-3)
    iters = {name: int(a["n_iters"]) for name, a in aux.items()}  # measured: 140, 90, 50, 60
    assert max(iters["both"], iters["momentum"]) < iters["anneal"] < iters["plain"], iters
    fixed = couplings.Sinkhorn(**sk, sample=False, momentum=_momentum(value=1.3))
    assert fixed.momentum.value == 1.3 and fixed.epsilon_schedule is None
    assert couplings.Sinkhorn(**sk, **anneal).epsilon_schedule.init == 50.0
    from ott.geometry.epsilon_scheduler import Epsilon  # the target may repeat epsilon

    assert couplings.Sinkhorn(**sk, epsilon_schedule=Epsilon(0.01, init=50.0, decay=0.8)) \
        == couplings.Sinkhorn(**sk, **anneal)
    assert float(fixed(None, x0, x1).stats["plan_cost"]) == pytest.approx(
        float(ref["plan_cost"]), rel=1e-3)


@pytest.mark.slow
def test_precomputed_cost_gives_the_same_coupling():
    x0, x1 = _clouds(64, 3)
    sk = dict(epsilon=0.05, scale_free=True, threshold=1e-4, sample=False)
    a = jax.jit(couplings.Sinkhorn(**sk))(None, x0, x1)
    b = jax.jit(couplings.Sinkhorn(**sk, precompute_cost=True))(None, x0, x1)
    assert float(jnp.mean(jnp.all(a.x0 == b.x0, axis=1))) > 0.95
    for name in ("plan_cost", "renormalized_entropy", "epsilon"):
        assert float(b.stats[name]) == pytest.approx(float(a.stats[name]), rel=1e-4), name


@pytest.mark.slow
def test_sampled_partners_are_drawn_from_the_plan_columns():
    x0, x1 = _clouds(8, 2)
    plan, _ = jax.jit(functools.partial(couplings.sinkhorn_plan, epsilon=0.5,
                                        threshold=1e-5))(x0, x1)
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    tiny = jax.jit(jax.vmap(draw_partners, (0, None)))
    idx = np.asarray(tiny(keys, plan))  # [K, 8]
    freqs = np.stack([(idx == i).mean(0) for i in range(8)])  # [i, j] ~ P(row i | column j)
    np.testing.assert_allclose(freqs, plan / plan.sum(0), atol=0.03)
    # the coupling pairs each x1[j] with x0[idx[j]]
    key = jax.random.PRNGKey(5)
    res = jax.jit(couplings.Sinkhorn(0.5, threshold=1e-5))(key, x0, x1)
    np.testing.assert_array_equal(res.x1, x1)
    assert float(jnp.mean(jnp.all(res.x0 == x0[draw_partners(key, plan)], axis=1))) > 0.8
    # zero-mass rows are never drawn, and the last row is reachable
    idx = tiny(keys[:64], jnp.array([[0.0, 0.5], [0.5, 0.0], [0.0, 0.0]]))
    np.testing.assert_array_equal(idx, np.tile([1, 0], (64, 1)))
    idx = tiny(keys[:400], jnp.array([[0.3], [0.0], [0.7]]))
    assert set(np.unique(idx).tolist()) == {0, 2} and 0.6 < float(jnp.mean(idx == 2)) < 0.8


def test_option_errors_name_the_argument():
    from ott.geometry.epsilon_scheduler import Epsilon

    with pytest.raises(TypeError, match="`epsilon_schedule` must be an ott.*string 'fast'"):
        couplings.Sinkhorn(0.1, epsilon_schedule="fast")
    with pytest.raises(TypeError, match="`epsilon_schedule`.*the class Epsilon itself"):
        couplings.Sinkhorn(0.1, epsilon_schedule=Epsilon)
    with pytest.raises(ValueError, match="`epsilon_schedule.init`"):
        couplings.Sinkhorn(0.1, epsilon_schedule=_schedule(0.5, 0.9))
    with pytest.raises(ValueError, match="`epsilon_schedule.decay`"):
        couplings.Sinkhorn(0.1, epsilon_schedule=_schedule(10.0, 0.0))
    with pytest.raises(ValueError, match="needs `decay` < 1"):
        couplings.Sinkhorn(0.1, epsilon_schedule=_schedule(10.0, 1.0))
    with pytest.raises(ValueError, match="its target is the coupling's epsilon"):
        couplings.Sinkhorn(0.1, epsilon_schedule=Epsilon(0.5, init=10.0, decay=0.9))
    with pytest.raises(TypeError, match="`momentum` must be an ott.*string 'adaptive'"):
        couplings.Sinkhorn(0.1, momentum="adaptive")
    with pytest.raises(TypeError, match="`momentum` must be an ott"):
        couplings.Sinkhorn(0.1, momentum=1.3)
    for bad in (0.0, 2.0, -1.0):
        with pytest.raises(ValueError, match="`momentum.value`"):
            couplings.Sinkhorn(0.1, momentum=_momentum(value=bad))
    with pytest.raises(ValueError, match="`momentum.start` must be 0"):
        couplings.Sinkhorn(0.1, momentum=_momentum(start=10))
    with pytest.raises(ValueError, match="`momentum.value`"):
        couplings.sinkhorn_plan(jnp.ones((4, 2)), jnp.ones((4, 2)), epsilon=0.1,
                                momentum=_momentum(value=-1.0))
    with pytest.raises(TypeError, match="`sample` must be a bool"):
        couplings.Sinkhorn(0.1, sample="gumbel")
    with pytest.raises(TypeError, match="unexpected keyword argument 'sampler'"):
        couplings.Sinkhorn(0.1, sampler="inverse_cdf")


def test_coupling_passed_as_a_class_or_a_string_is_named():
    """The losses and the sharded wrappers check with check_instance; its hints, here."""
    from flowjax._checks import check_instance

    what = "a coupling (e.g. flowjax.couplings.ExactOT())"
    with pytest.raises(TypeError, match=r"`coupling` must be a coupling.*class ExactOT itself; "
                                        r"pass an instance, ExactOT\(...\)"):
        check_instance("coupling", couplings.ExactOT, couplings.AbstractCoupling, what)
    with pytest.raises(TypeError, match="`coupling` must be a coupling.*the string 'exact_ot'"):
        check_instance("coupling", "exact_ot", couplings.AbstractCoupling, what)
    # Calling the class as if it were a coupling fails at construction, naming the argument.
    with pytest.raises(TypeError):
        couplings.ExactOT(jax.random.PRNGKey(0), jnp.ones((4, 2)), jnp.ones((4, 2)))
    with pytest.raises(TypeError, match="`epsilon` must be a real number"):
        couplings.Sinkhorn(jax.random.PRNGKey(0))


@pytest.mark.slow
def test_failed_sinkhorn_falls_back_to_independent_pairs_per_batch():
    """A solve that does not converge, or overflows, pairs its batch independently and says so."""
    x0, x1 = _clouds(32, 2)
    scales = jnp.array([1.0, 1e6, 1e19])  # costs ~10, ~1e13 (no convergence), inf (NaN plan)
    x0s, x1s = x0 * scales[:, None, None], x1 * scales[:, None, None]
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    c = couplings.Sinkhorn(0.5, max_iterations=100, warm_start=True)
    res = jax.jit(jax.vmap(lambda k, a, b: c(k, a, b)))(keys, x0s, x1s)
    y0, aux = res.x0, res.stats
    np.testing.assert_array_equal(res.fallback, [False, True, True])
    assert np.all(np.isfinite(y0)) and np.all(np.isfinite(aux["renormalized_entropy"]))
    np.testing.assert_array_equal(res.x1, x1s)
    for b in (1, 2):  # the independent coupling: x0 as it was given
        np.testing.assert_array_equal(y0[b], x0s[b])
        assert float(aux["renormalized_entropy"][b]) == 1.0
        np.testing.assert_array_equal(res.state.g[b], 0.0)  # the next solve starts cold
    rows = np.asarray(x0)  # batch 0 is paired from its plan: every row is a row of x0
    assert all(np.any(np.all(rows == r, axis=1)) for r in np.asarray(y0[0]))
    assert not np.array_equal(y0[0], x0) and np.all(np.isfinite(res.state.g[0]))
    # An infinite tolerance keeps a finite plan however far from converged; a
    # non-finite one still falls back.
    lax = couplings.Sinkhorn(0.005, max_iterations=10, warm_start=True,
                             fallback_tolerance=float("inf"))
    res = jax.jit(jax.vmap(lambda k, a, b: lax(k, a, b)))(keys, x0s, x1s)
    assert not bool(res.fallback[0]) and not bool(res.stats["converged"][0])
    assert not np.array_equal(res.x0[0], x0) and bool(res.fallback[2])
    with pytest.raises(ValueError, match="`fallback_tolerance`"):
        couplings.Sinkhorn(0.1, fallback_tolerance=0.0)


@pytest.mark.slow
def test_schrodinger_bridge_default_threshold_reaches_the_converged_plan():
    """512 standard-normal -> moons points at sigma = 0.25: the default threshold puts the
    plan cost within 1e-4 (relative) of a solve to 1e-7; Sinkhorn's 1e-3 leaves it 9e-4 away."""
    from flowjax import data

    k0, k1 = jax.random.split(jax.random.PRNGKey(0))
    x0, x1 = data.standard_normal(k0, 512), data.moons(k1, 512)

    def plan_cost(**kw):
        return float(jax.jit(couplings.SchrodingerBridge(0.25, sample=False, **kw))(
            None, x0, x1).stats["plan_cost"])

    converged = plan_cost(threshold=1e-7, max_iterations=20_000)
    assert abs(plan_cost() - converged) < 1e-4 * converged
    assert abs(plan_cost(threshold=1e-3) - converged) > 5e-4 * converged  # the test can fail
