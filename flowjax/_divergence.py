r"""The divergence ODE (instantaneous change of variables), shared below the public layers.

Along a trajectory of :math:`\dot x = v(x, t)`,
:math:`\frac{d}{dt}\log p_t(x_t) = -\nabla\cdot v(x_t, t)` (Chen et al. 2018,
"Neural ordinary differential equations", Thm. 1), so

.. math:: \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \nabla\cdot v(x_t, t)\,dt,

computed by solving backwards from the data at t = 1 to t = 0 with the
divergence integrated alongside. The divergence is the exact trace of the
Jacobian (`d` forward-mode passes; small `d`) or Hutchinson's estimate
:math:`E[\varepsilon^\top J\varepsilon]` with probes fixed along the
trajectory (Grathwohl et al. 2019, "FFJORD"), unbiased for the log-likelihood.

This private module sits below both :mod:`flowjax.losses` (maximum-likelihood
CNF training) and :mod:`flowjax.sample` (likelihood evaluation), which
re-export its public names; it knows nothing of optimizers.
"""

from __future__ import annotations

import enum
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from flowjax._checks import (check_array, check_callable, check_finite, check_key,
                             check_number, check_output_shape, error_if)


class Probe(enum.Enum):
    """Distribution of Hutchinson probes."""

    RADEMACHER = "rademacher"
    GAUSSIAN = "gaussian"


def _checked_batch(name, x):
    """`x` checked: a floating array with a batch axis, with a compiled finiteness check."""
    check_array(name, x)
    return check_finite(name, x)


def standard_normal_log_prob(x):
    """`log N(x; 0, I)` per sample, for `x: [B, *dims]`."""
    x = _checked_batch("x", x)
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * jnp.sum(flat ** 2, -1) - 0.5 * flat.shape[1] * math.log(2.0 * math.pi)


def _check_adaptive(solver):
    """Adaptive step sizes need an embedded error estimate."""
    if not (isinstance(solver, diffrax.AbstractERK) and bool(np.any(solver.tableau.b_error))):
        raise ValueError(f"adaptive solves need a `solver` with an error estimate (Tsit5, "
                         f"Dopri5), got {solver!r}; or pass `num_steps` or `ts`.")


def evaluations_per_step(solver) -> tuple[int, int]:
    """`(initial, per_step)` velocity evaluations of a diffrax solver.

    Explicit RK methods with the first-same-as-last property (Dopri5, Tsit5)
    evaluate once at the start and `stages - 1` times per step (rejected
    steps included); others evaluate `stages` times per step. Checked against
    a counting callback in the tests.
    """
    if isinstance(solver, diffrax.Euler):
        return 0, 1
    if isinstance(solver, diffrax.AbstractERK):
        stages = len(solver.tableau.c) + 1
        return (1, stages - 1) if solver.tableau.fsal else (0, stages)
    raise TypeError(
        f"`solver` must be diffrax.Euler or an explicit Runge-Kutta solver, got {solver!r}.")


def _check_likelihood_options(solver, source_log_prob, num_probes, key, probe):
    """Checks the options of a likelihood solve: the solver, `log p_0`, and the trace
    (`num_probes` None for the exact trace, or a positive int, which needs a key)."""
    evaluations_per_step(solver)  # a TypeError naming `solver` for what it cannot count
    check_callable("source_log_prob", source_log_prob)
    if not isinstance(probe, Probe):
        raise TypeError(f"`probe` must be a flowjax.sample.Probe, got {probe!r}.")
    if num_probes is None:
        return
    check_number("num_probes", num_probes, low=1, integer=True)
    if key is None:
        raise ValueError("`key` is needed for Hutchinson probes (`num_probes` is set).")
    check_key("key", key)


def draw_probes(key, num_probes, probe, like):
    """`[P, *like.shape]` probes (None for the exact trace), fixed along the trajectory."""
    if num_probes is None:
        return None
    shape = (int(num_probes),) + like.shape
    if probe == Probe.RADEMACHER:
        return jax.random.rademacher(key, shape, like.dtype)
    return jax.random.normal(key, shape, like.dtype)


