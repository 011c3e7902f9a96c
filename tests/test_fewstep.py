"""MeanFlow, shortcut and reflow: the identities on exact Gaussian flow maps, and the samplers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from flowjax import analytic, losses, models, paths, sample, time

MEAN = jnp.array([1.5, -0.5])
COV = jnp.array([[0.5, 0.2], [0.2, 0.3]])
PATHS = [paths.RectifiedFlow(), paths.Cosine(), paths.VP()]


def _exact_apply(path):
    """The closed-form average velocity as a model function `apply_fn(params, x, r, t, cond)`."""

    def apply_fn(params, x, r, t, cond=None):
        del params, cond
        return analytic.gaussian_average_velocity(path, MEAN, COV, x, r, t)

    return apply_fn


def _exact_velocity(path):
    mix = analytic.GaussianMixture.gaussian(MEAN, COV)
    return lambda x, t, cond: analytic.mixture_velocity(path, mix, x, t)


def _states(path, n=64, seed=0):
    k0, k1, kt = jax.random.split(jax.random.PRNGKey(seed), 3)
    ra, rb = jax.random.uniform(kt, (2, n), minval=0.02, maxval=0.95)
    r, t = jnp.minimum(ra, rb), jnp.maximum(ra, rb)
    x0 = jax.random.normal(k0, (n, 2))
    x1 = MEAN + jax.random.normal(k1, (n, 2)) @ jnp.linalg.cholesky(COV).T
    return path.interpolate(x0, x1, r), r, t


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_exact_average_velocity_is_the_flow_map(x64, path):
    """u(x, r, t) jumps exactly where the closed-form flow map goes, and u(x, t, t) = v."""
    x0 = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    r, t = 0.2, 0.9
    x_r = analytic.gaussian_flow_map(path, MEAN, COV, x0, r)
    x_t = analytic.gaussian_flow_map(path, MEAN, COV, x0, t)
    u = analytic.gaussian_average_velocity(path, MEAN, COV, x_r, r, t)
    np.testing.assert_allclose(x_r + (t - r) * u, x_t, atol=1e-12)
    v = analytic.gaussian_average_velocity(path, MEAN, COV, x_r, r, r)
    np.testing.assert_allclose(v, _exact_velocity(path)(x_r, jnp.full(16, r), None), atol=1e-10)


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_meanflow_target_equals_closed_form_average_velocity(x64, path):
    """With the exact u and the marginal v, the target is u itself."""
    apply_fn = _exact_apply(path)
    x, r, t = _states(path)
    v = _exact_velocity(path)(x, r, None)
    u, target = losses.meanflow_target(apply_fn, None, x, r, t, v)
    np.testing.assert_allclose(target, u, rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(target - u))) < 1e-10
    # The identity is not trivial: the correction (t - r) du/dr is O(1) ...
    correction = target - v
    assert float(jnp.mean(jnp.abs(correction))) > 0.05
    # ... and the paper's sign, or the wrong tangent, would miss by that much.
    _, du = jax.jvp(lambda x_, r_, t_: apply_fn(None, x_, r_, t_), (x, r, t),
                    (v, jnp.ones_like(r), jnp.zeros_like(t)))
    wrong = v - (t - r)[:, None] * du
    assert float(jnp.max(jnp.abs(wrong - u))) > 0.1
    _, du_t = jax.jvp(lambda x_, r_, t_: apply_fn(None, x_, r_, t_), (x, r, t),
                      (v, jnp.zeros_like(r), jnp.ones_like(t)))
    assert float(jnp.max(jnp.abs(v + (t - r)[:, None] * du_t - u))) > 0.1


@pytest.mark.slow
def test_meanflow_loss_is_zero_for_the_exact_u(x64):
    path = paths.RectifiedFlow()
    x1 = MEAN + jax.random.normal(jax.random.PRNGKey(3), (256, 2)) @ jnp.linalg.cholesky(COV).T
    loss_fn = functools.partial(
        losses.meanflow_loss, apply_fn=_exact_apply(path), path=path,
        velocity_fn=_exact_velocity(path),
        time_sampler=time.OrderedPairs(time.Uniform(), equal_fraction=0.25))
    loss, aux = loss_fn(None, jax.random.PRNGKey(4), {"x1": x1})
    assert float(aux["mse"]) < 1e-20 and float(loss) < 1e-16
    # With the conditional velocity the loss is not zero, but the target is
    # unbiased: its mean over x1 given x_r is the exact u (checked at one point).
    cond_loss, _ = functools.partial(loss_fn, velocity_fn=None)(None, jax.random.PRNGKey(4),
                                                                 {"x1": x1})
    assert float(cond_loss) > 1e-3


@pytest.mark.slow
def test_conditional_meanflow_target_is_unbiased(x64):
    """E[target | x_r] over the posterior of (x0, x1) given x_r equals the exact u."""
    path = paths.RectifiedFlow()
    apply_fn = _exact_apply(path)
    n = 200_000
    k0, k1 = jax.random.split(jax.random.PRNGKey(5))
    r, t = 0.3, 0.8
    x0 = jax.random.normal(k0, (n, 2))
    x1 = MEAN + jax.random.normal(k1, (n, 2)) @ jnp.linalg.cholesky(COV).T
    x_r = path.interpolate(x0, x1, r)
    rb, tb = jnp.full(n, r), jnp.full(n, t)
    u, target = losses.meanflow_target(apply_fn, None, x_r, rb, tb, path.velocity(x0, x1, r))
    # The target is affine in v and u is affine in x for a Gaussian, so the
    # regression of the target on x_r (least squares) recovers u exactly in the limit.
    feats = jnp.concatenate([x_r, jnp.ones((n, 1))], axis=1)
    coef, *_ = jnp.linalg.lstsq(feats, target)
    coef_u, *_ = jnp.linalg.lstsq(feats, u)
    np.testing.assert_allclose(coef, coef_u, atol=0.02)


@pytest.mark.slow
def test_meanflow_guidance_fixed_point(x64):
    """With u(.|c) the CFG field of scale omega/(1-kappa) and u(.|null) the unconditional field,
    the guided target at r = t equals u(.|c): guidance folds into the target as the paper says."""
    path = paths.RectifiedFlow()
    means = jnp.array([[2.0, 0.0], [-2.0, 1.0]])
    covs = jnp.stack([0.2 * jnp.eye(2), 0.3 * jnp.eye(2)])
    classes = [analytic.GaussianMixture.gaussian(means[k], covs[k]) for k in range(2)]
    uncond = analytic.GaussianMixture.create(means, covs)
    omega, kappa = 1.5, 0.5
    scale = omega / (1 - kappa)

    def field(x, t, c):
        v_u = analytic.mixture_velocity(path, uncond, x, t)
        v_c = jnp.where(c[:, None] == 0, analytic.mixture_velocity(path, classes[0], x, t),
                        analytic.mixture_velocity(path, classes[1], x, t))
        return jnp.where(c[:, None] == 2, v_u, v_u + scale * (v_c - v_u))

    def apply_fn(params, x, r, t, c):
        del params, t
        return field(x, r, c)

    def class_velocity(x, t, c):  # the exact velocity given the label (none: unconditional)
        v_c = jnp.where(c[:, None] == 0, analytic.mixture_velocity(path, classes[0], x, t),
                        analytic.mixture_velocity(path, classes[1], x, t))
        return jnp.where(c[:, None] == 2, analytic.mixture_velocity(path, uncond, x, t), v_c)

    cond = jnp.array([0, 1] * 64)
    x1 = means[cond] + 0.5 * jax.random.normal(jax.random.PRNGKey(6), (128, 2))
    loss_fn = functools.partial(
        losses.meanflow_loss, apply_fn=apply_fn, velocity_fn=class_velocity,
        time_sampler=time.OrderedPairs(time.Uniform(), equal_fraction=1.0), null_cond=2,
        weight_power=0.0)
    batch = {"x1": x1, "cond": cond}
    loss, _ = loss_fn(None, jax.random.PRNGKey(7), batch, guidance_scale=omega,
                      guidance_mix=kappa, cond_drop_prob=0.1)
    assert float(loss) < 1e-20
    # Another scale breaks the fixed point.
    off, _ = loss_fn(None, jax.random.PRNGKey(7), batch, guidance_scale=2.5, guidance_mix=kappa)
    assert float(off) > 1e-2


def test_meanflow_loss_rejects_bad_options():
    apply_fn = _exact_apply(paths.RectifiedFlow())
    batch = {"x1": jnp.ones((4, 2))}
    with pytest.raises(ValueError, match="null_cond"):
        losses.meanflow_loss(None, jax.random.PRNGKey(0), batch, apply_fn=apply_fn,
                             guidance_scale=2.0)
    with pytest.raises(ValueError, match="weight_power"):
        losses.meanflow_loss(None, jax.random.PRNGKey(0), batch, apply_fn=apply_fn,
                             weight_power=-1.0)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        losses.meanflow_loss(None, jax.random.PRNGKey(0), batch, apply_fn=apply_fn,
                             cond_drop_prob=1.0)


def test_adaptive_weight_normalises_the_error():
    """p = 1: each row contributes ||d||^2 / (||d||^2 + c), below 1; p = 0 is the MSE."""
    def apply_fn(params, x, r, t, cond):
        return params * jnp.ones_like(x)

    batch = {"x1": jnp.zeros((8, 2)), "x0": jnp.zeros((8, 2))}
    pairs = time.OrderedPairs(time.Uniform(), equal_fraction=1.0)
    for p, expected in [(0.0, 9.0), (1.0, 18.0 / (18.0 + 1e-3) / 2)]:
        loss, aux = losses.meanflow_loss(jnp.float32(3.0), jax.random.PRNGKey(0), batch,
                                         apply_fn=apply_fn, weight_power=p, time_sampler=pairs)
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
        np.testing.assert_allclose(float(aux["mse"]), 9.0, rtol=1e-6)


def test_ordered_pairs_distribution():
    r, t = time.OrderedPairs(time.Uniform(), equal_fraction=0.75)(jax.random.PRNGKey(0),
                                                                   (40_000,))
    r, t = np.asarray(r), np.asarray(t)
    assert np.all(r <= t)
    equal = r == t
    frac = equal.mean()
    assert abs(frac - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 40_000)
    # Sorted uniforms: max has CDF t^2, min has CDF 1 - (1 - r)^2.
    assert stats.kstest(t, lambda s: s ** 2).pvalue > 1e-3
    assert stats.kstest(r[~equal], lambda s: 1 - (1 - s) ** 2).pvalue > 1e-3
    assert stats.kstest(t, lambda s: s).pvalue < 1e-6
    with pytest.raises(ValueError, match="equal_fraction"):
        time.OrderedPairs(time.Uniform(), equal_fraction=1.5)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_flow_map_sampler_is_exact_for_the_exact_map(x64, steps):
    path = paths.RectifiedFlow()
    x0 = jax.random.normal(jax.random.PRNGKey(8), (32, 2))
    sol = sample.solve_flow_map(sample.ModelFlowMap(_exact_apply(path), None), x0,
                                num_steps=steps, save_trajectory=True)
    assert int(sol.nfe) == steps and sol.trajectory.shape == (steps + 1, 32, 2)
    np.testing.assert_allclose(sol.samples, analytic.gaussian_flow_map(path, MEAN, COV, x0, 1.0),
                               atol=1e-10)
    np.testing.assert_allclose(sol.trajectory[1],
                               analytic.gaussian_flow_map(path, MEAN, COV, x0, 1.0 / steps),
                               atol=1e-10)
    with pytest.raises(RuntimeError, match="`ts`"):
        sample.solve_flow_map(sample.ModelFlowMap(_exact_apply(path), None), x0,
                              ts=jnp.array([0.0, 0.5, 0.4]))


@pytest.mark.slow
def test_shortcut_consistency_is_zero_for_an_exact_flow_map(x64):
    """Two exact half jumps are one exact jump; a distorted map violates it."""
    path = paths.RectifiedFlow()
    x1 = MEAN + jax.random.normal(jax.random.PRNGKey(9), (256, 2)) @ jnp.linalg.cholesky(COV).T
    exact = _exact_apply(path)
    _, aux = losses.shortcut_loss(None, jax.random.PRNGKey(10), {"x1": x1}, apply_fn=exact,
                                  finest_steps=16, bootstrap_fraction=0.5)
    assert float(aux["consistency_mse"]) < 1e-20
    # The flow-matching rows regress on the conditional velocity at step 1/M: their error
    # is the conditional variance, not zero.
    assert float(aux["fm_mse"]) > 1e-2

    def bent(params, x, r, t, cond):  # right at the finest step, wrong (r-dependent) above it
        return exact(params, x, r, t, cond) * (1 + (t - r)[:, None] * (1 + r[:, None]))

    _, aux = losses.shortcut_loss(None, jax.random.PRNGKey(10), {"x1": x1}, apply_fn=bent,
                                  finest_steps=16, bootstrap_fraction=0.5)
    assert float(aux["consistency_mse"]) > 1e-3
    with pytest.raises(ValueError, match="`finest_steps`"):
        losses.shortcut_loss(None, jax.random.PRNGKey(0), {"x1": x1}, apply_fn=exact,
                             finest_steps=12)


def test_meanflow_target_matches_a_finite_difference(x64):
    """The jvp's total derivative d/dr u(x_r, r, t), along x' = v, against central differences."""
    w = jax.random.normal(jax.random.PRNGKey(20), (2, 2))

    def apply_fn(params, x, r, t, cond=None):  # nonlinear in x, r and t
        return jnp.tanh(x @ w + r[:, None] * x ** 2) * (1 + t[:, None] - r[:, None])

    x, r, t = _states(paths.RectifiedFlow(), n=16, seed=21)
    v = jax.random.normal(jax.random.PRNGKey(22), x.shape)
    u, target = losses.meanflow_target(apply_fn, None, x, r, t, v)
    h = 1e-5
    du = (apply_fn(None, x + h * v, r + h, t) - apply_fn(None, x - h * v, r - h, t)) / (2 * h)
    np.testing.assert_allclose(target, v + (t - r)[:, None] * du, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(u, apply_fn(None, x, r, t))
    assert float(jnp.max(jnp.abs(du))) > 0.1  # the derivative term is not negligible


def test_shortcut_target_is_the_exact_jump_for_the_exact_map(x64):
    """Two exact half jumps land where one exact jump does; a one-step guess does not."""
    path = paths.RectifiedFlow()
    exact = _exact_apply(path)
    x, r, t = _states(path)
    target = losses.shortcut_target(exact, None, x, r, t)
    np.testing.assert_allclose(target, exact(None, x, r, t), atol=1e-10)
    assert float(jnp.max(jnp.abs(target - exact(None, x, r, r)))) > 0.05
    grad = jax.grad(lambda p: jnp.sum(losses.shortcut_target(
        lambda q, x_, r_, t_, c: q * exact(None, x_, r_, t_), p, x, r, t)))(1.0)
    assert float(grad) == 0.0  # a bootstrap target: no gradient flows through it


@pytest.mark.slow
def test_shortcut_step_grid():
    """Self-consistency rows sit on the dyadic grid; flow-matching rows jump by 1/M."""
    seen = []

    def apply_fn(params, x, r, t, cond):
        seen.append((np.asarray(r), np.asarray(t)))
        return jnp.zeros_like(x)

    losses.shortcut_loss(None, jax.random.PRNGKey(1), {"x1": jnp.ones((400, 2))},
                         apply_fn=apply_fn, finest_steps=8, bootstrap_fraction=0.25)
    r, t = seen[-1]  # the prediction call sees the whole batch
    assert r.shape == (400,)
    big = t[:100] - r[:100]
    np.testing.assert_allclose(np.log2(big), np.round(np.log2(big)), atol=1e-6)
    assert set(np.round(1 / big).astype(int)) == {1, 2, 4}
    np.testing.assert_allclose(r[:100] / big, np.round(r[:100] / big), atol=1e-5)
    assert np.all(t <= 1.0)
    np.testing.assert_allclose(t[100:] - r[100:], 1 / 8, atol=1e-6)


@pytest.mark.slow
def test_reflow_pairs_and_losses(x64):
    path = paths.RectifiedFlow()
    mix = analytic.GaussianMixture.gaussian(MEAN, COV)
    x0 = jax.random.normal(jax.random.PRNGKey(11), (64, 2))
    pairs = sample.reflow_pairs(lambda x, t: analytic.mixture_velocity(path, mix, x, t),
                                x0, chunk_size=40, adaptive=sample.Adaptive(1e-9, 1e-9))
    x1 = pairs.samples
    np.testing.assert_allclose(x1, analytic.gaussian_flow_map(path, MEAN, COV, x0, 1.0),
                               atol=1e-6)
    assert int(pairs.nfe) > 0

    def apply_fn(params, x, t, cond):
        return params * x

    batch = {"x0": x0, "x1": x1}
    loss, _ = losses.reflow_loss(jnp.float64(0.5), jax.random.PRNGKey(0), batch,
                                 apply_fn=apply_fn, distill=True)
    np.testing.assert_allclose(float(loss), float(jnp.mean((0.5 * x0 - (x1 - x0)) ** 2)))
    # The pairs stay paired: the fitted straight field of pairs x1 = 2 x0 is exactly v = x0/(1+t)... at t=0, v = x0.
    loss, _ = losses.reflow_loss(jnp.float64(1.0), jax.random.PRNGKey(0),
                                 {"x0": x0, "x1": 2 * x0}, apply_fn=apply_fn, distill=True)
    assert float(loss) < 1e-20
    with pytest.raises(ValueError, match="'x0'"):
        losses.reflow_loss(None, jax.random.PRNGKey(0), {"x1": x1}, apply_fn=apply_fn)


@pytest.mark.slow
def test_two_time_mlp():
    module = models.MLP(hidden=(16,), time_dim=8, two_times=True, time_scale=1.0)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    params = module.init(jax.random.PRNGKey(1), x, jnp.zeros(4), None, jnp.zeros(4))["params"]
    params = jax.tree.map(lambda p: p + 0.1, params)
    apply_fn = models.average_model_fn(module)
    a = apply_fn(params, x, jnp.full(4, 0.2), jnp.full(4, 0.2), None)
    b = apply_fn(params, x, jnp.full(4, 0.2), jnp.full(4, 0.7), None)
    assert a.shape == x.shape and not np.allclose(a, b)
    with pytest.raises(ValueError, match="two_times"):
        models.average_model_fn(models.MLP())
    plain = models.MLP(hidden=(4,))
    p = plain.init(jax.random.PRNGKey(0), x, jnp.zeros(4))["params"]
    with pytest.raises(ValueError, match="`h`"):
        plain.apply({"params": p}, x, jnp.zeros(4), None, jnp.zeros(4))


def _mlp_meanflow():
    module = models.MLP(hidden=(32, 32), time_dim=16, two_times=True, time_scale=1.0)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros(1), None,
                         jnp.zeros(1))["params"]
    params = jax.tree.map(lambda p: p + 0.05, params)  # a non-zero output layer
    loss = functools.partial(losses.meanflow_loss, apply_fn=models.average_model_fn(module))
    return params, loss


@pytest.mark.slow
def test_meanflow_loss_under_vmap_equals_a_loop():
    params, loss = _mlp_meanflow()
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    x1 = jax.random.normal(jax.random.PRNGKey(2), (3, 16, 2))
    grad = jax.grad(lambda p, k, x: loss(p, k, {"x1": x})[0])
    batched = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0)))(params, keys, x1)
    for i in range(3):
        one = grad(params, keys[i], x1[i])
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched)):
            np.testing.assert_allclose(b[i], a, rtol=1e-4, atol=1e-6)



@pytest.mark.slow
def test_meanflow_model_key_gives_one_dropout_mask_per_step():
    """With `model_key`, the jvp differentiates one masked network, not two different ones."""
    module = models.MLP(hidden=(32, 32), time_dim=16, two_times=True, time_scale=1.0)
    params = jax.tree.map(lambda p: p + 0.05, module.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros(1), None, jnp.zeros(1))["params"])
    base = models.average_model_fn(module)

    def masked(params, x, r, t, cond=None, key=None):
        return base(params, x, r, t, cond) * jax.random.bernoulli(key, 0.7, x.shape)

    key = jax.random.PRNGKey(5)
    batch = {"x1": jax.random.normal(jax.random.PRNGKey(2), (32, 2))}
    k_model = jax.random.split(key, 5)[4]  # the model's key: the last of the loss's split
    fixed = functools.partial(masked, key=k_model)
    grad = jax.grad(lambda p, **kw: losses.meanflow_loss(p, key, batch, **kw)[0])
    with_key = grad(params, apply_fn=masked, model_key=True)
    closed = grad(params, apply_fn=fixed)
    unmasked = grad(params, apply_fn=base)
    for a, b, c in zip(jax.tree.leaves(with_key), jax.tree.leaves(closed),
                       jax.tree.leaves(unmasked)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    assert not all(np.allclose(a, c) for a, c in zip(jax.tree.leaves(with_key),
                                                     jax.tree.leaves(unmasked)))

@pytest.mark.slow
def test_meanflow_step_on_eight_devices_equals_one_device():
    """The loss and its gradient, data-parallel over 8 host devices, equal the 1-device ones."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    assert jax.device_count() == 8  # tests/conftest.py
    params, loss = _mlp_meanflow()
    batch = {"x1": jax.random.normal(jax.random.PRNGKey(3), (64, 2)),
             "x0": jax.random.normal(jax.random.PRNGKey(4), (64, 2))}
    fn = jax.value_and_grad(lambda p, b: loss(p, jax.random.PRNGKey(5), b)[0])
    one = jax.jit(fn)(params, batch)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    sharded = jax.jit(fn, in_shardings=(rep, data), out_shardings=rep)(
        jax.device_put(params, rep), jax.device_put(batch, data))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
