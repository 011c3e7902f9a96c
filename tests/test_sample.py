"""ODE sampling: NFE is counted right, orders of convergence, exactness, reverse direction."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import paths, sample
from flowjax.paths import Prediction


def decay(x, t, args):
    """dx/dt = -cos(t) x, so x(t) = x(0) exp(-sin t)."""
    del args
    return -jnp.cos(t)[:, None] * x


FIXED = [(diffrax.Euler(), 1), (diffrax.Midpoint(), 2), (diffrax.Heun(), 2), (sample.RK4(), 4)]


@pytest.mark.parametrize("solver, per_step", FIXED + [(diffrax.Dopri5(), None),
                                                      (diffrax.Tsit5(), None)])
def test_nfe_equals_counted_evaluations(solver, per_step):
    count = [0]

    def counted(x, t, args):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return decay(x, t, args)

    num_steps = 7 if per_step is not None else None
    sol = sample.solve_ode(counted, jnp.ones((3, 2)), solver=solver, num_steps=num_steps)
    jax.block_until_ready(sol.samples)
    assert int(sol.nfe) == count[0]
    if per_step is not None:
        assert int(sol.nfe) == per_step * 7


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
        sol = sample.solve_ode(decay, jnp.ones((2, 1)), solver=diffrax.Dopri5(), rtol=tol,
                               atol=tol)
        assert abs(float(sol.samples[0, 0]) - exact) < 20 * tol
    loose = sample.solve_ode(decay, jnp.ones((2, 1)), rtol=1e-3, atol=1e-3)
    assert int(loose.nfe) < int(sol.nfe)


def test_one_euler_step_is_exact_for_single_point_rectified_flow(x64):
    """Rectified flow towards one point c has v(x, t) = (c - x)/(1 - t): straight lines."""
    c = jnp.array([2.0, -1.0])
    path = paths.RectifiedFlow()

    def data_model(x, t, args):  # predicts x1 = c; converted to a velocity
        return paths.convert(path, x, t, jnp.broadcast_to(c, x.shape),
                             given=Prediction.DATA, to=Prediction.VELOCITY)

    x0 = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    sol = sample.solve_ode(data_model, x0, solver=diffrax.Euler(), num_steps=1)
    np.testing.assert_allclose(sol.samples, jnp.broadcast_to(c, x0.shape), atol=1e-12)
    assert int(sol.nfe) == 1


def test_reverse_solve_inverts_forward(x64):
    x0 = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    fwd = sample.solve_ode(decay, x0, rtol=1e-9, atol=1e-9)
    back = sample.solve_ode(decay, fwd.samples, t0=1.0, t1=0.0, rtol=1e-9, atol=1e-9)
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

    v = sample.model_velocity(apply_fn, path=path, prediction=Prediction.DATA)(x, t, (2.0, None))
    np.testing.assert_allclose(
        v, paths.convert(path, x, t, 2.0 * x, given=Prediction.DATA, to=Prediction.VELOCITY))
    with pytest.raises(ValueError, match="`path`"):
        sample.model_velocity(apply_fn, prediction=Prediction.DATA)


def test_bad_inputs():
    x0 = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="`num_steps`"):
        sample.solve_ode(decay, x0, solver=diffrax.Euler(), num_steps=0)
    with pytest.raises(ValueError, match="adaptive solves"):
        sample.solve_ode(decay, x0, solver=diffrax.Euler())
    with pytest.raises(ValueError, match="`t0` and `t1`"):
        sample.solve_ode(decay, x0, t0=0.0, t1=1.5)
    with pytest.raises(ValueError, match="`x0` contains non-finite"):
        sample.solve_ode(decay, x0.at[0, 0].set(jnp.nan), num_steps=2, solver=diffrax.Euler())
    with pytest.raises(ValueError, match="`ts` must be"):
        sample.solve_ode(decay, x0, solver=diffrax.Euler(), ts=jnp.array([0.0, 0.6, 0.4, 1.0]))
    with pytest.raises(TypeError, match="`solver`"):
        sample.solve_ode(decay, x0, solver="euler", num_steps=2)


# --- DPM-Solver++(2M) -------------------------------------------------------------------

from flowjax import analytic  # noqa: E402
from flowjax import time as ftime  # noqa: E402


def _mixture2d():
    return analytic.GaussianMixture.create(
        jnp.array([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]]),
        jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]],
                   [[0.1, 0.0], [0.0, 0.1]]]), jnp.array([0.5, 0.3, 0.2]))


@pytest.mark.parametrize("path", [paths.RectifiedFlow(), paths.Cosine(), paths.VP()],
                         ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("num_steps", [1, 3])
def test_dpm_solver_is_exact_for_a_point_target(x64, path, num_steps):
    """The data prediction is constant for a point target, so the integrator is exact."""
    c = jnp.array([[1.5, -0.5]])
    target = analytic.GaussianMixture.create(c, jnp.zeros((1, 2, 2)))
    x0 = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    out, nfe = sample.dpm_solver_2m(lambda x, t, m: analytic.mixture_velocity(path, m, x, t),
                                    x0, target, path=path, ts=ftime.uniform_grid(num_steps))
    np.testing.assert_allclose(out, jnp.broadcast_to(c, x0.shape), atol=1e-8)
    assert nfe == num_steps


def test_dpm_solver_depends_on_the_path_only_through_its_snr(x64):
    """On EDM grids (equal noise ratios), rectified flow and cosine give the same samples."""
    mix = _mixture2d()
    x0 = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    outs = []
    for path in (paths.RectifiedFlow(), paths.Cosine()):
        out, _ = sample.dpm_solver_2m(lambda x, t, m: analytic.mixture_velocity(path, m, x, t),
                                      x0, mix, path=path, ts=ftime.edm_grid(12, path))
        outs.append(out)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("corrector", [False, True])
def test_dpm_solver_converges_at_second_order(x64, corrector):
    mix, path = _mixture2d(), paths.RectifiedFlow()
    field = lambda x, t, m: analytic.mixture_velocity(path, m, x, t)  # noqa: E731
    x0 = jax.random.normal(jax.random.PRNGKey(2), (64, 2))
    ref = sample.solve_ode(field, x0, mix, solver=diffrax.Dopri8(), rtol=1e-11,
                           atol=1e-11).samples
    steps = np.array([32, 64, 128, 256])
    errs = [float(jnp.sqrt(jnp.mean((sample.dpm_solver_2m(
        field, x0, mix, path=path, ts=ftime.edm_grid(int(n), path), corrector=corrector)[0]
        - ref) ** 2))) for n in steps]
    slope = np.polyfit(np.log(1.0 / steps), np.log(errs), 1)[0]
    assert 1.7 < slope < 3.3, (slope, errs)


def test_dpm_solver_bad_grid():
    with pytest.raises(ValueError, match="`ts` must be an increasing grid"):
        sample.dpm_solver_2m(decay, jnp.ones((2, 2)), path=paths.RectifiedFlow(),
                             ts=jnp.array([0.0, 0.5, 0.4, 1.0]))


@pytest.mark.parametrize("solver, order, steps", [
    (diffrax.Euler(), 1, [512, 1024, 2048, 4096]),  # pre-asymptotic below ~500 steps
    (diffrax.Midpoint(), 2, [64, 128, 256, 512]),
    (diffrax.Heun(), 2, [64, 128, 256, 512]),
    (sample.RK4(), 4, [8, 16, 32, 64]),  # above the 1e-8 floor of the t = 1 variance floor
], ids=["euler", "midpoint", "heun", "rk4"])
def test_convergence_order_on_the_exact_mixture_flow(x64, solver, order, steps):
    """Issue 3, acceptance 1: slope of log endpoint error vs log step within 0.3 of the order."""
    mix, path = _mixture2d(), paths.RectifiedFlow()
    field = lambda x, t, m: analytic.mixture_velocity(path, m, x, t)  # noqa: E731
    x0 = jax.random.normal(jax.random.PRNGKey(2), (64, 2))
    ref = sample.solve_ode(field, x0, mix, solver=diffrax.Dopri8(), rtol=1e-12,
                           atol=1e-12).samples
    errs = [float(jnp.sqrt(jnp.mean((sample.solve_ode(field, x0, mix, solver=solver,
                                                      num_steps=n).samples - ref) ** 2)))
            for n in steps]
    slope = np.polyfit(np.log(1.0 / np.array(steps)), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.3, (slope, errs)


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

    def heun(path, num_steps, **kwargs):
        def field(x, t, args):  # the exact velocity, through the exact denoiser
            a, sigma = path.alpha(t)[:, None], (path.sigma_total(t) / path.alpha(t))[:, None]
            denoised = mean + ((x / a - mean) @ u * lam / (lam + sigma ** 2)) @ u.T
            return paths.convert(path, x, t, denoised, given=Prediction.DATA,
                                 to=Prediction.VELOCITY)
        return sample.edm_heun(field, noise, None, path=path, num_steps=num_steps, **kwargs)

    steps = np.array([8, 16, 32])
    sols = [heun(paths.RectifiedFlow(), int(n), save_trajectory=True) for n in steps]
    errs = [float(jnp.sqrt(jnp.mean((s.samples - reference(int(n))) ** 2)))
            for s, n in zip(sols, steps)]
    slope = np.polyfit(np.log(1.0 / steps), np.log(errs), 1)[0]
    assert 1.8 < slope < 2.6 and errs[-1] < 1e-2, (slope, errs)
    assert [s.nfe for s in sols] == list(2 * steps - 1)
    # Only sigma = sigma_bar / alpha matters: VP gives the same samples as rectified flow.
    np.testing.assert_allclose(heun(paths.VP(), 8, save_trajectory=True).samples,
                               sols[0].samples, rtol=1e-8, atol=1e-8)
    traj = sols[0]
    np.testing.assert_allclose(np.asarray(traj.ts)[[0, -1]], [1 / 81, 1.0], rtol=1e-10)
    np.testing.assert_allclose(traj.trajectory[0], 80 / 81 * noise, rtol=1e-10)
    np.testing.assert_allclose(traj.trajectory[-1], traj.samples, rtol=1e-12)
    with pytest.raises(ValueError, match="`sigma_min` and `sigma_max`"):
        heun(paths.VE(0.01, 50.0), 4)