def _reverse_grid(solver, ts, adaptive):
    """The step options of a solve from t = 1 back to t = 0: `(controller, dt0, max_steps)`.

    `ts` is a checked grid between 0 and 1 in either order (walked from 1 to
    0); else `adaptive` (an :class:`flowjax.sample.Adaptive`, the solver needs
    an error estimate). Traced grids are fine.
    """
    if ts is not None:
        rev = jnp.where(ts[0] < ts[-1], ts[::-1], ts)
        rev = error_if(rev, (rev[0] != 1) | (rev[-1] != 0), "`ts` must run between 0 and 1.")
        return diffrax.StepTo(ts=rev), None, ts.shape[0] - 1
    _check_adaptive(solver)
    return (diffrax.PIDController(rtol=adaptive.rtol, atol=adaptive.atol), None,
            adaptive.max_steps)


def _field(field, x, t):
    return check_output_shape("field", field(x, t), x)  # at trace time


def _exact_divergence(field, x, t):
    """The exact trace as `sum_i e_i^T J e_i`: one jvp of the whole batch per basis vector.

    Like the Hutchinson estimate, this takes the field to act on each sample
    separately (no coupling across the batch, as for every flowjax model); a
    jvp of the batch then runs the network on the whole batch at once, one
    batched pass per basis vector, where per-sample `jacfwd` under `vmap`
    would trace the network for a single sample.
    """
    d = math.prod(x.shape[1:])
    basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])

    def jvp(e):
        return jax.jvp(lambda y: _field(field, y, t), (x,), (jnp.broadcast_to(e, x.shape),))

    v, jv = jax.vmap(jvp)(basis)  # [d, B, *dims]
    diag = jnp.einsum("kbk->b", jv.reshape(d, x.shape[0], d))
    return v[0], diag


def _hutchinson_divergence(field, x, t, probes):
    def jvp(probe):
        return jax.jvp(lambda y: _field(field, y, t), (x,), (probe,))

    v, jv = jax.vmap(jvp)(probes)  # [P, B, ...]
    est = jnp.sum((probes * jv).reshape(probes.shape[0], x.shape[0], -1), -1)
    return v[0], jnp.mean(est, 0)


def _augmented(t, state, ode_args):
    x, _ = state
    field, probes = ode_args
    tb = jnp.full((x.shape[0],), t, x.dtype)
    if probes is None:
        return _exact_divergence(field, x, tb)
    return _hutchinson_divergence(field, x, tb, probes)


@eqx.filter_jit
def divergence_solve(field, x1, probes, *, solver, controller, dt0, max_steps,
                     source_log_prob=standard_normal_log_prob, adjoint=None):
    """`(log p_1(x1) [B], stats)` through the reverse divergence ODE; no argument checks.

    Compiled once per field structure (and solver, controller, shapes): the
    field's arrays (parameters, conditions) and the Hutchinson probes (or
    None for the exact trace) are ODE arguments, never closed over, which is
    also what :class:`diffrax.BacksolveAdjoint` needs to differentiate them.
    `stats["nfe"]` counts evaluations of the augmented field (one velocity and
    its divergence each) in this forward solve.
    """
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    state0 = (x1, jnp.zeros(x1.shape[:1], x1.dtype))
    sol = diffrax.diffeqsolve(diffrax.ODETerm(_augmented), solver, t0=1.0, t1=0.0, dt0=dt0,
                              y0=state0, args=(field, probes), stepsize_controller=controller,
                              max_steps=max_steps, adjoint=adjoint)
    x0, int_div = sol.ys[0][-1], sol.ys[1][-1]  # int_div = int_1^0 div v dt
    init_evals, step_evals = evaluations_per_step(solver)
    stats = {name: jnp.asarray(value, jnp.int32) for name, value in (
        ("nfe", init_evals + step_evals * sol.stats["num_steps"]),
        ("num_steps", sol.stats["num_steps"]),
        ("num_accepted_steps", sol.stats["num_accepted_steps"]),
        ("num_rejected_steps", sol.stats["num_rejected_steps"]))}
    return source_log_prob(x0) + int_div, stats
