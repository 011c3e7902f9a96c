r"""Log-likelihoods through the divergence ODE (continuous change of variables).

The divergence ODE, its exact and Hutchinson traces and the references are
described in `flowjax/_divergence.py`, which this module and
:func:`flowjax.losses.cnf_mle_loss` share.

The reverse solve starts at the data end, t = 1, where the field of a data-
or noise-prediction model comes from the floored formulas of
:func:`flowjax.paths.convert`; the field and its divergence are finite at
t = 1, 1 - 1e-7, 1e-7 and 0 (tests/test_time_edges.py).
"""

from __future__ import annotations

import math
from typing import Callable

import diffrax
import jax.numpy as jnp
import numpy as np

from flowjax._checks import check_array, check_finite, check_number
from flowjax._divergence import Probe, standard_normal_log_prob  # noqa: F401 (re-exported)
from flowjax._divergence import (_check_likelihood_options, _reverse_grid, divergence_solve,
                                 draw_probes)
from flowjax._types import Batch, KeyArray, TimeGrid
from flowjax.sample._fields import _check_inputs
from flowjax.sample._solution import Adaptive, Solution, _resolve_grid


def log_likelihood(field: Callable, x1: Batch, *, key: KeyArray | None = None,
                   num_probes: int | None = None, probe: Probe = Probe.RADEMACHER,
                   source_log_prob: Callable = standard_normal_log_prob, solver=None,
                   num_steps: int | None = None, ts: TimeGrid | None = None,
                   adaptive: Adaptive | None = None) -> Solution:
    r"""`log p_1(x1)` of the flow of `field`, through the reverse divergence ODE.

    Compiled with :func:`equinox.filter_jit` over the field, as
    :func:`solve_ode`. The solve is differentiable (diffrax's
    discretise-then-optimise adjoint); :func:`flowjax.losses.cnf_mle_loss` is
    the same computation as a training loss.

    Args:
      field: a velocity field `field(x [B, *dims], t [B]) -> [B, *dims]`.
      x1: data points `[B, *dims]`.
      key: PRNG key for the Hutchinson probes (required iff `num_probes`).
      num_probes: None for the exact Jacobian trace; else the number of
        Hutchinson probes per sample (fixed along the trajectory).
      probe: Rademacher (lower variance) or Gaussian probes.
      source_log_prob: `log p_0`, per sample; standard normal by default.
      solver: a diffrax solver; Dopri5 by default.
      num_steps: a uniform grid of this many steps from 1 back to 0.
      ts: a strictly monotone grid `[N + 1]` between 0 and 1 instead (walked
        from 1 to 0 in either order).
      adaptive: adaptive step sizes (:class:`Adaptive`, the default).

    Returns:
      A :class:`Solution` with `samples` the points `x1`, `log_prob` `[B]`, and
      `stats["nfe"]` the evaluations of the augmented field (each one velocity
      plus its divergence).
    """
    x1 = _check_inputs(field, x1, "x1")
    solver = diffrax.Dopri5() if solver is None else solver
    _check_likelihood_options(solver, source_log_prob, num_probes, key, probe)
    ts, adaptive, _, _ = _resolve_grid(x1, num_steps=num_steps, ts=ts, adaptive=adaptive,
                                       t0=None, t1=None, default_adaptive=True)
    controller, dt0, cap = _reverse_grid(solver, ts, adaptive)
    log_prob, stats = divergence_solve(field, x1, draw_probes(key, num_probes, probe, x1),
                                       solver=solver, controller=controller, dt0=dt0,
                                       max_steps=cap, source_log_prob=source_log_prob)
    grid = controller.ts if ts is not None else jnp.asarray([1.0, 0.0], x1.dtype)
    return Solution(x1, grid, None, log_prob, stats)


def _check_bpd_options(log_prob, shape, num_bins, data_range):
    check_array("log_prob", log_prob, min_rank=0)
    if log_prob.size == 0:
        raise ValueError(f"`log_prob` is empty (shape {tuple(log_prob.shape)}).")
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
            for s in shape):
        raise ValueError(f"`shape` must be a tuple of positive ints, got {shape!r}.")
    check_number("num_bins", num_bins, low=1, integer=True)
    check_number("data_range", data_range, low=0.0, low_open=True)
    return check_finite("log_prob", log_prob)


def bits_per_dim(log_prob, shape, *, num_bins: int = 256, data_range: float = 2.0):
    r"""Bits per dimension of discrete data from a continuous log-density.

    For data quantized to `num_bins` levels spread over an interval of
    length `data_range` (256 levels on [-1, 1] for images scaled that way),
    each bin has width :math:`\Delta = \text{range}/\text{bins}` and

    .. math:: \text{bpd} = \frac{-\log p(x)}{D\log 2} - \log_2\Delta,

    which is the usual figure for a model of dequantized data (an upper bound
    on the discrete model's bpd under uniform dequantization).

    Args:
      log_prob: `[B]` (or scalar) finite log-densities in nats.
      shape: the shape of one data point (D is its size).
    """
    log_prob = _check_bpd_options(log_prob, shape, num_bins, data_range)
    d = math.prod(shape)
    return -log_prob / (d * math.log(2.0)) - math.log2(data_range / num_bins)
