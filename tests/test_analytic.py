"""Exact Gaussian-mixture fields: score = grad log p, velocity <-> score, SciPy densities, transport."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from flowjax import analytic, metrics, paths, sample
from flowjax.paths import Prediction

PATHS = [paths.RectifiedFlow(), paths.Cosine(), paths.VP(),
         paths.RectifiedFlow(noise=paths.BridgeNoise(0.5))]


def _mixture():
    return analytic.GaussianMixture.create(
        jnp.array([[2.0, 0.0], [-1.0, 1.5]]),
        jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]),
        jnp.array([0.6, 0.4]))


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_score_is_gradient_of_log_prob_and_velocity_matches(x64, path):
    mix = _mixture()
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 2)) * 2.0
    t = jax.random.uniform(jax.random.PRNGKey(1), (32,), minval=0.05, maxval=0.95)
    score = analytic.mixture_score(path, mix, x, t)
    auto = jax.vmap(jax.grad(lambda xi, ti: analytic.mixture_log_prob(
        path, mix, xi[None], ti[None])[0]))(x, t)
    np.testing.assert_allclose(score, auto, rtol=1e-8, atol=1e-10)
    v = analytic.mixture_velocity(path, mix, x, t)
    np.testing.assert_allclose(
        paths.convert(path, x, t, score, given=Prediction.SCORE, to=Prediction.VELOCITY), v,
        rtol=1e-8, atol=1e-10)


def test_log_prob_matches_scipy(x64):
    mix, path = _mixture(), paths.Cosine()
    x = np.random.default_rng(0).normal(size=(10, 2))
    t = 0.4
    a, s = float(path.alpha(t)), float(path.sigma(t))
    ref = np.log(sum(
        float(w) * stats.multivariate_normal(a * np.asarray(m), a ** 2 * np.asarray(c)
                                             + s ** 2 * np.eye(2)).pdf(x)
        for w, m, c in zip(mix.weights, mix.means, mix.covs)))
    np.testing.assert_allclose(analytic.mixture_log_prob(path, mix, jnp.asarray(x), t), ref,
                               rtol=1e-10)


@pytest.mark.slow
def test_exact_velocity_transports_noise_to_the_mixture(x64):
    mix, path, n = _mixture(), paths.RectifiedFlow(), 1000
    x0 = jax.random.normal(jax.random.PRNGKey(2), (n, 2))
    sol = sample.solve_ode(lambda x, t: analytic.mixture_velocity(path, mix, x, t), x0,
                           solver=diffrax.Dopri5(), adaptive=sample.Adaptive(1e-7, 1e-7))
    ref_a, ref_b = mix.sample(jax.random.PRNGKey(3), n), mix.sample(jax.random.PRNGKey(4), n)
    floor = metrics.w2(ref_a, ref_b)
    assert metrics.w2(sol.samples, ref_a) < 1.25 * floor


def test_bad_mixture():
    with pytest.raises(ValueError, match="`covs` must have shape"):
        analytic.GaussianMixture.create(jnp.zeros((2, 2)), jnp.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="`weights` must have shape"):
        analytic.GaussianMixture.create(jnp.zeros((2, 2)), jnp.ones((2, 2, 2)), jnp.ones(3))
    # Values are checked by compiled checks: no host copy, also under jit.
    eye = jnp.stack([jnp.eye(2)] * 2)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`covs` must be symmetric"):
        analytic.GaussianMixture.create(jnp.zeros((2, 2)), eye.at[0, 0, 1].set(0.5))
    with pytest.raises(eqx.EquinoxRuntimeError, match="`covs` must be positive semi-definite"):
        analytic.GaussianMixture.create(jnp.zeros((2, 2)), eye.at[1, 1, 1].set(-1.0))
    with pytest.raises(eqx.EquinoxRuntimeError, match="`weights` must be >= 0"):
        analytic.GaussianMixture.create(jnp.zeros((2, 2)), eye, jnp.array([1.0, -0.5]))
    with pytest.raises(eqx.EquinoxRuntimeError, match="`r` must not exceed `t`"):
        analytic.gaussian_average_velocity(paths.RectifiedFlow(), jnp.zeros(2), jnp.eye(2),
                                           jnp.ones((3, 2)), 0.6, 0.5)
    with pytest.raises(TypeError, match="`mixture` must be an analytic.GaussianMixture.*class "
                                        "GaussianMixture itself"):
        analytic.mixture_velocity(paths.RectifiedFlow(), analytic.GaussianMixture,
                                  jnp.ones((3, 2)), 0.5)
    with pytest.raises(TypeError, match="`path` must be an affine path.*class Cosine itself"):
        analytic.mixture_score(paths.Cosine, _mixture(), jnp.ones((3, 2)), 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("path", [paths.RectifiedFlow(), paths.Cosine(),
                                  paths.LipmanPath(sigma_min=0.01)],
                         ids=lambda p: type(p).__name__)
def test_nonsingular_mixture_is_exact_at_the_data_end(x64, path):
    """At t = 1 a nonsingular mixture needs no floor: the fields are the exact ones there.

    There C_k = Sigma_k + sigma_total(1)^2 I; the velocity is d_alpha E[x1|x] + d_sigma_total
    E[eps|x] with those posteriors, and log p_1 is the mixture's own density (SciPy).
    """
    mix = _mixture()
    x = np.random.default_rng(5).normal(size=(12, 2)) + 0.5
    s1, ds1 = float(path.sigma_total(1.0)), float(path.d_sigma_total(1.0))
    da1 = float(path.d_alpha(1.0))
    comps = [stats.multivariate_normal(np.asarray(m), np.asarray(c) + s1 ** 2 * np.eye(2))
             for m, c in zip(mix.means, mix.covs)]
    dens = np.stack([float(w) * c.pdf(x) for w, c in zip(mix.weights, comps)])  # [K, n]
    resp = dens / dens.sum(0)
    v_ref = np.zeros_like(x)
    for k, (m, c) in enumerate(zip(np.asarray(mix.means), np.asarray(mix.covs))):
        sol = np.linalg.solve(c + s1 ** 2 * np.eye(2), (x - m).T).T
        v_ref += resp[k][:, None] * (da1 * (m + sol @ c) + ds1 * s1 * sol)
    if isinstance(path, paths.RectifiedFlow):
        np.testing.assert_allclose(v_ref, x, rtol=1e-12)  # v(x, 1) = E[x1 - x0 | x1 = x] = x
    ones = jnp.ones(len(x))
    np.testing.assert_allclose(analytic.mixture_velocity(path, mix, jnp.asarray(x), ones),
                               v_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(analytic.mixture_log_prob(path, mix, jnp.asarray(x), ones),
                               np.log(dens.sum(0)), rtol=1e-12, atol=1e-12)
    # One Gaussian: the flow map's average velocity at r = t = 1 is the same velocity.
    m0, c0 = mix.means[0], mix.covs[0]
    one = analytic.GaussianMixture.gaussian(m0, c0)
    np.testing.assert_allclose(
        analytic.gaussian_average_velocity(path, m0, c0, jnp.asarray(x), ones, ones),
        analytic.mixture_velocity(path, one, jnp.asarray(x), ones), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("path", [paths.RectifiedFlow(), paths.VP()],
                         ids=lambda p: type(p).__name__)
def test_exact_velocity_is_the_posterior_mean_of_the_conditional_velocity(x64, path):
    """v*(x, t) = E[u_t(x | x0, x1) | x_t = x], by self-normalized importance sampling over x1."""
    mix, n = _mixture(), 400_000
    x1 = mix.sample(jax.random.PRNGKey(5), n)
    for x, t in ((jnp.array([0.5, 0.4]), 0.3), (jnp.array([1.8, 0.1]), 0.8)):
        a, s = path.alpha(t), path.sigma(t)
        x0 = (x[None] - a * x1) / s  # the source that lands on x given x1
        logw = -0.5 * jnp.sum(x0 ** 2, -1)  # p(x_t = x | x1) up to a constant
        w = jax.nn.softmax(logw)
        u = path.d_alpha(t) * x1 + path.d_sigma(t) * x0
        mc = w @ u
        se = jnp.sqrt(w @ (u - mc) ** 2 / (1.0 / jnp.sum(w ** 2)))  # effective sample size
        exact = analytic.mixture_velocity(path, mix, x[None], t)[0]
        assert np.all(np.abs(mc - exact) < 4 * se + 1e-6), (mc, exact, se)


@pytest.mark.slow
def test_ode_samples_match_the_closed_form_gaussian_flow_map(x64):
    mean = jnp.array([1.0, -2.0, 0.5])
    b = jnp.array([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.1, 0.0, 0.2]])
    cov = b @ b.T
    target = analytic.GaussianMixture.gaussian(mean, cov)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 3))
    # VP's sigma-dot ~ (1 - t)^(-1/2) is evaluated at t <= 1 - EDGE, which moves the end
    # point by ~5e-6; elsewhere the solve matches the map to ~1e-9.
    for path, tol in ((paths.RectifiedFlow(), 1e-7), (paths.Cosine(), 1e-7), (paths.VP(), 2e-5)):
        start = analytic.gaussian_flow_map(path, mean, cov, x0, 0.0)  # VP: alpha(0) > 0
        sol = sample.solve_ode(lambda x, t: analytic.mixture_velocity(path, target, x, t),  # noqa: B023
                               start, adaptive=sample.Adaptive(1e-10, 1e-10),
                               save_trajectory=True, num_save=5)
        for i, t in enumerate(sol.ts):
            np.testing.assert_allclose(sol.trajectory[i],
                                       analytic.gaussian_flow_map(path, mean, cov, x0, t),
                                       rtol=0, atol=tol)


@pytest.mark.slow
def test_empirical_measure_is_finite_at_the_ends(x64):
    data = jax.random.normal(jax.random.PRNGKey(0), (50, 2))
    emp = analytic.GaussianMixture.empirical(data)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    for t in (0.0, 1e-7, 0.5, 1 - 1e-7, 1.0):
        for f in (analytic.mixture_velocity, analytic.mixture_score, analytic.mixture_log_prob):
            assert np.all(np.isfinite(f(paths.RectifiedFlow(), emp, x, t)))
    # Away from t = 1 the velocity points at the posterior mean of the data points.
    v = analytic.mixture_velocity(paths.RectifiedFlow(), emp, data[:1] * 0.5, 0.5)
    assert np.all(np.isfinite(v))
