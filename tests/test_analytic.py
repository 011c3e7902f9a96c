"""Exact Gaussian-mixture fields: score = grad log p, velocity <-> score, SciPy densities, transport."""

import diffrax
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


def test_exact_velocity_transports_noise_to_the_mixture(x64):
    mix, path, n = _mixture(), paths.RectifiedFlow(), 1000
    x0 = jax.random.normal(jax.random.PRNGKey(2), (n, 2))
    sol = sample.solve_ode(lambda x, t, m: analytic.mixture_velocity(path, m, x, t), x0, mix,
                           solver=diffrax.Dopri5(), rtol=1e-7, atol=1e-7)
    ref_a, ref_b = mix.sample(jax.random.PRNGKey(3), n), mix.sample(jax.random.PRNGKey(4), n)
    floor = metrics.w2(ref_a, ref_b)
    assert metrics.w2(sol.samples, ref_a) < 1.25 * floor


def test_bad_mixture():
    with pytest.raises(ValueError, match="`covs` must have shape"):
        analytic.GaussianMixture.create(jnp.zeros((2, 2)), jnp.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="`weights` must have shape"):
        analytic.GaussianMixture.create(jnp.zeros((2, 2)), jnp.ones((2, 2, 2)), jnp.ones(3))
