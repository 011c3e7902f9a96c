"""Models of Flax linen, Flax NNX and equinox, end to end: OT-CFM training through
flowjax.train, sampling, checkpoint and bit-identical restore; the adapters' equality."""

import functools

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flowjax import couplings, data, losses, models, paths, sample, train


class LinenVelocity(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x, t):
        h = jnp.concatenate([x, t[:, None]], -1)
        h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(x.shape[-1])(nn.silu(nn.Dense(self.width)(h)))


class NNXVelocity(nnx.Module):
    def __init__(self, width, rngs):
        self.l1 = nnx.Linear(3, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.l3 = nnx.Linear(width, 2, rngs=rngs)

    def __call__(self, x, t):
        h = jnp.concatenate([x, t[:, None]], -1)
        return self.l3(nnx.silu(self.l2(nnx.silu(self.l1(h)))))


class EqxVelocity(eqx.Module):
    """One sample at a time, the equinox convention: x [2], t []."""

    mlp: eqx.nn.MLP

    def __init__(self, width, key):
        self.mlp = eqx.nn.MLP(3, 2, width, 2, activation=jax.nn.silu, key=key)

    def __call__(self, x, t):
        return self.mlp(jnp.concatenate([x, t[None]]))


def _linen(seed=0):
    module = LinenVelocity()
    variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2)), jnp.zeros((1,)))
    return models.from_linen(module, variables)


def _nnx(seed=0):
    return models.from_nnx(NNXVelocity(16, nnx.Rngs(seed)))


def _eqx(seed=0):
    return models.from_equinox(EqxVelocity(16, jax.random.PRNGKey(seed)))


BUILDERS = {"linen": _linen, "nnx": _nnx, "equinox": _eqx}


def _assert_bit_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # the NNX and equinox tutorial trains and samples both in the fast suite
@pytest.mark.parametrize("framework", list(BUILDERS))
def test_otcfm_train_sample_checkpoint_restore(framework, tmp_path):
    apply_fn, params = BUILDERS[framework]()
    loss = functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=paths.RectifiedFlow(),
                             coupling=couplings.ExactOT())
    opt = optax.adam(3e-3)
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    step = train.make_train_step(loss, opt, ema_decay=0.9)
    first = None
    for i in range(20):
        x1 = data.moons(jax.random.PRNGKey(100 + i), 64)
        state, m = step(state, {"x1": x1})
        first = float(m["loss"]) if first is None else first
    assert int(state.step) == 20 and float(m["loss"]) < first  # it trains

    x0 = jax.random.normal(jax.random.PRNGKey(5), (32, 2))
    out = sample.solve_ode(sample.ModelVelocity(apply_fn, state.ema_params), x0,
                           solver=sample.RK4(), num_steps=4)
    assert out.samples.shape == x0.shape and np.all(np.isfinite(out.samples))
    # The same field straight from the model: apply_fn is the library's model function.
    direct = apply_fn(state.ema_params, x0, jnp.full((32,), 0.5))
    assert direct.shape == x0.shape

    with train.Checkpointer(str(tmp_path), save_every=10, async_save=False) as ckpt:
        assert ckpt.save(int(state.step), state)
    fresh = train.create_train_state(jax.random.PRNGKey(1), BUILDERS[framework](seed=7)[1], opt)
    with train.Checkpointer(str(tmp_path), save_every=10) as ckpt:
        restored = ckpt.restore(fresh)
    assert restored.step == 20
    _assert_bit_identical(restored.state, state)
    # The restored params plug into the same apply_fn, and sample the same.
    again = sample.solve_ode(sample.ModelVelocity(apply_fn, restored.state.ema_params), x0,
                             solver=sample.RK4(), num_steps=4)
    np.testing.assert_array_equal(again.samples, out.samples)


