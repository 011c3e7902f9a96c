"""ODE sampling: NFE is counted right, orders of convergence, exactness, reverse direction."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import paths, sample
from flowjax.paths import Prediction


def decay(x, t):
    """dx/dt = -cos(t) x, so x(t) = x(0) exp(-sin t)."""
    return -jnp.cos(t)[:, None] * x


FIXED = [(diffrax.Euler(), 1), (diffrax.Midpoint(), 2), (diffrax.Heun(), 2), (sample.RK4(), 4)]


@pytest.mark.fast_cases(3)
@pytest.mark.parametrize("solver, per_step", FIXED + [(diffrax.Dopri5(), None),
                                                      (diffrax.Tsit5(), None)])
def test_nfe_equals_counted_evaluations(solver, per_step):
    count = [0]

    def counted(x, t):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return decay(x, t)

    num_steps = 7 if per_step is not None else None
    sol = sample.solve_ode(counted, jnp.ones((3, 2)), solver=solver, num_steps=num_steps)
    jax.block_until_ready(sol.samples)
    assert int(sol.nfe) == count[0]
    if per_step is not None:
        assert int(sol.nfe) == per_step * 7


@pytest.mark.fast_cases(2)
@pytest.mark.parametrize("solver, order", [(s, o) for (s, _), o in zip(FIXED, (1, 2, 2, 4))])
def test_convergence_order(x64, solver, order):
    """The slope of log(error) against log(step) is the solver's order."""
    x0 = jnp.ones((2, 1))
    exact = np.exp(-np.sin(1.0))
    steps = np.array([8, 16, 32, 64])
    errs = [abs(float(sample.solve_ode(decay, x0, solver=solver, num_steps=int(n)).samples[0, 0])
                - exact) for n in steps]
    slope = np.polyfit(np.log(1.0 / steps), np.log(errs), 1)[0]
    assert order - 0.25 < slope < order + 0.35, (slope, errs)


def test_adaptive_meets_tolerance(x64):
    exact = np.exp(-np.sin(1.0))
    for tol in (1e-4, 1e-8):
        sol = sample.solve_ode(decay, jnp.ones((2, 1)), solver=diffrax.Dopri5(),
                               adaptive=sample.Adaptive(rtol=tol, atol=tol))
        assert abs(float(sol.samples[0, 0]) - exact) < 20 * tol
    loose = sample.solve_ode(decay, jnp.ones((2, 1)), adaptive=sample.Adaptive(1e-3, 1e-3))
    assert int(loose.nfe) < int(sol.nfe)


def test_one_euler_step_is_exact_for_single_point_rectified_flow(x64):
    """Rectified flow towards one point c has v(x, t) = (c - x)/(1 - t): straight lines."""
    c = jnp.array([2.0, -1.0])
    path = paths.RectifiedFlow()

    def data_model(x, t):  # predicts x1 = c; converted to a velocity
        return paths.convert(path, x, t, jnp.broadcast_to(c, x.shape),
                             given=Prediction.DATA, to=Prediction.VELOCITY)

    x0 = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    sol = sample.solve_ode(data_model, x0, solver=diffrax.Euler(), num_steps=1)
    np.testing.assert_allclose(sol.samples, jnp.broadcast_to(c, x0.shape), atol=1e-12)
    assert int(sol.nfe) == 1


def test_reverse_solve_inverts_forward(x64):
    x0 = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    tight = sample.Adaptive(rtol=1e-9, atol=1e-9)
    fwd = sample.solve_ode(decay, x0, adaptive=tight)
    back = sample.solve_ode(decay, fwd.samples, t0=1.0, t1=0.0, adaptive=tight)
    np.testing.assert_allclose(back.samples, x0, rtol=1e-7, atol=1e-7)
    grid = sample.solve_ode(decay, fwd.samples, solver=sample.RK4(), num_steps=50, t0=1.0, t1=0.0,
                            save_trajectory=True)
    assert grid.trajectory.shape == (51, 8, 2)
    np.testing.assert_allclose(grid.ts[0], 1.0)
    np.testing.assert_allclose(grid.trajectory[-1], x0, rtol=1e-6, atol=1e-6)


def test_trajectory_and_user_grid(x64):
    x0 = jnp.ones((4, 2))
    sol = sample.solve_ode(decay, x0, save_trajectory=True, num_save=11)
    assert sol.trajectory.shape == (11, 4, 2)
    np.testing.assert_allclose(sol.trajectory[:, 0, 0], np.exp(-np.sin(np.linspace(0, 1, 11))),
                               rtol=1e-4)
    ts = jnp.array([0.0, 0.1, 0.5, 1.0])
    grid = sample.solve_ode(decay, x0, solver=diffrax.Euler(), ts=ts, save_trajectory=True)
    np.testing.assert_allclose(grid.ts, ts)
    assert int(grid.nfe) == 3


