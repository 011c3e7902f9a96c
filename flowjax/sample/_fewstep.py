r"""Few-step sampling with flow maps, and reflow pairs from an ODE.

A flow map (MeanFlow, shortcut model) is an average velocity `u(x, r, t)`
with :math:`x_t = x_r + (t - r) u(x_r, r, t)` (see :mod:`flowjax.losses`);
:func:`solve_flow_map` chains such jumps over a time grid, one evaluation
per jump. :func:`reflow_pairs` integrates a velocity field to build the
couplings :math:`(x_0, \mathrm{ODE}(x_0))` that reflow trains on.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from flowjax._checks import broadcast_time, check_number, check_output_shape
from flowjax._types import Batch, TimeGrid
from flowjax.sample._fields import _check_inputs
from flowjax.sample._ode import solve_ode
from flowjax.sample._solution import Solution, _resolve_grid, make_stats


@eqx.filter_jit
def _jumps(flow_map, x0, grid, save_trajectory):
    def jump(x, rt):
        r, t = rt
        rb = jnp.full(x.shape[:1], r, x.dtype)
        tb = jnp.full(x.shape[:1], t, x.dtype)
        u = check_output_shape("flow_map", flow_map(x, rb, tb), x)  # at trace time
        x = x + broadcast_time(tb - rb, x) * u
        return x, x if save_trajectory else None

    x1, states = jax.lax.scan(jump, x0, (grid[:-1], grid[1:]))
    n = grid.shape[0] - 1
    trajectory = jnp.concatenate([x0[None], states]) if save_trajectory else None
    return Solution(x1, grid, trajectory, None, make_stats(n, n))


def solve_flow_map(flow_map: Callable, x0: Batch, *, num_steps: int | None = None,
                   ts: TimeGrid | None = None, t0: float | None = None,
                   t1: float | None = None, save_trajectory: bool = False) -> Solution:
    r"""Samples with a flow map: :math:`x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i)\,u(x_{t_i}, t_i, t_{i+1})`.

    One evaluation per jump, so the number of steps is the NFE: 1 for
    one-step MeanFlow, `K` for a shortcut model sampled with `K` steps.
    Compiled with :func:`equinox.filter_jit` over the flow map.

    Args:
      flow_map: `flow_map(x [B, *dims], r [B], t [B]) -> [B, *dims]`, the
        average velocity from `r` to `t` (e.g. :class:`ModelFlowMap`).
      x0: sources `[B, *dims]` at the grid's first time.
      num_steps: a uniform grid of this many jumps from `t0` to `t1` (one
        jump from 0 to 1 when no grid is given).
      ts: any strictly monotone grid `[N + 1]` in [0, 1] instead.
      t0: start time with `num_steps` (default 0).
      t1: end time with `num_steps` (default 1).
      save_trajectory: also return the states at the grid times.

    Returns:
      A :class:`Solution` (`nfe` = `num_steps` = the number of jumps).
    """
    x0 = _check_inputs(flow_map, x0, num_times=2, field_name="flow_map")
    num_steps = 1 if ts is None and num_steps is None else num_steps
    grid, _, _, _ = _resolve_grid(x0, num_steps=num_steps, ts=ts, adaptive=None, t0=t0, t1=t1,
                                  default_adaptive=False)
    return _jumps(flow_map, x0, grid, save_trajectory)


def reflow_pairs(field: Callable, x0: Batch, *, chunk_size: int | None = None,
                 **solve_kwargs) -> Solution:
    r"""The coupling :math:`(x_0, \mathrm{ODE}(x_0))` of a velocity field, for reflow.

    Integrates :func:`flowjax.sample.solve_ode` (Dopri5 at 1e-5 by default)
    from each source; Liu, Gong and Liu (2022) train the next rectified flow
    on the pairs `(x0, solution.samples)` with :func:`flowjax.losses.reflow_loss`.

    Args:
      field: the velocity field, as for :func:`flowjax.sample.solve_ode`.
      x0: sources `[N, *dims]`.
      chunk_size: integrate this many sources per solve (bounds memory; the
        adaptive step sizes are then chosen per chunk). All at once by default.
      **solve_kwargs: the keywords of :func:`flowjax.sample.solve_ode`
        (`solver`, `num_steps`, `ts`, `adaptive`, ...).

    Returns:
      A :class:`Solution` whose `samples` are the targets `[N, *dims]` and
      whose stats are summed over the chunks.
    """
    x0 = _check_inputs(field, x0)
    n = x0.shape[0]
    chunk_size = check_number("chunk_size", n if chunk_size is None else chunk_size, low=1,
                              integer=True)
    sols = [solve_ode(field, x0[start:start + chunk_size], **solve_kwargs)
            for start in range(0, n, chunk_size)]
    stats = jax.tree.map(lambda *v: sum(v), *[s.stats for s in sols])
    return Solution(jnp.concatenate([s.samples for s in sols]), sols[0].ts, None, None, stats)