@pytest.mark.parametrize("framework", list(BUILDERS))
def test_adapter_equal_and_hashed_alike_when_rebuilt(framework):
    """Rebuilt from models of the same structure (other weights), apply_fn is equal: a jitted
    function taking it as a static argument compiles once."""
    (fn_a, params_a), (fn_b, params_b) = BUILDERS[framework](0), BUILDERS[framework](1)
    assert fn_a == fn_b and hash(fn_a) == hash(fn_b)
    assert fn_a is not fn_b
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def apply(fn, params, x, t):
        traces.append(1)
        return fn(params, x, t)

    x, t = jnp.ones((4, 2)), jnp.full((4,), 0.3)
    for fn, params in ((fn_a, params_a), (fn_b, params_b), BUILDERS[framework](2)):
        apply(fn, params, x, t)
    assert len(traces) == 1
    # A different structure is a different function.
    if framework == "linen":
        other = models.from_linen(LinenVelocity(width=8), {})[0]
    elif framework == "nnx":
        other = models.from_nnx(NNXVelocity(8, nnx.Rngs(0)))[0]
    else:
        other = models.from_equinox(EqxVelocity(8, jax.random.PRNGKey(0)))[0]
    assert other != fn_a


def test_flowjax_model_functions_are_equal_when_rebuilt():
    module = models.MLP(hidden=(8,), time_dim=4)
    assert models.model_fn(module) == models.model_fn(models.MLP(hidden=(8,), time_dim=4))
    assert models.model_fn(module) != models.model_fn(models.MLP(hidden=(9,), time_dim=4))
    two = models.MLP(hidden=(8,), time_dim=4, two_times=True)
    assert hash(models.average_model_fn(two)) == hash(models.average_model_fn(two))


def test_two_time_models_and_conditions():
    """Flow maps take (x, r, t); a condition is passed on only when given."""

    class FlowMap(eqx.Module):
        w: jax.Array

        def __call__(self, x, r, t, cond=None):
            out = self.w * x + (t - r)
            return out if cond is None else out + cond

    apply_fn, params = models.from_equinox(FlowMap(jnp.array(2.0)), flow_map=True)
    x, r, t = jnp.ones((3, 2)), jnp.zeros(3), jnp.full(3, 0.5)
    np.testing.assert_allclose(apply_fn(params, x, r, t), 2.5)
    np.testing.assert_allclose(apply_fn(params, x, r, t, jnp.ones((3, 2))), 3.5)
    np.testing.assert_allclose(apply_fn(params, x, r, t, cond=jnp.ones((3, 2))), 3.5)
    with pytest.raises(TypeError, match=r"takes \(params, x, r, t, cond=None, key=None\)"):
        apply_fn(params, x, t)


def test_keys_reach_the_model():
    class Noisy(eqx.Module):
        w: jax.Array

        def __call__(self, x, t, *, key=None):
            return self.w * x + (0 if key is None else jax.random.normal(key, x.shape))

    apply_fn, params = models.from_equinox(Noisy(jnp.array(1.0)))
    x, t = jnp.zeros((4, 2)), jnp.zeros(4)
    np.testing.assert_array_equal(apply_fn(params, x, t), 0.0)
    noisy = apply_fn(params, x, t, key=jax.random.PRNGKey(0))
    assert not np.allclose(noisy[0], noisy[1])  # one key per sample


def test_adapter_errors_name_the_argument():
    mlp = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match=r"`params` must be a pytree of floating arrays, but the "
                                        r"leaf at params\.activation is .*from_equinox"):
        train.create_train_state(jax.random.PRNGKey(0), mlp, optax.adam(1e-3))
    with pytest.raises(TypeError, match=r"`module` must be a flax.linen.Module instance, got "
                                        r"the class LinenVelocity itself"):
        models.from_linen(LinenVelocity, {})
    with pytest.raises(TypeError, match="`model` must be an equinox.Module instance"):
        models.from_equinox(lambda x, t: x)
    with pytest.raises(TypeError, match="`model` must be a flax.nnx.Module instance"):
        models.from_nnx(mlp)
    with pytest.raises(ValueError, match="variable collections \\['batch_stats'\\]"):
        models.from_linen(LinenVelocity(), {"params": {}, "batch_stats": {}})

    class WithRngs(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
            self.drop = nnx.Dropout(0.1, rngs=nnx.Rngs(1))

    with pytest.raises(ValueError, match="`model` holds state other than nnx.Param"):
        models.from_nnx(WithRngs())

    class WithInts(eqx.Module):
        w: jax.Array
        index: jax.Array

    with pytest.raises(TypeError, match=r"`model` holds non-floating arrays \(at \['\.index'\]"):
        models.from_equinox(WithInts(jnp.ones(2), jnp.arange(2)))
