r"""ODE sampling through diffrax, with the number of function evaluations.

:func:`solve_ode` integrates :math:`dx/dt = v(x, t)` from `t0` to `t1` (noise
to data by default, data to noise with `t0=1, t1=0`) for a whole batch.
One state `[B, *dims]` is integrated, so an adaptive controller measures the
error as the RMS over the whole batch (one step-size sequence for all
samples), which is what makes it fast on accelerators.

The ends: a solve evaluates the field at t = 0 and t = 1 exactly (a grid's
end points, Heun's and Dopri5's last stages), where alpha or sigma_total
vanish on most paths. :func:`model_velocity` converts data, noise and score
predictions with :func:`flowjax.paths.convert`, which is finite there (and
exact where the problem is well posed), so every sampler here is finite on
grids that contain 0, 1e-7, 1 - 1e-7 and 1 (tests/test_time_edges.py).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from flowjax._checks import (check_array, check_finite, check_grid,
                             check_number, check_output_shape, check_path, check_signature)
from flowjax._divergence import check_adaptive, evaluations_per_step  # noqa: F401 (re-exported)
from flowjax.paths import Prediction, convert
from flowjax.paths._conversions import check_prediction

_rk4_tableau = diffrax.ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]) - np.array([0.0, 1.0, 0.0, 0.0]),
    c=np.array([0.5, 0.5, 1.0]),
)


class RK4(diffrax.AbstractERK):
    """The classic 4-stage, 4th-order Runge–Kutta method (fixed steps).

    Its embedded error estimate (against the midpoint rule) is only
    first-order accurate; use it with a fixed step count.
    """

    tableau: ClassVar[diffrax.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., Any]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k)

    def order(self, terms):
        del terms
        return 4


class ODESolution(NamedTuple):
    """Result of :func:`solve_ode`.

    Attributes:
      samples: the state at `t1`, `[B, *dims]`.
      nfe: number of evaluations of the velocity field (a scalar array).
      ts: save times `[T]` when a trajectory was asked for, else None.
      trajectory: states `[T, B, *dims]` at `ts`, else None.
      stats: diffrax's statistics (`num_steps`, `num_accepted_steps`, ...).
    """

    samples: jax.Array
    nfe: jax.Array
    ts: jax.Array | None
    trajectory: jax.Array | None
    stats: dict


@eqx.filter_jit
def _diffeqsolve(velocity_fn, solver, t0, t1, x0, args, saveat, controller, max_steps):
    """The diffrax solve, compiled once per (velocity_fn, solver, shapes): `velocity_fn` is static."""

    def field(t, x, args):
        out = velocity_fn(x, jnp.full((x.shape[0],), t, dtype=x.dtype), args)
        return check_output_shape("velocity_fn", out, x)  # at trace time

    return diffrax.diffeqsolve(diffrax.ODETerm(field), solver, t0=t0, t1=t1, dt0=None, y0=x0,
                               args=args, saveat=saveat, stepsize_controller=controller,
                               max_steps=max_steps)


def solve_ode(velocity_fn, x0, args=None, *, solver=None, num_steps: int | None = None,
              ts=None, rtol: float = 1e-5, atol: float = 1e-5, t0: float = 0.0,
              t1: float = 1.0, save_trajectory: bool = False, num_save: int = 101,
              max_steps: int = 4096) -> ODESolution:
    """Integrates `dx/dt = velocity_fn(x, t, args)` for a batch of sources `x0`.

    Fixed steps: pass `num_steps` (a uniform grid) or `ts` (any monotone grid
    from `t0` to `t1`). Adaptive: pass neither, and an adaptive solver
    (Tsit5, Dopri5) runs with a PID controller at `rtol`/`atol`.

    Args:
      velocity_fn: `velocity_fn(x [B, *dims], t [B], args) -> [B, *dims]`.
        Pass data through `args` (e.g. params), not a new closure per call,
        so the compiled solve is reused.
      x0: initial states `[B, *dims]`.
      args: a pytree handed to `velocity_fn`.
      solver: a diffrax solver (`Euler`, `Midpoint`, `Heun`, :class:`RK4`,
        `Tsit5`, `Dopri5`, ...); Dopri5 by default.
      num_steps: number of uniform steps.
      ts: a user time grid `[N + 1]` (overrides `num_steps`).
      rtol, atol: tolerances of the adaptive controller.
      t0, t1: start and end times; `t0=1, t1=0` integrates data to noise.
      save_trajectory: also return the states at `num_save` uniform times
        (at the grid times for a fixed grid).
      num_save: number of saved times for adaptive solves.
      max_steps: step cap of the adaptive solver.

    Returns:
      An :class:`ODESolution` with the samples and the NFE.
    """
    check_signature("velocity_fn", velocity_fn, 3)
    solver = diffrax.Dopri5() if solver is None else solver
    init_evals, step_evals = evaluations_per_step(solver)
    check_array("x0", x0)
    check_finite("x0", x0)
    check_number("t0", t0)
    check_number("t1", t1)
    if not (0.0 <= t0 <= 1.0 and 0.0 <= t1 <= 1.0) or t0 == t1:
        raise ValueError(f"`t0` and `t1` must be distinct times in [0, 1], got {t0}, {t1}.")
    check_number("num_steps", num_steps, low=1, integer=True, allow_none=True)
    check_number("rtol", rtol, low=0.0, low_open=True)
    check_number("atol", atol, low=0.0, low_open=True)
    check_number("num_save", num_save, low=2, integer=True)
    check_number("max_steps", max_steps, low=1, integer=True)

    if ts is None and num_steps is not None:
        ts = jnp.linspace(t0, t1, num_steps + 1)
    if ts is not None:
        grid = check_grid("ts", ts, increasing=t1 > t0, start=t0, end=t1)
        ts = jnp.asarray(ts, dtype=x0.dtype)
        controller = diffrax.StepTo(ts=ts)
        saveat = diffrax.SaveAt(ts=ts) if save_trajectory else diffrax.SaveAt(t1=True)
        steps_cap = int(grid.size)
    else:
        check_adaptive(solver)
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        save_ts = jnp.linspace(t0, t1, num_save, dtype=x0.dtype)
        saveat = diffrax.SaveAt(ts=save_ts) if save_trajectory else diffrax.SaveAt(t1=True)
        steps_cap = max_steps

    sol = _diffeqsolve(velocity_fn, solver, t0, t1, x0, args, saveat, controller, steps_cap)
    nfe = init_evals + step_evals * sol.stats["num_steps"]
    if save_trajectory:
        return ODESolution(sol.ys[-1], nfe, sol.ts, sol.ys, sol.stats)
    return ODESolution(sol.ys[-1], nfe, None, None, sol.stats)


def model_velocity(apply_fn, *, path=None, prediction: Prediction = Prediction.VELOCITY):
    """Wraps a model function into `velocity_fn(x, t, args)` for :func:`solve_ode`.

    `args` is `(params, cond)`. A data- or noise-prediction model is turned
    into a velocity with :func:`flowjax.paths.convert` (then `path` is needed).
    """
    check_signature("apply_fn", apply_fn, 4)
    check_prediction("prediction", prediction)
    if path is not None:
        check_path("path", path)
    if prediction != Prediction.VELOCITY and path is None:
        raise ValueError("`path` is needed to convert a non-velocity prediction.")

    def velocity_fn(x, t, args):
        params, cond = args
        out = apply_fn(params, x, t, cond)
        if prediction == Prediction.VELOCITY:
            return out
        return convert(path, x, t, out, given=prediction, to=Prediction.VELOCITY)

    return velocity_fn
