"""Log-likelihood through the divergence ODE against closed forms; Hutchinson is unbiased."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import analytic, paths, sample

PATH = paths.RectifiedFlow()


def _exact(target, x, t):
    return analytic.mixture_velocity(PATH, target, x, t)


def _field(target):
    """The exact velocity of `target` as a pytree field (the mixture is a leaf)."""
    return jax.tree_util.Partial(_exact, target)


def _gaussian(d, seed):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(d, d)) * 0.5
    return analytic.GaussianMixture.gaussian(jnp.asarray(rng.normal(size=d)),
                                             jnp.asarray(b @ b.T + 0.1 * np.eye(d)))


def _mixture2d():
    return analytic.GaussianMixture.create(
        jnp.array([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]]),
        jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]],
                   [[0.1, 0.0], [0.0, 0.1]]]), jnp.array([0.5, 0.3, 0.2]))


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("name", ["gauss2", "gauss16", "mixture2"])
def test_exact_trace_matches_closed_form(x64, name):
    with jax.enable_x64(False):  # the targets in float32, built when the case runs
        target = {"gauss2": lambda: _gaussian(2, 2), "gauss16": lambda: _gaussian(16, 16),
                  "mixture2": _mixture2d}[name]()
    x = target.sample(jax.random.PRNGKey(0), 16)
    sol = sample.log_likelihood(_field(target), x, adaptive=sample.Adaptive(1e-9, 1e-9))
    logp, nfe = sol.log_prob, sol.nfe
    np.testing.assert_array_equal(sol.samples, x)
    exact = analytic.mixture_log_prob(PATH, target, x, 1.0)
    np.testing.assert_allclose(logp, exact, atol=1e-3)
    assert float(jnp.max(jnp.abs(logp - exact))) < 1e-5  # what we see: ~2e-7
    assert int(nfe) > 0


@pytest.mark.slow
def test_hutchinson_is_unbiased_within_three_standard_errors(x64):
    target = _gaussian(16, 16)
    x = target.sample(jax.random.PRNGKey(0), 4)
    exact = analytic.mixture_log_prob(PATH, target, x, 1.0)
    est = jax.jit(lambda k: sample.log_likelihood(_field(target), x, key=k,
                                                  num_probes=1).log_prob)
    reps = jax.vmap(est)(jax.random.split(jax.random.PRNGKey(0), 200))
    se = reps.std(0) / math.sqrt(reps.shape[0])
    assert np.all(np.abs(reps.mean(0) - exact) < 3 * se), (reps.mean(0), exact, se)
    # More probes per solve reduce the variance (Rademacher and Gaussian alike).
    for probe in sample.Probe:
        many = jax.vmap(lambda k: sample.log_likelihood(  # noqa: B023 (used at once)
            _field(target), x, key=k, num_probes=16, probe=probe).log_prob)(
            jax.random.split(jax.random.PRNGKey(1), 8))
        assert float(many.std(0).mean()) < 0.5 * float(reps.std(0).mean())


def test_fixed_step_likelihood(x64):
    target = _gaussian(2, 3)
    x = target.sample(jax.random.PRNGKey(1), 8)
    sol = sample.log_likelihood(_field(target), x, solver=sample.RK4(), num_steps=100)
    logp, nfe = sol.log_prob, sol.nfe
    np.testing.assert_allclose(logp, analytic.mixture_log_prob(PATH, target, x, 1.0), atol=1e-4)
    assert int(nfe) == 400


@pytest.mark.slow
def test_source_density_is_pluggable(x64):
    """VP starts from N(alpha(0) mu, ...), not N(0, I): pass the true source density."""
    target, path = _gaussian(2, 3), paths.VP()
    x = target.sample(jax.random.PRNGKey(1), 8)
    logp = sample.log_likelihood(
        lambda y, t: analytic.mixture_velocity(path, target, y, t), x,
        source_log_prob=lambda y: analytic.mixture_log_prob(path, target, y, 0.0),
        adaptive=sample.Adaptive(1e-9, 1e-9)).log_prob
    np.testing.assert_allclose(logp, analytic.mixture_log_prob(path, target, x, 1.0), atol=1e-3)


def test_bits_per_dim():
    # A uniform density on [-1, 1]^D, quantized to 256 bins, is exactly 8 bits per dimension.
    d = 12
    assert float(sample.bits_per_dim(jnp.array(-d * math.log(2.0)), (3, 2, 2))) == \
        pytest.approx(8.0)
    assert float(sample.standard_normal_log_prob(jnp.zeros((1, 3, 2)))[0]) == \
        pytest.approx(-3 * math.log(2 * math.pi))


def test_bad_inputs():
    x = jnp.ones((4, 2))
    field = _field(_mixture2d())
    with pytest.raises(ValueError, match="`key` is needed"):
        sample.log_likelihood(field, x, num_probes=2)
    with pytest.raises(ValueError, match="`num_probes`"):
        sample.log_likelihood(field, x, key=jax.random.PRNGKey(0), num_probes=0)
    with pytest.raises(RuntimeError, match="`x1` contains non-finite"):
        sample.log_likelihood(field, x.at[0, 0].set(jnp.nan))
    with pytest.raises(RuntimeError, match="`ts` must run between 0 and 1"):
        sample.log_likelihood(field, x, solver=sample.RK4(), ts=jnp.array([0.0, 0.5]))
    with pytest.raises(TypeError, match="`field` must be called as field"):
        sample.log_likelihood(lambda x, t, args: x, x)


@pytest.mark.slow
def test_a_grid_in_either_order_is_walked_from_one_to_zero(x64):
    target = _gaussian(2, 3)
    x = target.sample(jax.random.PRNGKey(1), 8)
    grid = jnp.linspace(0.0, 1.0, 41)
    up, down = (sample.log_likelihood(_field(target), x, solver=sample.RK4(), ts=g).log_prob
                for g in (grid, grid[::-1]))
    np.testing.assert_allclose(up, down, rtol=1e-12)
    np.testing.assert_allclose(up, analytic.mixture_log_prob(PATH, target, x, 1.0), atol=1e-4)
