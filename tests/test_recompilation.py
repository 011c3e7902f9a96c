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
import numpy as np
import pytest

from flowjax import losses, models, paths, sample, train
from flowjax import time as ftime

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


@pytest.mark.fast_cases(1)
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


# --------------------------------------------------------------------------
# Samplers: 10 calls with new parameters, a new guidance scale and a freshly built
# field of the same structure trace the model once.
# --------------------------------------------------------------------------

PATH = paths.RectifiedFlow()
CALLS = 10


class Counted:
    """Model functions whose Python bodies count their traces (they run only when traced)."""

    def __init__(self):
        self.traces = {"velocity": 0, "flow_map": 0, "classifier": 0}

    def velocity(self, params, x, t, cond):
        self.traces["velocity"] += 1
        out = -params["w"] * x * t[:, None] + params["b"]
        return out if cond is None else out + 0.1 * cond[:, None]

    def flow_map(self, params, x, r, t, cond):
        self.traces["flow_map"] += 1
        return -params["w"] * x * (t - r)[:, None] + params["b"]

    def classifier(self, params, x, t):
        self.traces["classifier"] += 1
        return jnp.stack([x[:, 0], -x[:, 0]], -1) * params["w"]


def _params(i):
    return {"w": jnp.float32(0.5 + 0.1 * i), "b": jnp.full((2,), 0.01 * i, jnp.float32)}


def _x(i, n=8):
    return jax.random.normal(jax.random.PRNGKey(i), (n, 2))


LABELS = jnp.arange(8) % 2


def _run(model, name, i):
    """One call of the sampler `name`, with everything built afresh from `i`."""
    p, x = _params(i), _x(i)
    velocity = sample.ModelVelocity(model.velocity, p)
    if name == "solve_ode_fixed":
        return sample.solve_ode(velocity, x, solver=diffrax.Heun(), num_steps=4)
    if name == "solve_ode_adaptive":
        return sample.solve_ode(velocity, x, adaptive=sample.Adaptive(1e-3, 1e-3))
    if name == "solve_sde":
        return sample.solve_sde(velocity, x, key=jax.random.PRNGKey(100 + i), path=PATH,
                                diffusion=sample.ConstantDiffusion(0.5 + 0.1 * i), num_steps=4)
    if name == "log_likelihood":
        return sample.log_likelihood(velocity, x, adaptive=sample.Adaptive(1e-3, 1e-3))
    if name == "log_likelihood_hutchinson":
        return sample.log_likelihood(velocity, x, key=jax.random.PRNGKey(i), num_probes=2,
                                     solver=diffrax.Euler(), num_steps=4)
    if name == "dpm_solver_2m":
        return sample.solve_ode(velocity, x, solver=sample.DPMSolver2M(PATH), num_steps=4)
    if name == "edm_heun":
        return sample.solve_ode(velocity, x, solver=sample.EDMHeun(PATH),
                                ts=ftime.edm_grid(4, PATH))
    if name == "solve_flow_map":
        return sample.solve_flow_map(sample.ModelFlowMap(model.flow_map, p), x, num_steps=2)
    if name == "reflow_pairs":
        return sample.reflow_pairs(velocity, x, solver=diffrax.Euler(), num_steps=3)
    if name == "classifier_free_guidance":
        field = sample.ClassifierFreeGuidance(model.velocity, p, LABELS.astype(jnp.float32),
                                              null_cond=2.0, guidance_scale=1.0 + 0.5 * i)
        return sample.solve_ode(field, x, solver=diffrax.Euler(), num_steps=4)
    if name == "classifier_guidance":
        field = sample.ClassifierGuidance(velocity, model.classifier, _params(2 * i), LABELS,
                                          PATH, guidance_scale=1.0 + 0.5 * i,
                                          interval=(0.1, 1.0))
        return sample.solve_ode(field, x, solver=diffrax.Euler(), num_steps=4)
    raise AssertionError(name)


SAMPLERS = ["solve_ode_fixed", "solve_ode_adaptive", "solve_sde", "log_likelihood",
            "log_likelihood_hutchinson", "dpm_solver_2m", "edm_heun", "solve_flow_map",
            "reflow_pairs", "classifier_free_guidance", "classifier_guidance"]


@pytest.mark.fast_cases(4)
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_traces_the_model_once_over_ten_calls(name):
    model = Counted()
    outs = [_run(model, name, i) for i in range(CALLS)]
    jax.block_until_ready(outs)
    used = {"solve_flow_map": ["flow_map"],
            "classifier_guidance": ["velocity", "classifier"]}.get(name, ["velocity"])
    for kind in used:
        assert model.traces[kind] == 1, (kind, model.traces)
    # The calls did see their new parameters and sources.
    assert not np.allclose(outs[0].samples, outs[1].samples)
    assert all(isinstance(o, sample.Solution) and o.stats["nfe"].dtype == jnp.int32
               for o in outs)


def test_a_new_guidance_scale_changes_the_samples_without_a_new_trace():
    model = Counted()
    x = _x(0)
    outs = [sample.solve_ode(sample.ClassifierFreeGuidance(
        model.velocity, _params(0), LABELS.astype(jnp.float32), null_cond=2.0,
        guidance_scale=w), x, solver=diffrax.Euler(), num_steps=4).samples for w in (0.0, 3.0)]
    assert model.traces["velocity"] == 1
    assert not np.allclose(outs[0], outs[1])


def test_fixed_step_solve_ode_inside_a_users_jit_traces_once():
    model = Counted()

    @jax.jit
    def run(params, x):
        field = sample.ModelVelocity(model.velocity, params)
        return sample.solve_ode(field, x, solver=sample.RK4(), num_steps=8).samples

    for i in range(CALLS):
        jax.block_until_ready(run(_params(i), _x(i)))
    assert model.traces["velocity"] == 1


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


@pytest.mark.slow
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
