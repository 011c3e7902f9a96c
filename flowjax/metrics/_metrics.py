r"""Sample-quality and path metrics: exact W2, normalized path energy, straightness."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from flowjax._checks import check_grid, check_host_array, check_number
from flowjax._types import ArrayLike
from flowjax.couplings._common import host_sq_cost

#: Above this many points the exact assignment gets too slow (O(n^3)).
MAX_W2_POINTS = 4000


def w2(x: ArrayLike, y: ArrayLike) -> float:
    r"""Exact 2-Wasserstein distance between two equal-size point clouds.

    .. math:: W_2(x, y) = \Big(\min_\pi \frac1n \sum_i \|x_i - y_{\pi(i)}\|^2\Big)^{1/2},

    solved as an assignment problem with SciPy's `linear_sum_assignment` in
    float64 on the host. Exact for up to `MAX_W2_POINTS` points a side.

    Args:
      x: `[n, *dims]` array (flattened per point).
      y: `[n, *dims]` array, the other cloud.

    Returns:
      The distance, a Python float.

    Examples:
      The distance ignores the order of the points:

      >>> import numpy as np
      >>> from flowjax.metrics import w2
      >>> x = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
      >>> w2(x, x[::-1]), w2(x, x + np.array([3.0, 4.0]))
      (0.0, 5.0)
    """
    x, y = _check_clouds(x, y)
    cost = host_sq_cost(x, y)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def _check_clouds(x, y):
    x, y = check_host_array("x", x), check_host_array("y", y)
    if x.shape != y.shape:
        raise ValueError(f"`x` and `y` must have the same shape, got {x.shape} and {y.shape}.")
    if x.shape[0] > MAX_W2_POINTS:
        raise ValueError(f"`x` has {x.shape[0]} points; exact W2 is limited to {MAX_W2_POINTS}.")
    return x, y


def _check_times(velocities, ts):
    """`velocities: [T, B, *dims]` (finite) and `ts: [T]`, a monotone grid in [0, 1], on host."""
    velocities = check_host_array("velocities", velocities, min_rank=2)
    grid = check_grid("ts", ts, increasing=None)
    if grid.shape != velocities.shape[:1]:
        raise ValueError(f"`ts` must have one time per state of `velocities`: shape "
                         f"{velocities.shape[:1]}, got {grid.shape}.")
    return velocities, grid


def _check_traj(trajectory, velocities, ts):
    trajectory = check_host_array("trajectory", trajectory, min_rank=2)
    if not hasattr(velocities, "shape") or velocities.shape != trajectory.shape:
        got = getattr(velocities, "shape", type(velocities).__name__)
        raise ValueError(f"`velocities` must have shape {trajectory.shape} (that of "
                         f"`trajectory`), got {got}.")
    return (trajectory, *_check_times(velocities, ts))


def _sq_norm(x):
    return np.sum(x.reshape(x.shape[0], x.shape[1], -1) ** 2, axis=-1)  # [T, B]


def path_energy(velocities: ArrayLike, ts: ArrayLike) -> float:
    r"""Path energy :math:`E\int_0^1 \|v(x_t, t)\|^2 dt` (trapezoid rule over `ts`).

    Computed in float64 on the host.

    Args:
      velocities: `[T, B, *dims]`, the field along trajectories.
      ts: `[T]` times, monotone, in [0, 1].

    Returns:
      The energy, a Python float.
    """
    velocities, ts = _check_times(velocities, ts)
    return float(abs(np.trapezoid(np.mean(_sq_norm(velocities), axis=1), ts)))


def normalized_path_energy(velocities: ArrayLike, ts: ArrayLike, w2_squared: float) -> float:
    r"""Signed normalized path energy :math:`(PE - W_2^2(p_0, p_1)) / W_2^2(p_0, p_1)`.

    The excess of the path energy :math:`PE = E\int_0^1 \|v(x_t, t)\|^2 dt`
    (:func:`path_energy`) over the optimal-transport cost, relative to that
    cost (Tong et al. 2023, "Improving and generalizing flow-based generative
    models with minibatch optimal transport", Sec. 5, report its absolute
    value). For a flow that carries :math:`p_0` to :math:`p_1`, :math:`PE
    \geq W_2^2` (Benamou-Brenier), so the value is :math:`\geq 0`, and 0
    exactly for the OT map run at constant speed (straight lines). A
    **negative** value means the flow moved mass less than the OT cost
    requires: it did not carry the samples all the way to the target (e.g.
    an undertrained field), or the two are measured on different sample
    sets and their W2 differ.

    Args:
      velocities: as for :func:`path_energy`.
      ts: as for :func:`path_energy`.
      w2_squared: :math:`W_2^2(p_0, p_1)`, positive.

    Returns:
      The signed normalized energy, a Python float.
    """
    check_number("w2_squared", w2_squared, low=0.0, low_open=True)
    return (path_energy(velocities, ts) - w2_squared) / w2_squared


def straightness(trajectory: ArrayLike, velocities: ArrayLike, ts: ArrayLike) -> float:
    r"""Straightness :math:`E\int_0^1 \|(Z_1 - Z_0) - v(Z_t, t)\|^2 dt` (Liu et al. 2022).

    Zero iff every trajectory is a straight line run at constant speed.
    Computed in float64 on the host.

    Args:
      trajectory: `[T, B, *dims]` states of the ODE from t = ts[0] to ts[-1].
      velocities: `[T, B, *dims]`, the field at those states.
      ts: `[T]` times (trapezoid rule).

    Returns:
      The straightness, a Python float.
    """
    trajectory, velocities, ts = _check_traj(trajectory, velocities, ts)
    chord = (trajectory[-1] - trajectory[0]) / (ts[-1] - ts[0])
    dev = np.mean(_sq_norm(chord[None] - velocities), axis=1)
    return float(abs(np.trapezoid(dev, ts)))
