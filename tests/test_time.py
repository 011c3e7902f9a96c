"""Time samplers match their densities (KS tests against SciPy); the SD3 shift in our time."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from flowjax import time as ftime

N = 20_000


def _draw(sampler, seed=0):
    return np.asarray(jax.jit(lambda k: sampler(k, (N,)))(jax.random.PRNGKey(seed)), np.float64)


def _mode_cdf(scale):
    def g(u):
        return u + scale * (math.cos(0.5 * math.pi * u) ** 2 - 1.0 + u)

    def cdf(t):
        t = np.atleast_1d(t)
        out = [0.0 if ti <= 0 else 1.0 if ti >= 1 else
               optimize.brentq(lambda u: g(u) - ti, 0.0, 1.0, xtol=1e-12) for ti in t]
        return np.array(out)

    return cdf


@pytest.mark.fast_cases(3)
@pytest.mark.parametrize("name, sampler, cdf", [
    ("uniform", ftime.Uniform(), stats.uniform().cdf),
    ("logit_normal(0,1)", ftime.LogitNormal(0.0, 1.0),
     lambda t: stats.norm(0.0, 1.0).cdf(np.log(t) - np.log1p(-t))),
    ("logit_normal(0.5,0.7)", ftime.LogitNormal(0.5, 0.7),
     lambda t: stats.norm(0.5, 0.7).cdf(np.log(t) - np.log1p(-t))),
    ("beta(2,5)", ftime.Beta(2.0, 5.0), stats.beta(2.0, 5.0).cdf),
    ("mode(1.29)", ftime.Mode(1.29), _mode_cdf(1.29)),
    ("mode(-0.5)", ftime.Mode(-0.5), _mode_cdf(-0.5)),
])
def test_sampler_matches_density(name, sampler, cdf):
    t = _draw(sampler)
    assert t.min() >= 0.0 and t.max() <= 1.0
    res = stats.kstest(t, cdf)
    assert res.pvalue > 1e-3, (name, res)


def test_ks_test_has_power():
    """The same test rejects a wrong density (so the tests above can fail)."""
    t = _draw(ftime.LogitNormal(0.5, 0.7))
    assert stats.kstest(t, lambda s: stats.norm(0.0, 1.0).cdf(np.log(s) - np.log1p(-s))).pvalue < 1e-6


def test_shift_matches_sd3_in_flipped_time(x64):
    t = jnp.linspace(0.0, 1.0, 101)
    for s in (0.5, 1.0, 3.0):
        tau = 1.0 - t
        sd3 = s * tau / (1.0 + (s - 1.0) * tau)  # SD3 Eq. 23 in their time
        np.testing.assert_allclose(ftime.shift_time(t, s), 1.0 - sd3, atol=1e-12)
    assert float(ftime.shift_time(0.5, 3.0)) == pytest.approx(0.25)


def test_shifted_sampler_density():
    """If t ~ U, the shifted t has CDF F(x) = inverse shift: x s / (1 + (s-1) x)."""
    s = 3.0
    t = _draw(ftime.Shifted(ftime.Uniform(), s))
    res = stats.kstest(t, lambda x: s * x / (1.0 + (s - 1.0) * x))
    assert res.pvalue > 1e-3


def test_bad_parameters():
    with pytest.raises(ValueError, match="`std`"):
        ftime.LogitNormal(0.0, -1.0)
    with pytest.raises(ValueError, match="`s` must be <="):
        ftime.Mode(3.0)
    with pytest.raises(ValueError, match="`a`"):
        ftime.Beta(0.0, 1.0)
    with pytest.raises(ValueError, match="`shift`"):
        ftime.shift_time(0.5, 0.0)
    with pytest.raises((ValueError, RuntimeError), match="`t` must lie in"):
        ftime.shift_time(jnp.array([0.5, 1.2]), 2.0)


def test_grids(x64):
    from flowjax import paths

    np.testing.assert_allclose(ftime.uniform_grid(4), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(ftime.shifted_grid(4, 3.0), ftime.shift_time(
        ftime.uniform_grid(4), 3.0))
    rf = paths.RectifiedFlow()
    sig = jnp.array([80.0, 1.0, 0.002])
    np.testing.assert_allclose(ftime.time_of_noise_ratio(rf, sig), 1.0 / (1.0 + sig), rtol=1e-12)
    for path in (rf, paths.Cosine(), paths.VP()):
        grid = ftime.edm_grid(10, path)
        assert grid.shape == (11,) and grid[0] == 0.0 and grid[-1] == 1.0
        assert np.all(np.diff(grid) > 0)
        # Interior points hit EDM's sigmas: sigma_1 of the rho = 7 schedule, and sigma_min.
        ratio = path.sigma_total(grid[1:-1]) / path.alpha(grid[1:-1])
        i = np.arange(10) / 9
        sig = (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        np.testing.assert_allclose(ratio, sig[1:], rtol=1e-9)
    with pytest.raises(ValueError, match="`num_steps`"):
        ftime.uniform_grid(0)


def test_edm_sigmas_endpoints_and_rho_spacing(x64):
    sig = ftime.edm_sigmas(18)
    assert sig.shape == (19,) and float(sig[-1]) == 0.0
    np.testing.assert_allclose([sig[0], sig[-2]], [80.0, 0.002], rtol=1e-12)
    step = (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 17  # equally spaced in sigma^(1/rho)
    np.testing.assert_allclose(np.diff(sig[:-1] ** (1 / 7)), step, rtol=1e-10)
    np.testing.assert_allclose(ftime.edm_sigmas(1, sigma_max=10.0), [10.0, 0.0])
    np.testing.assert_allclose(ftime.edm_sigmas(3, rho=1.0), [80.0, 40.001, 0.002, 0.0])
    from flowjax import paths

    grid = ftime.edm_grid(18, paths.RectifiedFlow())  # the same levels in rectified-flow time
    np.testing.assert_allclose(grid[1:-1], 1.0 / (1.0 + sig[1:-1]), rtol=1e-10)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ftime.edm_sigmas(4, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="`rho`"):
        ftime.edm_sigmas(4, rho=0.0)


@pytest.mark.slow
def test_edm_lognormal_gives_edms_noise_levels():
    """ln(sigma_bar(t) / alpha(t)) ~ N(-1.2, 1.2^2) on any path (KS test, and its power)."""
    from flowjax import paths

    for path in (paths.RectifiedFlow(), paths.VP()):
        t = _draw(ftime.EDMLogNormal(path))
        log_sigma = np.log(np.asarray(paths.noise_ratio(path, t), np.float64))
        assert stats.kstest(log_sigma, stats.norm(-1.2, 1.2).cdf).pvalue > 1e-3
        assert stats.kstest(log_sigma, stats.norm(-1.0, 1.2).cdf).pvalue < 1e-6
    with pytest.raises(ValueError, match="`p_std`"):
        ftime.EDMLogNormal(paths.VP(), p_std=0.0)


def test_samplers_are_pytrees_with_parameter_leaves():
    """Parameters are leaves: a jitted function taking the sampler compiles once for new values."""
    traces = []

    @jax.jit
    def draw(sampler, key):
        traces.append(1)
        return sampler(key, (8,))

    key = jax.random.PRNGKey(0)
    for loc in (0.0, 0.5, -1.0):
        t = draw(ftime.LogitNormal(loc, 0.7), key)
        np.testing.assert_allclose(t, ftime.LogitNormal(loc, 0.7)(key, (8,)), rtol=1e-6)
    assert len(traces) == 1
    assert jax.tree.leaves(ftime.Shifted(ftime.Beta(2.0, 3.0), 3.0)) == [2.0, 3.0, 3.0]
    r, t = ftime.OrderedPairs(ftime.Mode(1.0), 0.5)(key, (100,), jnp.bfloat16)
    assert ftime.OrderedPairs.pairs and not ftime.Uniform.pairs
    assert r.shape == t.shape == (100,) and r.dtype == jnp.bfloat16
    assert np.all(np.asarray(r, np.float32) <= np.asarray(t, np.float32))


def test_sampler_errors_name_the_argument():
    key = jax.random.PRNGKey(0)
    # The class called as if it were a sampler: (key, shape) land in its parameters.
    with pytest.raises(TypeError, match="`loc` must be a real number, got a PRNG key"):
        ftime.LogitNormal(key, (4,))
    with pytest.raises(TypeError, match="`s` must be a real number, got a PRNG key"):
        ftime.Mode(jax.random.key(0))
    with pytest.raises(TypeError, match="`sampler` must be a time sampler.*class Uniform"):
        ftime.Shifted(ftime.Uniform, 3.0)
    with pytest.raises(TypeError, match="`sampler` must be a time sampler.*string"):
        ftime.OrderedPairs("logit_normal")
    with pytest.raises(TypeError, match="`sampler` must draw single times"):
        ftime.Shifted(ftime.OrderedPairs(), 3.0)
    with pytest.raises(ValueError, match="`equal_fraction`"):
        ftime.OrderedPairs(equal_fraction=1.5)
    with pytest.raises(TypeError, match="`key` must be a PRNG key"):
        ftime.Uniform()("key", (4,))
    with pytest.raises(TypeError, match="`shape` must be a tuple of ints"):
        ftime.Uniform()(key, (4.0,))


def test_grids_make_no_host_copy_and_trace():
    """Grids and the noise-ratio inversion run on traced values without a host transfer."""
    from flowjax import paths

    rf = paths.RectifiedFlow()
    with jax.transfer_guard_device_to_host("disallow"):
        t = ftime.time_of_noise_ratio(rf, jnp.array([80.0, 1.0]))
        g = ftime.edm_sigmas(6, sigma_max=jnp.float32(10.0))
    np.testing.assert_allclose(t, [1 / 81, 0.5], rtol=1e-5)
    assert float(g[0]) == pytest.approx(10.0)
    grid = jax.jit(lambda s: ftime.shifted_grid(4, s))(3.0)
    np.testing.assert_allclose(grid, ftime.shift_time(ftime.uniform_grid(4), 3.0))
    with pytest.raises((ValueError, RuntimeError), match="`ratio` must be >= 0"):
        ftime.time_of_noise_ratio(rf, jnp.array([-1.0]))