def test_model_velocity_converts_predictions(x64):
    path = paths.Cosine()
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
    t = jnp.full((5,), 0.3)

    def apply_fn(params, x, t, cond):
        return params * x

    v = sample.ModelVelocity(apply_fn, 2.0, path=path, prediction=Prediction.DATA)(x, t)
    np.testing.assert_allclose(
        v, paths.convert(path, x, t, 2.0 * x, given=Prediction.DATA, to=Prediction.VELOCITY))
    with pytest.raises(ValueError, match="`path`"):
        sample.ModelVelocity(apply_fn, 2.0, prediction=Prediction.DATA)
    with pytest.raises(TypeError, match="`path` must be an affine path.*class RectifiedFlow"):
        sample.ModelVelocity(apply_fn, 2.0, path=paths.RectifiedFlow,
                             prediction=Prediction.DATA)
    with pytest.raises(TypeError, match="`apply_fn` must take 4"):
        sample.ModelVelocity(lambda params, x: x, 2.0)


def test_bad_inputs():
    x0 = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="`num_steps`"):
        sample.solve_ode(decay, x0, solver=diffrax.Euler(), num_steps=0)
    with pytest.raises(ValueError, match="adaptive solves"):
        sample.solve_ode(decay, x0, solver=diffrax.Euler())
    with pytest.raises(ValueError, match="`t1`"):
        sample.solve_ode(decay, x0, t0=0.0, t1=1.5)
    with pytest.raises(ValueError, match="`t0` and `t1`"):
        sample.solve_ode(decay, x0, t0=0.5, t1=0.5)
    with pytest.raises(RuntimeError, match="`x0` contains non-finite"):
        sample.solve_ode(decay, x0.at[0, 0].set(jnp.nan), num_steps=2, solver=diffrax.Euler())
    with pytest.raises(RuntimeError, match="`ts` must be a strictly monotone"):
        sample.solve_ode(decay, x0, solver=diffrax.Euler(), ts=jnp.array([0.0, 0.6, 0.4, 1.0]))
    with pytest.raises(ValueError, match="one of `num_steps`, `ts` or `adaptive`"):
        sample.solve_ode(decay, x0, num_steps=2, ts=jnp.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="`solver`"):
        sample.solve_ode(decay, x0, solver="euler", num_steps=2)
    with pytest.raises(TypeError, match="`adaptive` must be a flowjax.sample.Adaptive"):
        sample.solve_ode(decay, x0, adaptive=(1e-5, 1e-5))
    with pytest.raises(ValueError, match="`rtol`"):
        sample.Adaptive(rtol=0.0)


def test_a_field_that_does_not_take_x_and_t_is_named():
    """An old-style `velocity_fn(x, t, args)`, a model function, or swapped arguments."""
    x0 = jnp.ones((4, 2))
    with pytest.raises(TypeError, match=r"`field` must be called as field\(x \[B, \*dims\], t"):
        sample.solve_ode(lambda x, t, args: x, x0, num_steps=2)
    with pytest.raises(TypeError, match="`field` must be called as field"):
        sample.solve_ode(lambda params, x, t, cond: x, x0, num_steps=2)
    with pytest.raises(TypeError, match="`field` must be callable"):
        sample.solve_ode(x0, decay, num_steps=2)
    with pytest.raises(TypeError, match="`field`"):
        sample.solve_ode(sample.ModelVelocity, x0, num_steps=2)


def test_fixed_grids_run_under_jit_vmap_and_grad(x64):
    """A fixed grid built inside the user's jit (also a traced `ts`), vmapped and differentiated."""
    x0 = jnp.ones((4, 2))

    @jax.jit
    def run(x0, ts):
        a = sample.solve_ode(decay, x0, solver=sample.RK4(), num_steps=16).samples
        b = sample.solve_ode(decay, x0, solver=sample.RK4(), ts=ts).samples
        return a, b

    a, b = run(x0, jnp.linspace(0.0, 1.0, 17))
    np.testing.assert_allclose(a, x0 * np.exp(-np.sin(1.0)), rtol=1e-6)
    np.testing.assert_allclose(b, a, rtol=1e-12)
    batched = jax.vmap(lambda x: sample.solve_ode(decay, x[None], solver=diffrax.Heun(),
                                                  num_steps=8).samples[0])(x0)
    np.testing.assert_allclose(batched, sample.solve_ode(decay, x0, solver=diffrax.Heun(),
                                                         num_steps=8).samples, rtol=1e-12)

    def apply_fn(params, x, t, cond):
        return -params * jnp.cos(t)[:, None] * x

    def end(params):  # x(1) = x0 exp(-params sin 1): d/dparams = -sin(1) x(1)
        field = sample.ModelVelocity(apply_fn, params)
        return sample.solve_ode(field, x0, solver=sample.RK4(), num_steps=32).samples.sum()

    grad = jax.grad(end)(1.0)
    np.testing.assert_allclose(grad, -np.sin(1.0) * end(1.0), rtol=1e-6)


