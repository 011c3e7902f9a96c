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


@pytest.mark.parametrize("name, sampler, cdf", [
    ("uniform", ftime.uniform(), stats.uniform().cdf),
    ("logit_normal(0,1)", ftime.logit_normal(0.0, 1.0),
     lambda t: stats.norm(0.0, 1.0).cdf(np.log(t) - np.log1p(-t))),
    ("logit_normal(0.5,0.7)", ftime.logit_normal(0.5, 0.7),
     lambda t: stats.norm(0.5, 0.7).cdf(np.log(t) - np.log1p(-t))),
    ("beta(2,5)", ftime.beta(2.0, 5.0), stats.beta(2.0, 5.0).cdf),
    ("mode(1.29)", ftime.mode(1.29), _mode_cdf(1.29)),
    ("mode(-0.5)", ftime.mode(-0.5), _mode_cdf(-0.5)),
])
def test_sampler_matches_density(name, sampler, cdf):
    t = _draw(sampler)
    assert t.min() >= 0.0 and t.max() <= 1.0
    res = stats.kstest(t, cdf)
    assert res.pvalue > 1e-3, (name, res)


def test_ks_test_has_power():
    """The same test rejects a wrong density (so the tests above can fail)."""
    t = _draw(ftime.logit_normal(0.5, 0.7))
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
    t = _draw(ftime.shifted(ftime.uniform(), s))
    res = stats.kstest(t, lambda x: s * x / (1.0 + (s - 1.0) * x))
    assert res.pvalue > 1e-3


def test_bad_parameters():
    with pytest.raises(ValueError, match="`scale`"):
        ftime.logit_normal(0.0, -1.0)
    with pytest.raises(ValueError, match="`scale`"):
        ftime.mode(3.0)
    with pytest.raises(ValueError, match="`a`"):
        ftime.beta(0.0, 1.0)
    with pytest.raises(ValueError, match="`shift`"):
        ftime.shift_time(0.5, 0.0)
    with pytest.raises(ValueError, match="`t` must lie in"):
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


def test_edm_lognormal_gives_edms_noise_levels():
    """ln(sigma_bar(t) / alpha(t)) ~ N(-1.2, 1.2^2) on any path (KS test, and its power)."""
    from flowjax import paths

    for path in (paths.RectifiedFlow(), paths.VP()):
        t = _draw(ftime.edm_lognormal(path))
        log_sigma = np.log(np.asarray(paths.noise_ratio(path, t), np.float64))
        assert stats.kstest(log_sigma, stats.norm(-1.2, 1.2).cdf).pvalue > 1e-3
        assert stats.kstest(log_sigma, stats.norm(-1.0, 1.2).cdf).pvalue < 1e-6
    with pytest.raises(ValueError, match="`p_std`"):
        ftime.edm_lognormal(paths.VP(), p_std=0.0)
