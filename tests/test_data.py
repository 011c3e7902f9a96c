"""Toy data: shapes, determinism, and the moments each distribution should have."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import data

SAMPLERS = [data.standard_normal, data.eight_gaussians, data.moons, data.circles,
            data.swissroll, data.scurve, data.two_spirals, data.checkerboard]


@pytest.mark.fast_cases(3)
@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_shape_finite_deterministic(sampler):
    a = jax.jit(sampler, static_argnums=1)(jax.random.PRNGKey(0), 1000)
    b = sampler(jax.random.PRNGKey(0), 1000)
    c = sampler(jax.random.PRNGKey(1), 1000)
    assert a.shape == (1000, 2) and np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # jit vs eager float32 trig
    assert not np.allclose(a, c)
    assert np.abs(np.asarray(a)).max() < 10.0


@pytest.mark.slow
def test_moments():
    key = jax.random.PRNGKey(0)
    g = np.asarray(data.eight_gaussians(key, 20_000))
    assert np.linalg.norm(g.mean(0)) < 0.1
    assert np.median(np.linalg.norm(g, axis=1)) == pytest.approx(5.0, abs=0.1)
    m = np.asarray(data.moons(key, 20_000))
    # sklearn moons: mean (0.5, 0.25), then times 3 minus 1.
    np.testing.assert_allclose(m.mean(0), [0.5, -0.25], atol=0.05)
    c = np.asarray(data.checkerboard(key, 20_000))
    assert c.min() >= -4.0 and c.max() <= 4.0
    # Alternate cells are empty: the cell [0, 2) x [0, 2) has mass, [2, 4) x [0, 2) none.
    assert np.any((c[:, 0] < 2) & (c[:, 0] > 0) & (c[:, 1] > 0) & (c[:, 1] < 2))
    assert not np.any((c[:, 0] > 2) & (c[:, 1] > 0) & (c[:, 1] < 2))


def test_from_array_draws_rows():
    arr = jnp.arange(20.0).reshape(10, 2)
    draws = np.asarray(data.from_array(arr)(jax.random.PRNGKey(0), 500))
    rows = {tuple(r) for r in np.asarray(arr)}
    assert {tuple(r) for r in draws} <= rows and len({tuple(r) for r in draws}) == 10


def test_bad_inputs():
    with pytest.raises(ValueError, match="`n` must be a positive int"):
        data.moons(jax.random.PRNGKey(0), 0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`data` contains non-finite"):
        data.from_array(jnp.array([[0.0, jnp.inf]]))
    with pytest.raises(ValueError, match="`data` has an empty batch"):
        data.from_array(jnp.zeros((0, 2)))
