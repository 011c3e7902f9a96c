r"""Few-step sampling with flow maps, and reflow pairs from an ODE.

A flow map (MeanFlow, shortcut model) is an average velocity `u(x, r, t)`
with :math:`x_t = x_r + (t - r) u(x_r, r, t)` (see :mod:`flowjax.losses`);
:func:`solve_flow_map` chains such jumps over a time grid, one evaluation
per jump. :func:`reflow_pairs` integrates a velocity field to build the
couplings :math:`(x_0, \mathrm{ODE}(x_0))` that reflow trains on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flowjax._checks import (broadcast_time, check_array, check_finite,
                             check_grid, check_number, check_output_shape, check_signature)
from flowjax.sample._ode import ODESolution, solve_ode


def model_average_velocity(apply_fn):
    """Wraps `apply_fn(params, x, r, t, cond)` into `average_fn(x, r, t, args)`, `args = (params, cond)`."""
    check_signature("apply_fn", apply_fn, 5)

    def average_fn(x, r, t, args):
        params, cond = args
        return apply_fn(params, x, r, t, cond)

    return average_fn


def _grid(num_steps, ts, dtype):
    if ts is None:
        check_number("num_steps", num_steps, low=1, integer=True)
        return jnp.linspace(0.0, 1.0, int(num_steps) + 1, dtype=dtype)
    return jnp.asarray(check_grid("ts", ts), dtype)


def solve_flow_map(average_fn, x0, args=None, *, num_steps: int = 1, ts=None,
                   save_trajectory: bool = False) -> ODESolution:
    r"""Samples with a flow map: :math:`x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i)\,u(x_{t_i}, t_i, t_{i+1})`.

    One evaluation per jump, so `num_steps` is the NFE: 1 for one-step
    MeanFlow, `K` for a shortcut model sampled with `K` steps.

    Args:
      average_fn: `average_fn(x [B, *dims], r [B], t [B], args) -> [B, *dims]`
        (e.g. :func:`model_average_velocity`).
      x0: sources `[B, *dims]` at `ts[0]`.
      args: a pytree handed to `average_fn` (e.g. `(params, cond)`).
      num_steps: number of uniform jumps from 0 to 1.
      ts: any strictly increasing grid in [0, 1] instead (overrides `num_steps`).
      save_trajectory: also return the states at the grid times.

    Returns:
      An :class:`flowjax.sample.ODESolution` (no diffrax statistics: `stats`
      holds `num_steps`).
    """
    check_signature("average_fn", average_fn, 4)
    check_array("x0", x0)
    check_finite("x0", x0)
    grid = _grid(num_steps, ts, x0.dtype)

    def jump(x, rt):
        r, t = rt
        rb = jnp.full(x.shape[:1], r, x.dtype)
        tb = jnp.full(x.shape[:1], t, x.dtype)
        u = check_output_shape("average_fn", average_fn(x, rb, tb, args), x)
        x = x + broadcast_time(tb - rb, x) * u
        return x, x if save_trajectory else None

    x1, states = jax.lax.scan(jump, x0, (grid[:-1], grid[1:]))
    steps = grid.shape[0] - 1
    nfe = jnp.asarray(steps, jnp.int32)
    stats = {"num_steps": nfe}
    if save_trajectory:
        return ODESolution(x1, nfe, grid, jnp.concatenate([x0[None], states]), stats)
    return ODESolution(x1, nfe, None, None, stats)


def reflow_pairs(velocity_fn, x0, args=None, *, chunk_size: int | None = None, **solve_kwargs):
    r"""The coupling :math:`(x_0, \mathrm{ODE}(x_0))` of a velocity field, for reflow.

    Integrates :func:`flowjax.sample.solve_ode` (Dopri5 at 1e-5 by default)
    from each source; Liu, Gong and Liu (2022) train the next rectified flow
    on these pairs with :func:`flowjax.losses.reflow_loss`.

    Args:
      velocity_fn, args: as for :func:`flowjax.sample.solve_ode`.
      x0: sources `[N, *dims]`.
      chunk_size: integrate this many sources per solve (bounds memory; the
        adaptive step sizes are then chosen per chunk). All at once by default.
      **solve_kwargs: passed to :func:`flowjax.sample.solve_ode` (`solver`,
        `rtol`, `atol`, `num_steps`, ...).

    Returns:
      `(x0, x1, nfe)` with `x1 [N, *dims]` and the total number of field
      evaluations (summed over chunks).
    """
    check_signature("velocity_fn", velocity_fn, 3)
    check_array("x0", x0)
    check_finite("x0", x0)
    n = x0.shape[0]
    if chunk_size is None:
        chunk_size = n
    check_number("chunk_size", chunk_size, low=1, integer=True)
    outs, nfe = [], 0
    for start in range(0, n, chunk_size):
        sol = solve_ode(velocity_fn, x0[start:start + chunk_size], args, **solve_kwargs)
        outs.append(sol.samples)
        nfe += int(sol.nfe)
    return x0, jnp.concatenate(outs), nfe
