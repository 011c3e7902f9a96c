"""Edges of time: every conversion, sampler and likelihood is finite at t = 0, 1e-7, 1 - 1e-7, 1.

All in float32, the precision of training. At the exact ends the
conversions are also the exact limits where the problem is well posed
(data and noise from a velocity at t = 0 and 1), autodiff through the
schedules is finite, and just inside the ends (1e-3 away) derivatives are
the closed-form ones: the guards act only at the end points.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import analytic, paths, sample
from flowjax import time as ftime
from flowjax.paths import Prediction

EDGE_TIMES = (0.0, 1e-7, 1e-3, 1.0 - 1e-3, 1.0 - 1e-7, 1.0)
T = jnp.array(EDGE_TIMES, jnp.float32)  # one time per row of the batch
AT_0, AT_1, INSIDE = 0, 5, (2, 3)
GRID = jnp.array([0.0, 1e-7, 0.5, 1.0 - 1e-7, 1.0], jnp.float32)  # distinct in float32

PATHS = [
    paths.RectifiedFlow(), paths.LipmanPath(0.01), paths.LipmanPath(0.0), paths.Cosine(),
    paths.VP(), paths.VE(), paths.Polynomial(3.0), paths.Polynomial(0.5),
    paths.RectifiedFlow(noise=paths.BridgeNoise(0.7)),
    paths.Cosine(noise=paths.BridgeNoise(0.3)), paths.VP(noise=paths.ConstantNoise(0.05)),
]
IDS = [f"{type(p).__name__}-{type(p.noise).__name__}-{i}" for i, p in enumerate(PATHS)]
SCHEDULES = (("alpha", "d_alpha"), ("sigma", "d_sigma"), ("gamma", "d_gamma"),
             ("sigma_total", "d_sigma_total"))


def _batch(dim=3):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    n = T.shape[0]
    x0, x1, eps, value = (jax.random.normal(key, (n, dim)) for key in k)
    return x0, x1 + 1.0, eps, value


@jax.jit
def _at_the_edges(path, x0, x1, eps, value, t):
    """Every conversion and path method at `t`, with its derivative in `t` (one `jax.jvp`)."""
    z = None if path.noise is None else eps

    def everything(t):
        tb = t[:, None]
        a, s = path.alpha(tb), path.sigma_total(tb)
        x_t = a * x1 + s * eps  # the marginal point of data x1 and noise eps ...
        v = path.d_alpha(tb) * x1 + path.d_sigma_total(tb) * eps  # ... and its velocity
        # Each kind of prediction given as its true value (the score, infinite where
        # sigma_total = 0, as an arbitrary value), converted to every other kind.
        given = {Prediction.VELOCITY: v, Prediction.DATA: x1, Prediction.NOISE: eps,
                 Prediction.SCORE: value}
        pairs = {f"{g.name}->{k.name}": paths.convert(path, x_t, t, given[g], given=g, to=k)
                 for g in Prediction for k in Prediction if g != k}
        methods = [path.interpolate(x0, x1, t, z), path.velocity(x0, x1, t, z),
                   path.noise_target(x0, t, z)]
        schedules = {name: (getattr(path, name)(t), getattr(path, d_name)(t))
                     for name, d_name in SCHEDULES}
        return pairs, (x1, eps, v), methods, schedules

    return jax.jvp(everything, (t,), (jnp.ones_like(t),))


@pytest.mark.fast_cases(2)
@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_conversions_and_paths_at_the_edges(path):
    x0, x1, eps, value = _batch()
    values, tangents = _at_the_edges(path, x0, x1, eps, value, T)
    for leaf in jax.tree.leaves((values, tangents)):  # values and d/dt, at all six times
        assert np.all(np.isfinite(np.asarray(leaf)))
    pairs, (x1, eps, v), _, schedules = values
    # At the exact ends the conversions from a velocity are the exact limits wherever the
    # velocity determines data and noise (Delta != 0; not at t = 0 on t^3, where v = 0).
    a, s = (np.asarray(schedules[n][0]) for n in ("alpha", "sigma_total"))
    da, ds = (np.asarray(schedules[n][1]) for n in ("alpha", "sigma_total"))
    for i in (AT_0, AT_1):
        if abs(a[i] * ds[i] - s[i] * da[i]) > 1e-3:
            for kind, truth in (("DATA", x1), ("NOISE", eps)):
                np.testing.assert_allclose(pairs[f"VELOCITY->{kind}"][i], truth[i], rtol=1e-4,
                                           atol=1e-4, err_msg=f"{kind} at t = {T[i]}")
    # A velocity from data at t = 0 (sigma_total > 0) and from noise at t = 1 (alpha > 0).
    np.testing.assert_allclose(pairs["DATA->VELOCITY"][AT_0], v[AT_0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pairs["NOISE->VELOCITY"][AT_1], v[AT_1], rtol=1e-4, atol=1e-4)
    # Just inside the ends, autodiff of each schedule is its closed-form derivative.
    _, _, _, d_schedules = tangents
    for name, _ in SCHEDULES:
        closed = np.asarray(schedules[name][1])[list(INSIDE)]
        np.testing.assert_allclose(np.asarray(d_schedules[name][0])[list(INSIDE)], closed,
                                   rtol=2e-3, atol=1e-5, err_msg=name)


def test_cosine_and_vp_reach_zero_noise_exactly():
    """sigma(1) = 0 in float32 (cos(pi/2) would be -4.4e-8), so x_1 is the data itself."""
    one = jnp.float32(1.0)
    for path in (paths.Cosine(), paths.VP(), paths.RectifiedFlow(noise=paths.BridgeNoise(1.0))):
        assert float(path.sigma_total(one)) == 0.0
    x0, x1, eps, _ = _batch()
    t = jnp.ones(x0.shape[0], jnp.float32)
    np.testing.assert_array_equal(paths.Cosine().interpolate(x0, x1, t), x1)


# --------------------------------------------------------------------------
# Samplers and the likelihood on a grid with all four edge times
# --------------------------------------------------------------------------


def apply_fn(params, x, t, cond):
    """A model whose output is read as any kind of prediction."""
    del cond
    return params * x + t[:, None]


def _x0():
    return jax.random.normal(jax.random.PRNGKey(1), (4, 2))


def _finite(*outs):
    return all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(outs))


@pytest.mark.slow
def test_ode_sampler_at_the_edges():
    # Heun evaluates the field at both ends of every step: at 0, 1e-7, 0.5, 1 - 1e-7 and 1.
    path = paths.RectifiedFlow(noise=paths.BridgeNoise(0.7))  # alpha(0) = 0, sigma_total(1) = 0
    field = sample.ModelVelocity(apply_fn, 0.5, path=path, prediction=Prediction.DATA)
    sol = sample.solve_ode(field, _x0(), solver=diffrax.Heun(), ts=GRID, save_trajectory=True)
    assert _finite(sol.trajectory)
    assert sol.trajectory.shape[0] == GRID.shape[0]


def test_sde_sampler_at_the_edges():
    # The reverse-time SDE: g is the path's own diffusion, floored where alpha(0) = 0 and
    # vanishing with sigma_total at t = 1, for a score model.
    path = paths.Cosine(noise=paths.BridgeNoise(0.3))
    sol = sample.solve_sde(sample.ModelVelocity(apply_fn, 0.5), _x0(),
                           key=jax.random.PRNGKey(2), path=path, prediction=Prediction.SCORE,
                           diffusion=sample.ReverseDiffusion(path), ts=GRID,
                           save_trajectory=True)
    assert _finite(sol.trajectory)
    assert int(sol.nfe) == GRID.shape[0] - 1


def test_edm_heun_at_the_edges():
    """sigma_max at the top of VE's range: the grid starts at t = 0 and ends at 1.

    The last level sits just above VE's own floor (0.01): the final Euler step goes to
    sigma = 0 at the nominal time 1, so a level at the floor would repeat t = 1.
    """
    path = paths.VE(sigma_min=0.01, sigma_max=50.0)
    model = paths.edm_precondition(lambda p, x, c_noise, cond: p * x + c_noise[:, None], path)
    field = jax.tree_util.Partial(lambda p, x, t: model(p, x, t), 0.5)
    sol = sample.solve_ode(field, _x0(),
                           solver=sample.EDMHeun(path, Prediction.DATA, sigma_max=50.0),
                           ts=ftime.edm_grid(3, path, sigma_min=0.011, sigma_max=50.0),
                           save_trajectory=True)
    assert _finite(sol.trajectory)
    np.testing.assert_allclose([sol.ts[0], sol.ts[-1]], [0.0, 1.0], atol=1e-6)


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("path", [paths.RectifiedFlow(), paths.VP()], ids=["RF", "VP"])
def test_diffusion_and_guidance_fields_at_the_edges(path):
    """EDM's sigma, the forward SDE's g, the EDM-preconditioned model and classifier guidance."""
    x = jax.random.normal(jax.random.PRNGKey(3), (T.shape[0], 2))
    sigma, g = paths.noise_ratio(path, T), paths.sde_diffusion(path, T)
    assert _finite(sigma, g) and np.all(np.asarray(sigma) > 0) and np.all(np.asarray(g) >= 0)
    model = paths.edm_precondition(lambda p, x, c_noise, cond: p * x + c_noise[:, None], path)
    labels = jnp.zeros(T.shape[0], jnp.int32)
    guided = sample.ClassifierGuidance(
        sample.ModelVelocity(apply_fn, 0.5),
        lambda p, x, t: p * jnp.stack([x[:, 0], -x[:, 0]], -1), 1.0, labels, path,
        guidance_scale=2.0)
    assert _finite(model(0.5, x, T), guided(x, T))


@pytest.mark.parametrize("path, prediction", [
    (paths.VP(), Prediction.NOISE),
    (paths.RectifiedFlow(noise=paths.BridgeNoise(0.7)), Prediction.DATA),
], ids=["VP-noise", "bridge-data"])
def test_dpm_solver_at_the_edges(path, prediction):
    sol = sample.solve_ode(sample.ModelVelocity(apply_fn, 0.5), _x0(),
                           solver=sample.DPMSolver2M(path, prediction=prediction), ts=GRID)
    assert _finite(sol.samples)
    assert int(sol.nfe) == GRID.shape[0] - 1


def test_few_step_sampler_at_the_edges():
    """Jumps 0 -> 1e-7 -> 0.5 -> 1 - 1e-7 -> 1 with the exact flow map of a degenerate Gaussian."""
    mean, cov = jnp.array([1.0, -1.0]), jnp.array([[1.0, 1.0], [1.0, 1.0]])  # singular

    def average_fn(x, r, t):
        return analytic.gaussian_average_velocity(paths.Cosine(), mean, cov, x, r, t)

    x0 = _x0()
    sol = sample.solve_flow_map(average_fn, x0, ts=GRID, save_trajectory=True)
    assert _finite(sol.trajectory)
    # The map is exact: jumping in pieces lands where one jump does.
    one = sample.solve_flow_map(average_fn, x0, num_steps=1)
    np.testing.assert_allclose(sol.samples, one.samples, rtol=1e-3, atol=1e-3)
    # u(x, t, t) at the ends (r = t = 0 and 1) is the velocity there, finite.
    for edge in (0.0, 1.0):
        tt = jnp.full((x0.shape[0],), edge)
        assert _finite(average_fn(x0, tt, tt))


def test_likelihood_at_the_edges():
    # Walked back from 1 to 0 on the grid: the field and its exact divergence at 1, 1 - 1e-7,
    # 0.5 and 1e-7, for a data-prediction model on a path whose noise vanishes at t = 1.
    path = paths.RectifiedFlow(noise=paths.BridgeNoise(0.7))
    field = sample.ModelVelocity(apply_fn, 0.5, path=path, prediction=Prediction.DATA)
    sol = sample.log_likelihood(field, _x0(), solver=diffrax.Euler(), ts=GRID)
    log_prob, nfe = sol.log_prob, sol.nfe
    assert log_prob.shape == (4,) and _finite(log_prob)
    assert int(nfe) == GRID.shape[0] - 1
