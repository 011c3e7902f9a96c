r"""Marginal-preserving SDE samplers for flow models, on diffrax.

For any diffusion coefficient :math:`g(t) \ge 0`, the SDE

.. math:: dx = \Big[v(x, t) + \frac{g(t)^2}{2}\nabla\log p_t(x)\Big]dt + g(t)\,dW_t

has the same marginals :math:`p_t` as the ODE :math:`\dot x = v`: in the
Fokker–Planck equation the extra drift contributes
:math:`-\frac{g^2}{2}\nabla\cdot(p\nabla\log p) = -\frac{g^2}{2}\Delta p`, which
the diffusion :math:`+\frac{g^2}{2}\Delta p` cancels (Song et al. 2021, Eq. 6;
Albergo et al. 2023, "Stochastic interpolants", Sec. 2.3; the "Langevin"
view of Liu's rectified-flow notes, Ch. 5). The score comes from the
velocity through the path's exact conversion
(:func:`flowjax.paths.convert`), so any velocity (or data / noise) model can
be sampled stochastically.

The score grows like :math:`1/\bar\sigma` as t -> 1, so a diffusion that
vanishes there (:class:`VanishingDiffusion`, :class:`SigmaDiffusion`) keeps
the drift bounded; with a constant `g` the drift stays finite only through
the floors of :func:`convert`, and the last steps are the least accurate.
"""

from __future__ import annotations

import abc
from typing import Callable

import diffrax
import equinox as eqx
import jax.numpy as jnp
import lineax

from flowjax._checks import check_instance, check_key, check_number, check_path
from flowjax._types import Array, Batch, Float, KeyArray, Scalar, TimeGrid
from flowjax.paths import AffinePath, Prediction, convert, sde_diffusion
from flowjax.paths._conversions import check_prediction
from flowjax.sample._fields import _check_inputs
from flowjax.sample._ode import vector_field
from flowjax.sample._solution import Solution, _resolve_grid, make_stats


def _factor(name, value):
    """A non-negative number, kept as an array leaf (a new value reuses the compiled sampler)."""
    check_number(name, value, low=0.0)
    return jnp.asarray(value)


class AbstractDiffusion(eqx.Module):
    """A diffusion schedule `g(t)` for :func:`solve_sde`: times of any shape to an array of it."""

    @abc.abstractmethod
    def __call__(self, t):
        """`g(t)`, shaped like `t`."""


class ConstantDiffusion(AbstractDiffusion):
    """`g(t) = g`."""

    g: Float[Array, ""]

    def __init__(self, g: Scalar):
        self.g = _factor("g", g)

    def __call__(self, t):
        return self.g * jnp.ones_like(t)


class SigmaDiffusion(AbstractDiffusion):
    """`g(t) = factor * sigma_total(t)`: proportional to the path's noise level (0 at t = 1)."""

    path: AffinePath
    factor: Float[Array, ""]

    def __init__(self, path: AffinePath, factor: Scalar):
        self.path, self.factor = check_path("path", path), _factor("factor", factor)

    def __call__(self, t):
        return self.factor * self.path.sigma_total(t)


