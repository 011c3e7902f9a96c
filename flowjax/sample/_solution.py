"""The one result type of every sampler, the adaptive step-size option, and the grid rules.

Every sampler takes its time grid the same way: `num_steps=N` (uniform from
`t0` to `t1`), `ts=grid` (any strictly monotone grid; a traced array is
fine) or `adaptive=Adaptive(...)` (ODE and likelihood solves). Structural
checks run at trace time; the values of a grid are checked with compiled
checks (:func:`flowjax._checks.error_if`), so the samplers run under
`jax.jit`.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp

from flowjax._checks import check_instance, check_number, check_path, error_if
from flowjax.paths._conversions import check_prediction
from flowjax._types import Array, Batch, Float, Integer


class Solution(eqx.Module):
    """What every sampler returns.

    Attributes:
      samples: the state at the end time, `[B, *dims]` (for
        :func:`flowjax.sample.reflow_pairs`, the ODE targets).
      ts: the time grid used, `[N + 1]`; for an adaptive solve the save times
        when a trajectory was asked for, else the two end times.
      trajectory: the states at `ts`, `[T, B, *dims]`, or None.
      log_prob: the log-density of `samples`, `[B]` (likelihood solves), or None.
      stats: int32 arrays `nfe` (field evaluations), `num_steps`,
        `num_accepted_steps` and `num_rejected_steps` (zeros where a sampler
        has no step control).
    """

    samples: Batch
    ts: Float[Array, " T"]
    trajectory: Float[Array, "T B *dims"] | None = None
    log_prob: Float[Array, " B"] | None = None
    stats: dict[str, Integer[Array, ""]] = eqx.field(default_factory=dict)

    @property
    def nfe(self) -> Integer[Array, ""]:
        """`stats["nfe"]`: the number of field evaluations."""
        return self.stats["nfe"]


class GridSolver(eqx.Module):
    """Base of flowjax's own fixed-grid ODE solvers (:class:`DPMSolver2M`, :class:`EDMHeun`).

    :func:`flowjax.sample.solve_ode` hands them the checked grid; `solve` runs
    inside its compiled program and returns a :class:`Solution`.
    """

    @abc.abstractmethod
    def solve(self, field, x0, ts, save_trajectory: bool) -> "Solution":
        """The solve on the checked grid `ts`, inside :func:`solve_ode`'s program."""


def _check_solver_options(path, prediction):
    """The path (an instance) and prediction kind of a flowjax solver."""
    check_path("path", path)
    check_prediction("prediction", prediction)


def make_stats(nfe, num_steps, accepted=None, rejected=0) -> dict:
    """The stats dict: four int32 scalars (`accepted` defaults to `num_steps`)."""
    accepted = num_steps if accepted is None else accepted
    return {name: jnp.asarray(value, jnp.int32) for name, value in (
        ("nfe", nfe), ("num_steps", num_steps), ("num_accepted_steps", accepted),
        ("num_rejected_steps", rejected))}


class Adaptive(eqx.Module):
    """Adaptive step sizes: a PID controller at `rtol`/`atol`, at most `max_steps` steps.

    Needs a solver with an embedded error estimate (Tsit5, Dopri5, Dopri8).
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = eqx.field(default=4096, static=True)

    def __check_init__(self):
        for name, low, integer in (("rtol", 0.0, False), ("atol", 0.0, False),
                                   ("max_steps", 1, True)):
            check_number(name, getattr(self, name), low=low, low_open=not integer,
                         integer=integer)


def _checked_grid(ts, dtype):
    """`ts` as an array `[N + 1]`, with compiled checks: finite, in [0, 1], strictly monotone."""
    try:
        ts = jnp.asarray(ts, dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`ts` must be an array of times, got {type(ts).__name__}.") from err
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"`ts` must be a grid [N + 1] with N >= 1, got shape {ts.shape}.")
    steps = jnp.diff(ts) * jnp.sign(ts[-1] - ts[0])
    bad = ~jnp.all(jnp.isfinite(ts) & (ts >= 0) & (ts <= 1)) | ~jnp.all(steps > 0)
    return error_if(ts, bad, "`ts` must be a strictly monotone grid of finite times in [0, 1].")


def _resolve_grid(x0, *, num_steps, ts, adaptive, t0, t1, default_adaptive: bool,
                 allow_adaptive: bool = True):
    """The grid options of a sampler, checked: `(ts or None, adaptive or None, t0, t1)`.

    Exactly one of `num_steps`, `ts`, `adaptive` applies (adaptive by default
    where `default_adaptive`); `t0`/`t1` (defaults 0 and 1) go with
    `num_steps` and `adaptive` only. With `ts`, `t0`/`t1` are its ends.
    """
    given = [name for name, v in (("num_steps", num_steps), ("ts", ts), ("adaptive", adaptive))
             if v is not None]
    if len(given) > 1 or (ts is not None and (t0, t1) != (None, None)):
        raise ValueError(f"pass one of `num_steps`, `ts` or `adaptive` (`t0`/`t1` go with "
                         f"`num_steps` or `adaptive`), got {given}.")
    if ts is not None:
        ts = _checked_grid(ts, x0.dtype)
        return ts, None, ts[0], ts[-1]
    t0, t1 = (0.0 if t0 is None else t0), (1.0 if t1 is None else t1)
    for name, v in (("t0", t0), ("t1", t1)):
        check_number(name, v, low=0.0, high=1.0)
    if isinstance(t0, (int, float)) and isinstance(t1, (int, float)) and t0 == t1:
        raise ValueError(f"`t0` and `t1` must be distinct times in [0, 1], got {t0}, {t1}.")
    if num_steps is not None:
        check_number("num_steps", num_steps, low=1, integer=True)
        return jnp.linspace(t0, t1, int(num_steps) + 1, dtype=x0.dtype), None, t0, t1
    if adaptive is None and not default_adaptive:
        raise ValueError("pass `num_steps` or `ts` (this sampler has no adaptive grid).")
    if not allow_adaptive:
        raise ValueError("this `solver` takes a fixed grid: pass `num_steps` or `ts`, "
                         "not `adaptive`.")
    adaptive = Adaptive() if adaptive is None else adaptive
    check_instance("adaptive", adaptive, Adaptive, "a flowjax.sample.Adaptive(rtol, atol)")
    return None, adaptive, t0, t1
