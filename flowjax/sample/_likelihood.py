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

import diffrax
import numpy as np

from flowjax._checks import (check_array, check_callable, check_finite, check_number,
                             check_signature)
from flowjax._divergence import Probe, standard_normal_log_prob  # noqa: F401 (re-exported)
from flowjax._divergence import (check_probes, divergence_solve, draw_probes,
                                 evaluations_per_step, reverse_controller)


def log_likelihood(velocity_fn, x1, args=None, *, key=None, num_probes: int | None = None,
                   probe: Probe = Probe.RADEMACHER, source_log_prob=standard_normal_log_prob,
                   solver=None, rtol: float = 1e-5, atol: float = 1e-5,
                   num_steps: int | None = None, ts=None, max_steps: int = 4096):
    r"""`log p_1(x1)` of the flow of `velocity_fn`, through the reverse divergence ODE.

    The solve is compiled once per `velocity_fn`, as in :func:`solve_ode`:
    pass parameters and data through `args`. Arrays that `velocity_fn` reads
    from a closure or a global are compiled in as constants, so a later call
    with the same function object would not see them change. The solve is
    differentiable (diffrax's discretise-then-optimise adjoint);
    :func:`flowjax.losses.cnf_mle_loss` is the same computation as a
    training loss.

    Args:
      velocity_fn: `velocity_fn(x [B, *dims], t [B], args) -> [B, *dims]`.
      x1: data points `[B, *dims]`.
      args: a pytree passed to `velocity_fn`.
      key: PRNG key for the Hutchinson probes (required iff `num_probes`).
      num_probes: None for the exact Jacobian trace; else the number of
        Hutchinson probes per sample (fixed along the trajectory).
      probe: Rademacher (lower variance) or Gaussian probes.
      source_log_prob: `log p_0`, per sample; standard normal by default.
      solver, rtol, atol, num_steps, max_steps: as in :func:`solve_ode`
        (Dopri5 adaptive by default).
      ts: an increasing grid `[N + 1]` from 0 to 1 (e.g. from :mod:`flowjax.time`),
        walked backwards from 1 to 0; overrides `num_steps`.

    Returns:
      `(log_prob [B], nfe)`; nfe counts evaluations of the augmented field
      (each one velocity plus its divergence).
    """
    check_signature("velocity_fn", velocity_fn, 3)
    check_array("x1", x1)
    check_finite("x1", x1)
    solver = diffrax.Dopri5() if solver is None else solver
    evaluations_per_step(solver)  # a TypeError naming `solver` for what it cannot count
    check_callable("source_log_prob", source_log_prob)
    check_probes(num_probes, key, probe)
    controller, dt0, cap = reverse_controller(solver, rtol=rtol, atol=atol, num_steps=num_steps,
                                              ts=ts, max_steps=max_steps, dtype=x1.dtype)
    probes = draw_probes(key, num_probes, probe, x1)
    return divergence_solve(velocity_fn, x1, args, probes, solver=solver, controller=controller,
                            dt0=dt0, max_steps=cap, source_log_prob=source_log_prob)


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
    check_array("log_prob", log_prob, min_rank=0)
    if log_prob.size == 0:
        raise ValueError(f"`log_prob` is empty (shape {tuple(log_prob.shape)}).")
    check_finite("log_prob", log_prob)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
            for s in shape):
        raise ValueError(f"`shape` must be a tuple of positive ints, got {shape!r}.")
    check_number("num_bins", num_bins, low=1, integer=True)
    check_number("data_range", data_range, low=0.0, low_open=True)
    d = math.prod(shape)
    return -log_prob / (d * math.log(2.0)) - math.log2(data_range / num_bins)
