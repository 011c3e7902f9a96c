"""Paths: conditional velocity = d/dt interpolant, exact conversions, safe ends, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import paths
from flowjax.paths import Prediction

ALL_PATHS = [
    paths.RectifiedFlow(),
    paths.LipmanPath(sigma_min=0.01),
    paths.Cosine(),
    paths.VP(),
    paths.VE(sigma_min=0.01, sigma_max=50.0),
    paths.Polynomial(n=3.0),
    paths.Polynomial(n=0.5),
    paths.RectifiedFlow(noise=paths.ConstantNoise(0.1)),
    paths.RectifiedFlow(noise=paths.BridgeNoise(0.7)),
    paths.Cosine(noise=paths.BridgeNoise(0.3)),
    paths.VP(noise=paths.ConstantNoise(0.05)),
]
IDS = [f"{type(p).__name__}-{type(p.noise).__name__}" for p in ALL_PATHS]


def _batch(key, shape=(16, 3)):
    k0, k1, kz, kt = jax.random.split(key, 4)
    x0 = jax.random.normal(k0, shape)
    x1 = 2.0 + jax.random.normal(k1, shape)
    z = jax.random.normal(kz, shape)
    t = jax.random.uniform(kt, shape[:1], minval=0.02, maxval=0.98)
    return x0, x1, z, t


@pytest.mark.parametrize("path", ALL_PATHS, ids=IDS)
def test_velocity_is_time_derivative_of_interpolant(x64, path):
    x0, x1, z, t = _batch(jax.random.PRNGKey(0))
    z = z if path.noise is not None else None

    def interp(tt):
        return path.interpolate(x0, x1, tt, z)

    _, jvp = jax.jvp(interp, (t,), (jnp.ones_like(t),))
    v = jax.jit(lambda a, b, c, d: path.velocity(a, b, c, d))(x0, x1, t, z)
    np.testing.assert_allclose(v, jvp, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("path", ALL_PATHS, ids=IDS)
def test_schedule_derivatives_match_autodiff(x64, path):
    t = jnp.linspace(0.05, 0.95, 19)
    for f, df in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma),
                  (path.gamma, path.d_gamma), (path.sigma_total, path.d_sigma_total)):
        auto = jax.vmap(jax.grad(f))(t)
        np.testing.assert_allclose(df(t), auto, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("path", ALL_PATHS, ids=IDS)
def test_conversions_round_trip(x64, path):
    x0, x1, _, t = _batch(jax.random.PRNGKey(1))
    x_t = jax.random.normal(jax.random.PRNGKey(2), x0.shape) * 2.0
    value = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
    conv = jax.jit(paths.convert, static_argnames=("given", "to"))
    for a in Prediction:
        for b in Prediction:
            there = conv(path, x_t, t, value, given=a, to=b)
            back = conv(path, x_t, t, there, given=b, to=a)
            np.testing.assert_allclose(back, value, rtol=1e-6, atol=1e-6,
                                       err_msg=f"{a} -> {b} -> {a}")


@pytest.mark.parametrize("path", ALL_PATHS[:6], ids=IDS[:6])
def test_conversions_recover_conditional_quantities(x64, path):
    """With one (x0, x1) pair the posterior means are x0 and x1 themselves."""
    x0, x1, _, t = _batch(jax.random.PRNGKey(4))
    x_t = path.interpolate(x0, x1, t)
    v = path.velocity(x0, x1, t)
    conv = lambda val, g, to: paths.convert(path, x_t, t, val, given=g, to=to)  # noqa: E731
    np.testing.assert_allclose(conv(v, Prediction.VELOCITY, Prediction.DATA), x1, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(conv(v, Prediction.VELOCITY, Prediction.NOISE), x0, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(conv(x1, Prediction.DATA, Prediction.VELOCITY), v, rtol=1e-6,
                               atol=1e-6)
    # Score of the Gaussian source-conditioned marginal: -x0 / sigma.
    s = conv(x0, Prediction.NOISE, Prediction.SCORE)
    np.testing.assert_allclose(s, -x0 / path.sigma(t)[:, None], rtol=1e-6)


def test_endpoints_of_paths():
    """Source at t = 0, data at t = 1 (up to each path's documented offsets)."""
    x0, x1, _, _ = _batch(jax.random.PRNGKey(6))
    ones, zeros = jnp.ones(x0.shape[0]), jnp.zeros(x0.shape[0])
    for p in (paths.RectifiedFlow(), paths.Cosine(), paths.Polynomial(2.0),
              paths.LipmanPath(0.0)):
        np.testing.assert_allclose(p.interpolate(x0, x1, zeros), x0, atol=1e-6)
        np.testing.assert_allclose(p.interpolate(x0, x1, ones), x1, atol=1e-6)
    vp = paths.VP()
    assert float(vp.alpha(0.0)) == pytest.approx(np.exp(-0.5 * (0.1 + 0.5 * 19.9)), rel=1e-5)
    np.testing.assert_allclose(vp.interpolate(x0, x1, ones), x1, atol=1e-6)
    t = jnp.linspace(0, 1, 11)
    np.testing.assert_allclose(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, 1.0, rtol=1e-6)
    ve = paths.VE(0.01, 50.0)
    np.testing.assert_allclose(ve.sigma(jnp.array([0.0, 1.0])), [50.0, 0.01], rtol=1e-5)
    lip = paths.LipmanPath(0.1)
    np.testing.assert_allclose(lip.interpolate(x0, x1, ones), x1 + 0.1 * x0, rtol=1e-6)


def test_bridge_noise_variance():
    p = paths.RectifiedFlow(noise=paths.BridgeNoise(0.5))
    t = jnp.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(p.gamma(t), 0.5 * np.sqrt(t * (1 - t)), rtol=1e-6)


def test_bad_inputs_name_the_argument():
    p = paths.RectifiedFlow()
    x = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="`x0` and `x1`"):
        p.interpolate(x, jnp.ones((5, 2)), 0.5)
    with pytest.raises(ValueError, match="`t` must lie in"):
        p.interpolate(x, x, 1.5)
    with pytest.raises(ValueError, match="`t` must lie in"):
        p.velocity(x, x, jnp.array([0.1, -0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="`t` has 3 entries"):
        p.interpolate(x, x, jnp.ones(3) * 0.5)
    with pytest.raises(ValueError, match="`x0` must have rank"):
        p.interpolate(jnp.ones(()), jnp.ones(()), 0.5)
    with pytest.raises(TypeError, match="`x1` must have a floating dtype"):
        p.interpolate(x, jnp.ones((4, 2), jnp.int32), 0.5)
    with pytest.raises(ValueError, match="pass `z`"):
        paths.RectifiedFlow(noise=paths.BridgeNoise(1.0)).interpolate(x, x, 0.5)
    with pytest.raises(TypeError, match="`given`"):
        paths.convert(p, x, 0.5, x, given="velocity", to=Prediction.DATA)
    with pytest.raises(ValueError, match="`value` and `x_t`"):
        paths.convert(p, x, 0.5, jnp.ones((4, 3)), given=Prediction.DATA, to=Prediction.NOISE)
    with pytest.raises(ValueError, match="`n` must be a positive"):
        paths.Polynomial(n=-1.0)