# --- DPM-Solver++(2M) -------------------------------------------------------------------

from flowjax import analytic  # noqa: E402
from flowjax import time as ftime  # noqa: E402


def _exact_field(path, mix):
    """The exact velocity of `mix` on `path`, as a pytree field (the mixture is a leaf)."""
    return jax.tree_util.Partial(lambda m, x, t: analytic.mixture_velocity(path, m, x, t), mix)


def _mixture2d():
    return analytic.GaussianMixture.create(
        jnp.array([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]]),
        jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]],
                   [[0.1, 0.0], [0.0, 0.1]]]), jnp.array([0.5, 0.3, 0.2]))


@pytest.mark.fast_cases(3)
@pytest.mark.parametrize("path", [paths.RectifiedFlow(), paths.Cosine(), paths.VP()],
                         ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("num_steps", [1, 3])
def test_dpm_solver_is_exact_for_a_point_target(x64, path, num_steps):
    """The data prediction is constant for a point target, so the integrator is exact."""
    c = jnp.array([[1.5, -0.5]])
    target = analytic.GaussianMixture.create(c, jnp.zeros((1, 2, 2)))
    x0 = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    sol = sample.solve_ode(_exact_field(path, target), x0, solver=sample.DPMSolver2M(path),
                           ts=ftime.uniform_grid(num_steps))
    np.testing.assert_allclose(sol.samples, jnp.broadcast_to(c, x0.shape), atol=1e-8)
    assert int(sol.nfe) == num_steps


@pytest.mark.slow
def test_dpm_solver_depends_on_the_path_only_through_its_snr(x64):
    """On EDM grids (equal noise ratios), rectified flow and cosine give the same samples."""
    mix = _mixture2d()
    x0 = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    outs = []
    for path in (paths.RectifiedFlow(), paths.Cosine()):
        outs.append(sample.solve_ode(_exact_field(path, mix), x0,
                                     solver=sample.DPMSolver2M(path),
                                     ts=ftime.edm_grid(12, path)).samples)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-9, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("corrector", [False, True])
def test_dpm_solver_converges_at_second_order(x64, corrector):
    mix, path = _mixture2d(), paths.RectifiedFlow()
    field = _exact_field(path, mix)
    x0 = jax.random.normal(jax.random.PRNGKey(2), (64, 2))
    ref = sample.solve_ode(field, x0, solver=diffrax.Dopri8(),
                           adaptive=sample.Adaptive(1e-11, 1e-11)).samples
    steps = np.array([32, 64, 128, 256])
    dpm = sample.DPMSolver2M(path, corrector=corrector)
    errs = [float(jnp.sqrt(jnp.mean((sample.solve_ode(
        field, x0, solver=dpm, ts=ftime.edm_grid(int(n), path)).samples - ref) ** 2)))
        for n in steps]
    slope = np.polyfit(np.log(1.0 / steps), np.log(errs), 1)[0]
    assert 1.7 < slope < 3.3, (slope, errs)


def test_dpm_solver_bad_grid():
    dpm = sample.DPMSolver2M(paths.RectifiedFlow())
    with pytest.raises(RuntimeError, match="`ts` must be a strictly monotone"):
        sample.solve_ode(decay, jnp.ones((2, 2)), solver=dpm, ts=jnp.array([0.0, 0.5, 0.4, 1.0]))
    with pytest.raises(ValueError, match="pass `num_steps` or `ts`"):
        sample.solve_ode(decay, jnp.ones((2, 2)), solver=dpm)
    with pytest.raises(ValueError, match="fixed grid"):
        sample.solve_ode(decay, jnp.ones((2, 2)), solver=dpm, adaptive=sample.Adaptive())
    with pytest.raises(TypeError, match="`path`.*class RectifiedFlow"):
        sample.DPMSolver2M(paths.RectifiedFlow)


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("solver, order, steps", [
    (diffrax.Euler(), 1, [512, 1024, 2048, 4096]),  # pre-asymptotic below ~500 steps
    (diffrax.Midpoint(), 2, [64, 128, 256, 512]),
    (diffrax.Heun(), 2, [64, 128, 256, 512]),
    (sample.RK4(), 4, [8, 16, 32, 64]),  # above the 1e-8 floor of the t = 1 variance floor
], ids=["euler", "midpoint", "heun", "rk4"])
def test_convergence_order_on_the_exact_mixture_flow(x64, solver, order, steps):
    """The slope of log endpoint error vs log step is within 0.3 of the order."""
    mix, path = _mixture2d(), paths.RectifiedFlow()
    field = _exact_field(path, mix)
    x0 = jax.random.normal(jax.random.PRNGKey(2), (64, 2))
    ref = sample.solve_ode(field, x0, solver=diffrax.Dopri8(),
                           adaptive=sample.Adaptive(1e-12, 1e-12)).samples
    errs = [float(jnp.sqrt(jnp.mean((sample.solve_ode(field, x0, solver=solver,
                                                      num_steps=n).samples - ref) ** 2)))
            for n in steps]
    slope = np.polyfit(np.log(1.0 / np.array(steps)), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.3, (slope, errs)


@pytest.mark.slow
def test_edm_heun_converges_at_second_order_to_the_exact_gaussian_map(x64):
    """EDM's Algorithm 1 on a Gaussian target, where the flow in sigma is known in closed form.

    In EDM's variables the probability-flow map of N(m, S) from sigma_0 to sigma_1 is
    m + (S + sigma_1^2)^(1/2) (S + sigma_0^2)^(-1/2) (x - m); the last (Euler) step returns
    the denoiser D(x; sigma_min) = m + S (S + sigma_min^2)^(-1) (x - m).
    """
    mean, cov = jnp.array([1.0, -0.5]), jnp.array([[0.5, 0.2], [0.2, 0.3]])
    lam, u = np.linalg.eigh(np.asarray(cov))
    noise = jax.random.normal(jax.random.PRNGKey(0), (64, 2))

    def reference(num_steps):
        s_min = float(ftime.edm_sigmas(num_steps)[-2])
        y = (80.0 * noise - mean) @ u * np.sqrt((lam + s_min ** 2) / (lam + 80.0 ** 2))
        return mean + (y * lam / (lam + s_min ** 2)) @ u.T

    def heun(path, num_steps, grid_options=None, **kwargs):
        def field(x, t):  # the exact velocity, through the exact denoiser
            a, sigma = path.alpha(t)[:, None], (path.sigma_total(t) / path.alpha(t))[:, None]
            denoised = mean + ((x / a - mean) @ u * lam / (lam + sigma ** 2)) @ u.T
            return paths.convert(path, x, t, denoised, given=Prediction.DATA,
                                 to=Prediction.VELOCITY)
        return sample.solve_ode(field, noise, solver=sample.EDMHeun(path), **kwargs,
                                ts=ftime.edm_grid(num_steps, path, **(grid_options or {})))

    steps = np.array([8, 16, 32])
    sols = [heun(paths.RectifiedFlow(), int(n), save_trajectory=True) for n in steps]
    errs = [float(jnp.sqrt(jnp.mean((s.samples - reference(int(n))) ** 2)))
            for s, n in zip(sols, steps)]
    slope = np.polyfit(np.log(1.0 / steps), np.log(errs), 1)[0]
    assert 1.8 < slope < 2.6 and errs[-1] < 1e-2, (slope, errs)
    assert [int(s.nfe) for s in sols] == list(2 * steps - 1)
    # Only sigma = sigma_bar / alpha matters: VP gives the same samples as rectified flow.
    np.testing.assert_allclose(heun(paths.VP(), 8, save_trajectory=True).samples,
                               sols[0].samples, rtol=1e-8, atol=1e-8)
    traj = sols[0]
    np.testing.assert_allclose(np.asarray(traj.ts)[[0, -1]], [1 / 81, 1.0], rtol=1e-10)
    np.testing.assert_allclose(traj.trajectory[0], 80 / 81 * noise, rtol=1e-10)
    np.testing.assert_allclose(traj.trajectory[-1], traj.samples, rtol=1e-12)
    # A VE path whose noise stops at 50, on a grid built for it, with EDM's sigma_max = 80.
    with pytest.raises(RuntimeError, match="`sigma_max` must not exceed"):
        heun(paths.VE(0.01, 50.0), 4, grid_options=dict(sigma_min=0.01, sigma_max=50.0))
