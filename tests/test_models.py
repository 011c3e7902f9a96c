"""The MLP velocity field: shapes, time embedding, class conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import models


def test_sinusoidal_embedding_values():
    emb = models.sinusoidal_embedding(jnp.array([0.0, 0.5]), 8, scale=1.0)
    assert emb.shape == (2, 8)
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)
    freqs = np.exp(-np.log(10_000.0) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[1, :4], np.cos(0.5 * freqs), rtol=1e-6)
    with pytest.raises(ValueError, match="`dim` must be even"):
        models.sinusoidal_embedding(jnp.zeros(2), 7)


def test_mlp_shapes_time_and_classes():
    module = models.MLP(hidden=(16, 16), time_dim=8, num_classes=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 3))  # any trailing shape
    t = jnp.full((4,), 0.3)
    params = module.init(jax.random.PRNGKey(1), x, t, jnp.zeros((4,), jnp.int32))["params"]
    # The last layer starts at zero (the field starts at v = 0); perturb it to see the inputs.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                          params)
    apply_fn = models.model_fn(module)
    out = apply_fn(params, x, t, jnp.array([0, 1, 2, 3]))
    assert out.shape == x.shape
    same_x = jnp.broadcast_to(x[:1], x.shape)
    by_class = apply_fn(params, same_x, t, jnp.array([0, 1, 2, 3]))
    assert not np.allclose(by_class[0], by_class[1])
    # No label means the "null" class index num_classes.
    np.testing.assert_allclose(apply_fn(params, same_x, t, None)[0], by_class[3], rtol=1e-6)
    by_time = apply_fn(params, same_x, jnp.array([0.0, 0.5, 1.0, 0.3]), None)
    assert not np.allclose(by_time[0], by_time[1])


def test_fresh_mlp_outputs_zero():
    module = models.MLP(hidden=(8,))
    x = jnp.ones((2, 2))
    params = module.init(jax.random.PRNGKey(0), x, jnp.zeros(2))["params"]
    np.testing.assert_array_equal(module.apply({"params": params}, x, jnp.zeros(2)), 0.0)