class ReverseDiffusion(AbstractDiffusion):
    r"""`g(t) = factor * sde_diffusion(path, t)`; factor 1 makes :func:`solve_sde` the reverse SDE.

    :func:`flowjax.paths.sde_diffusion` is the diffusion of the path's own
    forward (noising) SDE, so with `factor = 1` the sampler integrates the
    reverse-time SDE of Anderson 1982 and Song et al. 2021 ("Score-based
    generative modeling through SDEs", Eq. 6),

    .. math:: dx = \big[f x - g^2\nabla\log p_s(x)\big]ds + g\,d\bar W_s,

    written in flow time (:math:`dt = -ds`, :math:`f = -\dot\alpha/\alpha`), whose drift
    :math:`\dot\alpha x/\alpha + g^2\nabla\log p_t` is :func:`solve_sde`'s
    :math:`v + \tfrac12 g^2\nabla\log p_t`, because the probability-flow ODE is
    :math:`v = \dot\alpha x/\alpha + \tfrac12 g^2\nabla\log p_t`. VP gives
    :math:`g^2 = \beta(1 - t)` (the
    VP-SDE's reverse, the continuous limit of DDPM's ancestral sampler), VE
    :math:`g^2 = d\sigma^2/ds`. `factor = 0` is the probability-flow ODE; any
    factor keeps the marginals. On rectified flow `g` is infinite at t = 0
    (it is floored there, see :func:`flowjax.paths.sde_diffusion`); VP and VE
    are finite everywhere.

    Attributes:
      path: the affine path the model was trained on.
      factor: a factor on `g`, >= 0 (an array leaf).
    """

    path: AffinePath
    factor: Float[Array, ""]

    def __init__(self, path: AffinePath, factor: Scalar = 1.0):
        self.path, self.factor = check_path("path", path), _factor("factor", factor)

    def __call__(self, t):
        return self.factor * sde_diffusion(self.path, t).reshape(jnp.shape(t))


class VanishingDiffusion(AbstractDiffusion):
    r"""`g(t) = g * (1 - t)^power`: noise that switches off at the data end.

    The "guardrail" choice of rectified flow's SDE samplers: with
    :math:`\bar\sigma \sim 1 - t`, the extra drift :math:`g^2\nabla\log p/2` is
    :math:`O((1 - t)^{2p - 1})`, bounded for `power >= 1/2`.
    """

    g: Float[Array, ""]
    power: float = eqx.field(static=True)

    def __init__(self, g: Scalar, power: float = 1.0):
        self.g = _factor("g", g)
        self.power = check_number("power", power, low=0.0, low_open=True)

    def __call__(self, t):
        return self.g * jnp.clip(1.0 - t, 0.0) ** self.power


_DRIFT_EVALS = {diffrax.Euler: 1, diffrax.ShARK: 2, diffrax.SRA1: 2, diffrax.SEA: 1}


def _check_sde_options(solver, key, path, diffusion, prediction):
    """The solver (one of `_DRIFT_EVALS`), key, path, schedule (an object, or any callable
    `g(t)` that is not a class) and prediction of :func:`solve_sde`."""
    if type(solver) not in _DRIFT_EVALS:
        raise TypeError(f"`solver` must be one of {[c.__name__ for c in _DRIFT_EVALS]}, "
                        f"got {solver!r}.")
    check_key("key", key)
    check_path("path", path)
    if isinstance(diffusion, type) or not callable(diffusion):
        check_instance("diffusion", diffusion, AbstractDiffusion,
                       "a diffusion schedule (e.g. flowjax.sample.ConstantDiffusion(1.0))")
    check_prediction("prediction", prediction)


class _Drift(eqx.Module):
    """The SDE drift `v + g^2 score / 2` of a field's prediction, flattened."""

    field: Callable
    path: AffinePath
    diffusion: Callable
    prediction: Prediction = eqx.field(static=True)
    shape: tuple = eqx.field(static=True)

    def __call__(self, t, y, args):
        x = y.reshape(self.shape)
        tb = jnp.full((self.shape[0],), t, x.dtype)
        out = vector_field(t, x, self.field)
        v = convert(self.path, x, tb, out, given=self.prediction, to=Prediction.VELOCITY)
        score = convert(self.path, x, tb, out, given=self.prediction, to=Prediction.SCORE)
        return (v + 0.5 * self.diffusion(t) ** 2 * score).reshape(-1)


def _noise(t, y, diffusion):
    return lineax.DiagonalLinearOperator(diffusion(t) * jnp.ones_like(y))


