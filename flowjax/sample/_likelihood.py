r"""Log-likelihoods through the divergence ODE (continuous change of variables).

Along a trajectory of :math:`\dot x = v(x, t)`,
:math:`\frac{d}{dt}\log p_t(x_t) = -\nabla\cdot v(x_t, t)` (Chen et al. 2018,
"Neural ordinary differential equations", Thm. 1), so

.. math:: \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \nabla\cdot v(x_t, t)\,dt,

computed by solving backwards from the data at t = 1 to t = 0 with the
divergence integrated alongside. The divergence is the exact trace of the
Jacobian (`d` forward-mode passes; small `d`) or Hutchinson's estimate
:math:`E[\varepsilon^\top J\varepsilon]` with fixed probes per sample
(Grathwohl et al. 2019, "FFJORD"), which is unbiased for the log-likelihood.

The reverse solve starts at the data end, t = 1, where the field of a data-
or noise-prediction model comes from the floored formulas of
:func:`flowjax.paths.convert`; the field and its divergence are finite at
t = 1, 1 - 1e-7, 1e-7 and 0 (tests/test_time_edges.py).
"""

from __future__ import annotations

import enum
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from flowjax._checks import (check_array, check_callable, check_finite, check_grid, check_key,
                             check_number, check_output_shape, check_signature)
from flowjax.sample._ode import check_adaptive, evaluations_per_step


class Probe(enum.Enum):
    """Distribution of Hutchinson probes."""

    RADEMACHER = "rademacher"
    GAUSSIAN = "gaussian"


def standard_normal_log_prob(x):
    """`log N(x; 0, I)` per sample, for `x: [B, *dims]`."""
    check_array("x", x)
    check_finite("x", x)
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * jnp.sum(flat ** 2, -1) - 0.5 * flat.shape[1] * math.log(2.0 * math.pi)


def _field(velocity_fn, x, t, args):
    return check_output_shape("velocity_fn", velocity_fn(x, t, args), x)


def _exact_divergence(velocity_fn, x, t, args):
    def single(xi, ti):
        f = lambda y: _field(velocity_fn, y[None], ti[None], args)[0]  # noqa: E731
        jac = jax.jacfwd(f)(xi).reshape(xi.size, xi.size)
        return f(xi), jnp.trace(jac)

    return jax.vmap(single)(x, t)


def _hutchinson_divergence(velocity_fn, x, t, args, probes):
    def jvp(probe):
        return jax.jvp(lambda y: _field(velocity_fn, y, t, args), (x,), (probe,))

    v, jv = jax.vmap(jvp)(probes)  # [P, B, ...]
    est = jnp.sum((probes * jv).reshape(probes.shape[0], x.shape[0], -1), -1)
    return v[0], jnp.mean(est, 0)


def log_likelihood(velocity_fn, x1, args=None, *, key=None, num_probes: int | None = None,
                   probe: Probe = Probe.RADEMACHER, source_log_prob=standard_normal_log_prob,
                   solver=None, rtol: float = 1e-5, atol: float = 1e-5,
                   num_steps: int | None = None, ts=None, max_steps: int = 4096):
    r"""`log p_1(x1)` of the flow of `velocity_fn`, through the reverse divergence ODE.

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
    init_evals, step_evals = evaluations_per_step(solver)
    if not isinstance(probe, Probe):
        raise TypeError(f"`probe` must be a flowjax.sample.Probe, got {probe!r}.")
    check_callable("source_log_prob", source_log_prob)
    check_number("rtol", rtol, low=0.0, low_open=True)
    check_number("atol", atol, low=0.0, low_open=True)
    check_number("num_steps", num_steps, low=1, integer=True, allow_none=True)
    check_number("max_steps", max_steps, low=1, integer=True)
    if ts is not None:
        check_grid("ts", ts, start=0.0, end=1.0)
    elif num_steps is None:
        check_adaptive(solver)
    if num_probes is not None:
        check_number("num_probes", num_probes, low=1, integer=True)
        if key is None:
            raise ValueError("`key` is needed for Hutchinson probes (`num_probes` is set).")
        check_key("key", key)
        shape = (num_probes,) + x1.shape
        probes = (jax.random.rademacher(key, shape, x1.dtype) if probe == Probe.RADEMACHER
                  else jax.random.normal(key, shape, x1.dtype))

    def field(t, state, args):
        x, _ = state
        tb = jnp.full((x.shape[0],), t, x.dtype)
        if num_probes is None:
            v, div = _exact_divergence(velocity_fn, x, tb, args)
        else:
            v, div = _hutchinson_divergence(velocity_fn, x, tb, args, probes)
        return v, div

    if ts is not None:
        grid = jnp.asarray(ts, x1.dtype)[::-1]
        controller, dt0, cap = diffrax.StepTo(ts=grid), None, int(grid.shape[0])
    elif num_steps is not None:
        controller, dt0 = diffrax.ConstantStepSize(), -1.0 / num_steps
        cap = num_steps
    else:
        controller, dt0, cap = diffrax.PIDController(rtol=rtol, atol=atol), None, max_steps
    state0 = (x1, jnp.zeros(x1.shape[:1], x1.dtype))
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, t0=1.0, t1=0.0, dt0=dt0,
                              y0=state0, args=args, stepsize_controller=controller,
                              max_steps=cap)
    x0, int_div = sol.ys[0][-1], sol.ys[1][-1]  # int_div = int_1^0 div v dt
    nfe = init_evals + step_evals * sol.stats["num_steps"]
    return source_log_prob(x0) + int_div, nfe


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
