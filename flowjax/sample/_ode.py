r"""ODE sampling: one entry point for diffrax's solvers and flowjax's own.

:func:`solve_ode` integrates :math:`dx/dt = v(x, t)` from `t0` to `t1` (noise
to data by default, data to noise with `t0=1, t1=0`) for a whole batch. One
state `[B, *dims]` is integrated, so an adaptive controller measures the
error as the RMS over the whole batch (one step-size sequence for all
samples), which is what makes it fast on accelerators.

The ends: a solve evaluates the field at t = 0 and t = 1 exactly (a grid's
end points, Heun's and Dopri5's last stages), where alpha or sigma_total
vanish on most paths. :class:`ModelVelocity` converts data, noise and score
predictions with :func:`flowjax.paths.convert`, which is finite there, so
every sampler here is finite on grids that contain 0, 1e-7, 1 - 1e-7 and 1.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np

from flowjax._checks import check_number, check_output_shape
from flowjax._divergence import _check_adaptive, evaluations_per_step
from flowjax._types import Batch, TimeGrid
from flowjax.sample._fields import _check_inputs
from flowjax.sample._solution import Adaptive, GridSolver, Solution, _resolve_grid, make_stats

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


def vector_field(t, x, field):
    """diffrax's `f(t, y, args)` for a field `field(x, t [B])` passed as `args`."""
    out = field(x, jnp.full((x.shape[0],), t, dtype=x.dtype))
    return check_output_shape("field", out, x)  # at trace time


@eqx.filter_jit
def _solve(field, solver, x0, ts, adaptive, t0, t1, save_trajectory, num_save):
    """The compiled solve: one program per field structure, solver, grid kind and shapes."""
    if isinstance(solver, GridSolver):
        return solver.solve(field, x0, ts, save_trajectory)
    if ts is not None:
        controller, cap = diffrax.StepTo(ts=ts), ts.shape[0] - 1
        save_ts = ts
    else:
        controller = diffrax.PIDController(rtol=adaptive.rtol, atol=adaptive.atol)
        cap, save_ts = adaptive.max_steps, jnp.linspace(t0, t1, num_save, dtype=x0.dtype)
    saveat = diffrax.SaveAt(ts=save_ts) if save_trajectory else diffrax.SaveAt(t1=True)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(vector_field), solver, t0=t0, t1=t1, dt0=None,
                              y0=x0, args=field, saveat=saveat, stepsize_controller=controller,
                              max_steps=cap)
    init_evals, step_evals = evaluations_per_step(solver)
    stats = make_stats(init_evals + step_evals * sol.stats["num_steps"], sol.stats["num_steps"],
                       sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"])
    if not save_trajectory:
        save_ts = ts if ts is not None else jnp.asarray([t0, t1], x0.dtype)
    return Solution(sol.ys[-1], save_ts, sol.ys if save_trajectory else None, None, stats)


def solve_ode(field: Callable, x0: Batch, *, solver=None, num_steps: int | None = None,
              ts: TimeGrid | None = None, adaptive: Adaptive | None = None,
              t0: float | None = None, t1: float | None = None, save_trajectory: bool = False,
              num_save: int = 101) -> Solution:
    """Integrates `dx/dt = field(x, t)` for a batch of sources `x0`.

    Compiled with :func:`equinox.filter_jit` over the field: a field rebuilt
    from the same function with new parameters reuses the program. Works
    inside `jax.jit`, `jax.vmap` and (fixed grids) `jax.grad`.

    Args:
      field: a velocity field `field(x [B, *dims], t [B]) -> [B, *dims]`, e.g.
        :class:`ModelVelocity` or any callable pytree.
      x0: the states at `t0` (or `ts[0]`), `[B, *dims]`.
      solver: a diffrax solver (`Euler`, `Midpoint`, `Heun`, :class:`RK4`,
        `Tsit5`, `Dopri5`, ...), or flowjax's :class:`DPMSolver2M` or
        :class:`EDMHeun` (fixed grids). Dopri5 by default.
      num_steps: a uniform grid of this many steps from `t0` to `t1`.
      ts: any strictly monotone grid `[N + 1]` in [0, 1] instead (its order
        gives the direction).
      adaptive: adaptive step sizes (:class:`Adaptive`); the default when
        neither `num_steps` nor `ts` is given.
      t0: start time (default 0; `t0=1, t1=0` integrates data to noise).
      t1: end time (default 1).
      save_trajectory: also return the states at the grid times (an adaptive
        solve saves them at `num_save` uniform times).
      num_save: number of saved times of an adaptive solve.

    Returns:
      A :class:`Solution`.
    """
    x0 = _check_inputs(field, x0)
    solver = diffrax.Dopri5() if solver is None else solver
    ts, adaptive, t0, t1 = _ode_grid(x0, solver, num_steps, ts, adaptive, t0, t1, num_save)
    return _solve(field, solver, x0, ts, adaptive, t0, t1, save_trajectory, num_save)


def _ode_grid(x0, solver, num_steps, ts, adaptive, t0, t1, num_save):
    """The solver and grid options of :func:`solve_ode`, checked."""
    check_number("num_save", num_save, low=2, integer=True)
    own = isinstance(solver, GridSolver)
    if not own:
        evaluations_per_step(solver)  # a TypeError naming `solver` for what it cannot count
    grid = _resolve_grid(x0, num_steps=num_steps, ts=ts, adaptive=adaptive, t0=t0, t1=t1,
                         default_adaptive=not own, allow_adaptive=not own)
    if grid[1] is not None:
        _check_adaptive(solver)
    return grid