@eqx.filter_jit
def _solve(field, x0, key, ts, path, diffusion, solver, prediction, save_trajectory):
    """The compiled SDE solve: one program per field structure, schedule, solver and shapes."""
    shape = x0.shape
    levy = diffrax.SpaceTimeLevyArea if isinstance(solver, (diffrax.ShARK, diffrax.SRA1,
                                                            diffrax.SEA)) else None
    bm_kwargs = {"levy_area": levy} if levy is not None else {}
    # One draw per grid interval, keyed by the interval's ends: deterministic for a key and
    # grid, and no bisection down a VirtualBrownianTree to reach each step's increment. It
    # needs the forward-mode adjoint.
    brownian = diffrax.UnsafeBrownianPath(shape=(x0.size,), key=key, **bm_kwargs)
    terms = diffrax.MultiTerm(diffrax.ODETerm(_Drift(field, path, diffusion, prediction, shape)),
                              diffrax.ControlTerm(_noise, brownian))
    saveat = diffrax.SaveAt(ts=ts) if save_trajectory else diffrax.SaveAt(t1=True)
    sol = diffrax.diffeqsolve(terms, solver, t0=ts[0], t1=ts[-1], dt0=None,
                              y0=x0.reshape(-1), args=diffusion, saveat=saveat,
                              stepsize_controller=diffrax.StepTo(ts=ts),
                              max_steps=ts.shape[0] - 1, adjoint=diffrax.ForwardMode())
    ys = sol.ys.reshape((-1,) + shape)
    n = ts.shape[0] - 1
    stats = make_stats(_DRIFT_EVALS[type(solver)] * n, n)
    return Solution(ys[-1], ts, ys if save_trajectory else None, None, stats)


def solve_sde(field: Callable, x0: Batch, *, key: KeyArray, path: AffinePath,
              diffusion: AbstractDiffusion, solver=None, num_steps: int | None = None,
              ts: TimeGrid | None = None, t0: float | None = None, t1: float | None = None,
              prediction: Prediction = Prediction.VELOCITY,
              save_trajectory: bool = False) -> Solution:
    """Samples the marginal-preserving SDE `dx = [v + g^2 score / 2] dt + g dW`.

    Compiled with :func:`equinox.filter_jit` over the field and the schedule
    (their arrays are leaves), so new parameters or a new diffusion factor
    reuse the program.

    Args:
      field: the model, `field(x [B, *dims], t [B])`, predicting what
        `prediction` says (e.g. :class:`ModelVelocity`).
      x0: source samples `[B, *dims]` at the grid's first time.
      key: PRNG key of the Brownian motion.
      path: the affine path (for the score conversion).
      diffusion: the schedule `g(t)`, e.g. :class:`VanishingDiffusion`.
      solver: `diffrax.Euler()` (Euler–Maruyama, the default), `diffrax.ShARK()`
        or `diffrax.SRA1()` (strong order 1.5 for additive noise, two drift
        evaluations a step), or `diffrax.SEA()`. The noise is additive (g
        depends on t only), so Itô and Stratonovich solvers agree.
      num_steps: a uniform grid of this many steps from `t0` to `t1`.
      ts: any strictly monotone grid `[N + 1]` in [0, 1] instead.
      t0: start time with `num_steps` (default 0).
      t1: end time with `num_steps` (default 1).
      prediction: the kind of the field's output.
      save_trajectory: also return the states at `ts`.

    Returns:
      A :class:`Solution`; `nfe` counts field evaluations. The Brownian
      increments are drawn once per grid interval from `key` (the same key
      and grid give the same samples). Differentiate through the sampler in
      forward mode (`jax.jvp`, `jax.jacfwd`); reverse mode is not supported.
    """
    x0 = _check_inputs(field, x0)
    solver = diffrax.Euler() if solver is None else solver
    _check_sde_options(solver, key, path, diffusion, prediction)
    ts, _, _, _ = _resolve_grid(x0, num_steps=num_steps, ts=ts, adaptive=None, t0=t0, t1=t1,
                                default_adaptive=False)
    return _solve(field, x0, key, ts, path, diffusion, solver, prediction, save_trajectory)
