"""No recompilation: train steps and samplers trace once per shape, also across a checkpoint restore.

A retrace (a new dtype, weak type, sharding or pytree structure sneaking into
the state) silently costs a full XLA compile per call. Each test counts the
Python traces of the function the library jits (a counter in the model or loss
runs only while tracing) and the entries of the jit cache.
"""

import functools
import os
import subprocess
import sys

import diffrax
import jax
import jax.numpy as jnp
import optax
import pytest

from flowjax import losses, models, paths, sample, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _counting_loss():
    module = models.MLP(hidden=(16,), time_dim=8)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    traces = []
    loss = functools.partial(losses.cfm_loss, apply_fn=models.model_fn(module),
                             path=paths.RectifiedFlow())

    def counted(params, key, batch):
        traces.append(1)
        return loss(params, key, batch)

    return params, counted, traces


@pytest.mark.parametrize("fused", [False, True], ids=["step", "multi_step"])
@pytest.mark.parametrize("sharded", [False, True], ids=["one_device", "fsdp_8"])
def test_train_step_traces_once_across_calls_and_a_restore(tmp_path, fused, sharded):
    params, loss, traces = _counting_loss()
    opt = optax.adam(1e-3)
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    lead = (3,) if fused else ()
    kwargs = {}
    if sharded:
        mesh = train.make_mesh()
        shardings = train.state_shardings(state, mesh, train.FSDP(min_size=16))
        state = train.shard(state, shardings)
        kwargs = dict(state_sharding=shardings,
                      batch_sharding=train.batch_sharding(mesh, leading=len(lead)))
    make = train.make_multi_step if fused else train.make_train_step
    step = make(loss, opt, **kwargs)

    def batch(i):
        return {"x1": jax.random.normal(jax.random.PRNGKey(10 + i), lead + (16, 2))}

    for i in range(3):
        state, _ = step(state, batch(i))
    with train.Checkpointer(str(tmp_path / "ckpt"), save_every=1, async_save=False) as ckpt:
        ckpt.save(int(state.step), state, pipeline={"i": 3})
        fresh = train.create_train_state(jax.random.PRNGKey(1), params, opt)
        if sharded:
            fresh = train.shard(fresh, shardings)
        state = ckpt.restore(fresh).state
    for i in range(3, 5):
        state, metrics = step(state, batch(i))
    jax.block_until_ready(metrics)
    assert int(state.step) == 5 * (3 if fused else 1)
    assert len(traces) == 1, f"the loss was traced {len(traces)} times"
    assert step._cache_size() == 1


@pytest.mark.parametrize("solver,kwargs", [(diffrax.Euler(), {"num_steps": 4}),
                                           (diffrax.Dopri5(), {"rtol": 1e-3, "atol": 1e-3})],
                         ids=["euler", "dopri5"])
def test_solve_ode_traces_once_for_new_params_and_sources(solver, kwargs):
    traces = []

    def velocity(x, t, args):
        traces.append(1)
        scale, _ = args
        return -scale * x * t[:, None]

    after_first = None
    for i in range(4):
        x0 = jax.random.normal(jax.random.PRNGKey(i), (8, 2))
        out = sample.solve_ode(velocity, x0, (jnp.float32(0.5 + i), None), solver=solver,
                               **kwargs)
        expected = x0 * jnp.exp(-(0.5 + i) / 2)  # dx/dt = -s t x
        assert jnp.allclose(out.samples, expected, atol=0.2 if "num_steps" in kwargs else 2e-3)
        # diffrax traces the field a few times while building the solve (once per use
        # site), all in the first call; new params and sources of the same shape add none.
        after_first = len(traces) if after_first is None else after_first
        assert len(traces) == after_first


_CACHE_PROBE = """
import sys
import jax, jax.numpy as jnp
from experiments._cli import enable_compilation_cache
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("/cache_hits") else None)
enable_compilation_cache(sys.argv[1])
step = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))
print(float(step(jnp.ones((32, 32))).sum()), len(hits))
"""


def test_experiments_reuse_compiled_programs_across_processes(tmp_path):
    """The CLI's persistent compilation cache: a second process loads instead of compiling."""
    cache = tmp_path / "xla"
    env = {**os.environ, "XLA_FLAGS": ""}
    runs = [subprocess.run([sys.executable, "-c", _CACHE_PROBE, str(cache)], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert runs[0][0] == runs[1][0]  # the same result
    assert int(runs[0][1]) == 0 and int(runs[1][1]) >= 1  # cold, then served from the cache
    assert any(cache.iterdir())
