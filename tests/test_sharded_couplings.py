"""Couplings of a batch sharded over 8 host devices: per device (local) and whole-batch (global).

Local: each device's shard is paired exactly as the coupling pairs that shard
alone (key folded with the device index). Global: the sharded Sinkhorn equals
the unsharded one, with the [n, n] cost and plan split by rows.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from flowjax import couplings, data, losses, models, paths, train

D = 8  # tests/conftest.py gives the test process 8 CPU devices


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() >= D
    return train.make_mesh(jax.devices()[:D])


def _batch(mesh, n, seed=0):
    rows = NamedSharding(mesh, P("data"))
    k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
    x0 = data.standard_normal(k0, n)
    x1 = data.moons(k1, n)
    # Host copies for the references; the sharded arrays for the code under test.
    return (np.asarray(x0), np.asarray(x1), jax.device_put(x0, rows), jax.device_put(x1, rows))


def _shards(a):
    return np.split(np.asarray(a), D)


def test_local_exact_ot_is_exact_ot_of_each_shard(mesh):
    a0, a1, x0, x1 = _batch(mesh, 16 * D)
    res = jax.jit(train.LocalCoupling(couplings.ExactOT(), mesh))(None, x0, x1)
    assert res.x0.sharding.spec == P("data")
    np.testing.assert_array_equal(res.x1, a1)
    costs = []
    for s0, s1, out in zip(_shards(a0), _shards(a1), _shards(res.x0)):
        ref = couplings.ExactOT()(None, s0, s1)
        np.testing.assert_array_equal(out, ref.x0)  # the same permutation within the shard
        costs.append(float(ref.cost))
    np.testing.assert_allclose(float(res.cost), np.mean(costs), rtol=1e-6)
    # The block-diagonal plan is feasible for the whole batch, so it cannot beat global OT.
    whole = float(couplings.ExactOT()(None, a0, a1).cost)
    assert whole < float(res.cost)


N = 32 * D


def test_local_coupling_folds_the_device_index_into_the_key(mesh):
    """Device k draws with fold_in(key, k): a toy coupling that jitters x0 shows it cheaply."""
    class Jitter(couplings.AbstractCoupling):
        def __call__(self, key, x0, x1, *, cond=None, state=None):
            x0 = x0 + jax.random.normal(key, x0.shape)
            return couplings.CouplingResult(x0, x1, couplings.mean_pair_cost(x0, x1),
                                            jnp.zeros((), bool))

    jitter = Jitter()
    a0, a1, x0, x1 = _batch(mesh, N, seed=1)
    key = jax.random.PRNGKey(7)
    res = jax.jit(train.LocalCoupling(jitter, mesh))(key, x0, x1)
    ref = [jax.jit(jitter)(jax.random.fold_in(key, k), s0, s1)
           for k, (s0, s1) in enumerate(zip(_shards(a0), _shards(a1)))]
    for out, r in zip(_shards(res.x0), ref):
        np.testing.assert_allclose(out, r.x0, rtol=1e-6)
    np.testing.assert_allclose(res.cost, np.mean([r.cost for r in ref]), rtol=1e-6)


@pytest.mark.slow
def test_local_sinkhorn_is_sinkhorn_of_each_shard_and_warm_starts(mesh):
    a0, a1, x0, x1 = _batch(mesh, N, seed=1)
    sk = couplings.Sinkhorn(0.05, scale_free=True, threshold=1e-4, sample=False, warm_start=True)
    local = jax.jit(train.LocalCoupling(sk, mesh))
    res = local(None, x0, x1)
    aux = res.stats
    ref = [jax.jit(sk)(None, s0, s1) for s0, s1 in zip(_shards(a0), _shards(a1))]
    for out, r in zip(_shards(res.x0), ref):
        np.testing.assert_allclose(out, r.x0, rtol=1e-6)
    # stats: floats averaged, booleans and-ed, integers the slowest shard, arrays concatenated.
    np.testing.assert_allclose(res.cost, np.mean([r.cost for r in ref]), rtol=1e-5)
    for name in ("plan_cost", "renormalized_entropy"):
        np.testing.assert_allclose(aux[name], np.mean([r.stats[name] for r in ref]), rtol=1e-5)
    assert int(aux["n_iters"]) == max(int(r.stats["n_iters"]) for r in ref)
    assert bool(aux["converged"]) and not bool(res.fallback)
    np.testing.assert_allclose(res.state.g, np.concatenate([r.state.g for r in ref]), atol=1e-5)
    # Warm start: the potentials come back sharded like the batch; fed back for the same
    # batch, every shard stops at its first check (10 iterations) on the same plan.
    assert res.state.x1.sharding.spec == P("data") and int(aux["n_iters"]) >= 30
    warm = local(None, x0, x1, state=res.state)
    assert int(warm.stats["n_iters"]) == 10
    np.testing.assert_allclose(warm.stats["plan_cost"], aux["plan_cost"], rtol=1e-4)
    # init_state is the inner coupling's: the first call has the later calls' structure.
    first = local(None, x0, x1, state=train.LocalCoupling(sk, mesh).init_state(x0, x1))
    np.testing.assert_allclose(first.stats["plan_cost"], aux["plan_cost"], rtol=1e-4)


def test_local_condition_aware_ot_splits_the_labels_too(mesh):
    a0, a1, x0, x1 = _batch(mesh, 16 * D, seed=2)
    cond = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (16 * D,), 0, 3))
    coupling = train.LocalCoupling(couplings.ConditionAwareOT(), mesh)
    assert coupling.uses_cond and coupling.needs_cond and coupling.reorders
    assert not train.GlobalCoupling(couplings.Independent(), mesh).reorders
    y0 = jax.jit(coupling)(None, x0, x1, cond=jax.device_put(cond, x0.sharding)).x0
    for s0, s1, c, out in zip(_shards(a0), _shards(a1), _shards(cond), _shards(y0)):
        np.testing.assert_array_equal(out, couplings.ConditionAwareOT()(None, s0, s1, cond=c).x0)
    with pytest.raises(ValueError, match="`cond` is required"):
        coupling(None, x0, x1)


def _f32_matrices(compiled):
    return {tuple(int(v) for v in m.split(","))
            for m in re.findall(r"f32\[(\d+,\d+)\]", compiled.as_text())}


def test_global_sinkhorn_equals_unsharded_with_a_row_sharded_plan(mesh):
    a0, a1, x0, x1 = _batch(mesh, N, seed=4)
    sk = couplings.Sinkhorn(0.05, scale_free=True, threshold=1e-4, warm_start=True)
    key = jax.random.PRNGKey(5)
    sharded = jax.jit(train.GlobalCoupling(sk, mesh)).lower(key, x0, x1).compile()
    whole = jax.jit(sk).lower(key, a0, a1).compile()  # host arrays: one device
    # Each device holds [n/D, n] blocks of the cost and plan, never the [n, n] matrix.
    assert (N // D, N) in _f32_matrices(sharded) and (N, N) not in _f32_matrices(sharded)
    assert (N, N) in _f32_matrices(whole)
    assert (sharded.memory_analysis().temp_size_in_bytes
            < whole.memory_analysis().temp_size_in_bytes / 4)
    got, want = sharded(key, x0, x1), whole(key, a0, a1)
    g0, u0 = got.x0, want.x0
    assert g0.sharding.spec == P("data") and got.state.g.sharding.spec == P("data")
    for name in ("plan_cost", "renormalized_entropy", "epsilon"):
        np.testing.assert_allclose(got.stats[name], want.stats[name], rtol=1e-5)
    assert int(got.stats["n_iters"]) == int(want.stats["n_iters"])
    np.testing.assert_allclose(got.state.g, want.state.g, atol=1e-5)
    # Pairs drawn with the same key: the same partners (float sums may flip a rare tie).
    assert np.mean(np.all(np.asarray(g0) == np.asarray(u0), axis=1)) > 0.99


def test_local_coupling_in_a_jitted_sharded_cfm_loss(mesh):
    """cfm_loss (value and gradient) on a sharded batch with the local exact coupling equals
    the unsharded loss on the batch whose sources were paired shard by shard beforehand."""
    a0, a1, x0, x1 = _batch(mesh, 4 * D, seed=8)
    module = models.MLP(hidden=(8,), time_dim=4)
    params = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    loss = lambda coupling: jax.value_and_grad(  # noqa: E731
        lambda p, k, b: losses.cfm_loss(p["params"], k, b, apply_fn=models.model_fn(module),
                                        path=paths.RectifiedFlow(), coupling=coupling)[0])
    key = jax.random.PRNGKey(1)
    got, got_grad = jax.jit(loss(train.LocalCoupling(couplings.ExactOT(), mesh)))(
        params, key, {"x0": x0, "x1": x1})
    paired = np.concatenate([couplings.ExactOT()(None, s0, s1).x0
                             for s0, s1 in zip(_shards(a0), _shards(a1))])
    want, want_grad = jax.jit(loss(couplings.Independent()))(params, key,
                                                             {"x0": paired, "x1": a1})
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 got_grad, want_grad)


def test_sharded_coupling_arguments(mesh):
    sk = couplings.ExactOT()
    for wrap in (train.LocalCoupling, train.GlobalCoupling):
        with pytest.raises(TypeError, match="`coupling` must be a coupling.*string 'exact'"):
            wrap("exact", mesh)
        with pytest.raises(TypeError, match="`coupling` must be a coupling.*class ExactOT"):
            wrap(couplings.ExactOT, mesh)
        with pytest.raises(TypeError, match="`mesh`"):
            wrap(sk, jax.devices())
        with pytest.raises(ValueError, match="`axis_name`"):
            wrap(sk, mesh, axis_name="batch")
        with pytest.raises(ValueError, match="`x0` has 12 rows"):
            wrap(sk, mesh)(None, jnp.zeros((12, 2)), jnp.zeros((12, 2)))
        with pytest.raises(ValueError, match="`x0` and `x1`"):
            wrap(sk, mesh)(None, jnp.zeros((16, 2)), jnp.zeros((8, 2)))


def test_host_couplings_called_eagerly_on_sharded_arrays(mesh):
    """exact OT and C2OT outside jit, on rows split over 8 devices, equal the unsharded call."""
    k0, k1 = jax.random.split(jax.random.PRNGKey(7))
    x0, x1 = jax.random.normal(k0, (64, 2)), jax.random.normal(k1, (64, 2))
    labels = jnp.arange(64) % 4
    rows = NamedSharding(mesh, P("data"))
    s0, s1, sl = (jax.device_put(a, rows) for a in (x0, x1, labels))
    for coupling, cond, cond_sharded in ((couplings.ExactOT(), None, None),
                                         (couplings.ConditionAwareOT(), labels, sl)):
        ref = coupling(None, x0, x1, cond=cond)
        out = coupling(None, s0, s1, cond=cond_sharded)
        np.testing.assert_array_equal(np.asarray(out.x0), np.asarray(ref.x0))
        np.testing.assert_allclose(float(out.cost), float(ref.cost), rtol=1e-6)
