r"""Entropic minibatch OT with ott-jax's Sinkhorn, and its warm start.

Klein, Zhang, Mousavi-Hosseini and Cuturi 2025, "On fitting flow models with
large Sinkhorn couplings".
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from flowjax._checks import check_array, check_instance, check_number
from flowjax._types import Array, Batch, Bool, Cond, Float, KeyArray, Scalar
from flowjax.couplings._base import AbstractCoupling, CouplingResult, mean_pair_cost
from flowjax.couplings._common import _check_call, flat, sq_distances
from flowjax.couplings._entropy import plan_entropy

_INNER = 10  # ott's inner_iterations: the marginal error is checked every 10 iterations


class SinkhornPotentials(NamedTuple):
    r"""What a Sinkhorn solve leaves for the next one: the targets and their dual potential.

    `x1: [m, *dims]` are the target points of a solved batch and `g: [m]` their
    dual potential (ott-jax's convention :math:`P_{ij} = \exp((f_i + g_j - C_{ij})/\varepsilon)`).
    Passed as `state` to a :class:`Sinkhorn` built with `warm_start=True`,
    they start the solve on a new batch `x0` at the potential extrapolated by
    one soft c-transform,

    .. math:: f_i = \varepsilon \log\tfrac1n - \varepsilon \log \sum_j
              \exp\big((g_j - \|x_0^{(i)} - x_1^{(j)}\|^2)/\varepsilon\big),

    the warm start of Klein et al. (2025). A pytree: it jits, shards (leading
    axis = batch) and can live in a data pipeline's state.
    """

    x1: jax.Array
    g: jax.Array


def _check_potentials(state, x0):
    if not isinstance(state, SinkhornPotentials):
        raise TypeError("`state` must be a couplings.SinkhornPotentials (the `state` of a "
                        "warm-started Sinkhorn's result, or its init_state), got "
                        f"{type(state).__name__}.")
    check_array("state.x1", state.x1)
    check_array("state.g", state.g, rank=1)
    if state.x1.shape[1:] != x0.shape[1:] or state.g.shape[0] != state.x1.shape[0]:
        raise ValueError(
            f"`state` does not fit the batch: state.x1 {tuple(state.x1.shape)}, state.g "
            f"{tuple(state.g.shape)}, x0 {tuple(x0.shape)} "
            "(need state.x1: [m, *dims of x0], g: [m]).")


def _annealing(schedule, epsilon):
    """`(init, decay)` of an ott `Epsilon` schedule, checked; None for no schedule."""
    if schedule is None:
        return None
    from ott.geometry.epsilon_scheduler import Epsilon

    check_instance("epsilon_schedule", schedule, Epsilon,
                   "an ott.geometry.epsilon_scheduler.Epsilon, e.g. Epsilon(epsilon, init=50, "
                   "decay=0.8)")
    init = check_number("epsilon_schedule.init", schedule.init, low=1.0)
    decay = check_number("epsilon_schedule.decay", schedule.decay, low=0.0, high=1.0,
                         low_open=True)
    if init > 1 and decay == 1:
        raise ValueError("`epsilon_schedule.init` > 1 needs `decay` < 1, else epsilon never "
                         "reaches its target.")
    target = schedule.target
    if target is not None and not (isinstance(target, (int, float)) and target == epsilon):
        raise ValueError("`epsilon_schedule` sets the annealing only (`init`, `decay`); its "
                         "target is the coupling's epsilon: pass Epsilon(epsilon, init=..., "
                         f"decay=...) (or target None), got target {target!r}.")
    return float(init), float(decay)


def _over_relaxation(momentum):
    """`(start, error_threshold, value)` of an ott `Momentum`, checked; None for none."""
    if momentum is None:
        return None
    from ott.solvers.linear.acceleration import Momentum

    check_instance("momentum", momentum, Momentum,
                   "an ott.solvers.linear.acceleration.Momentum, e.g. Momentum(value=1.3) or "
                   "Momentum(start=20)")
    start = check_number("momentum.start", momentum.start, low=0, integer=True)
    value = check_number("momentum.value", momentum.value, low=0.0, high=2.0, low_open=True,
                         high_open=True)
    if 0 < start < 2 * _INNER:
        raise ValueError(f"`momentum.start` must be 0 (a fixed over-relaxation) or >= "
                         f"{2 * _INNER} (two error checks to estimate it from), got {start}.")
    return int(start), float(momentum.error_threshold), float(value)


def _check_flags(**flags):
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be a bool, got {value!r}.")


def draw_partners(key, plan):
    """For each column j, a row drawn from `plan[:, j] / sum(plan[:, j])` by inversion."""
    cdf = jnp.cumsum(plan, axis=0)
    u = jax.random.uniform(key, (plan.shape[1],), plan.dtype) * cdf[-1]
    idx = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"), in_axes=(1, 0))(cdf, u)
    return jnp.minimum(idx, plan.shape[0] - 1)


class _Solved(NamedTuple):
    plan: jax.Array
    f: jax.Array
    g: jax.Array
    n_iters: jax.Array
    converged: jax.Array
    epsilon: jax.Array
    cost: Any


class _AbstractEntropicOT(AbstractCoupling):
    """What :class:`Sinkhorn` and :class:`SchrodingerBridge` share: the solve and the pairing."""

    threshold: Scalar
    fallback_tolerance: Scalar
    max_iterations: int = eqx.field(static=True)
    sample: bool = eqx.field(static=True)
    scale_free: bool = eqx.field(static=True)
    warm_start: bool = eqx.field(static=True)
    precompute_cost: bool = eqx.field(static=True)
    annealing: tuple | None = eqx.field(static=True)
    over_relaxation: tuple | None = eqx.field(static=True)

    def _set_options(self, epsilon, threshold, max_iterations, epsilon_schedule, momentum,
                     sample, scale_free, warm_start, precompute_cost, fallback_tolerance):
        self.threshold = check_number("threshold", threshold, low=0.0, low_open=True)
        self.max_iterations = check_number("max_iterations", max_iterations, low=1,
                                           integer=True)
        self.fallback_tolerance = fallback_tolerance if fallback_tolerance == math.inf \
            else check_number("fallback_tolerance", fallback_tolerance, low=0.0, low_open=True)
        _check_flags(sample=sample, scale_free=scale_free, warm_start=warm_start,
                     precompute_cost=precompute_cost)
        self.sample, self.scale_free = sample, scale_free
        self.warm_start, self.precompute_cost = warm_start, precompute_cost
        self.annealing = _annealing(epsilon_schedule, epsilon)
        self.over_relaxation = _over_relaxation(momentum)

    def _epsilon(self):
        raise NotImplementedError

    @property
    def epsilon_schedule(self):
        """The ott `Epsilon` annealing (target: the coupling's epsilon), or None."""
        if self.annealing is None:
            return None
        from ott.geometry.epsilon_scheduler import Epsilon

        return Epsilon(self._epsilon(), init=self.annealing[0], decay=self.annealing[1])

    @property
    def momentum(self):
        """The ott `Momentum` over-relaxation, or None."""
        if self.over_relaxation is None:
            return None
        from ott.solvers.linear.acceleration import Momentum

        start, error_threshold, value = self.over_relaxation
        return Momentum(start=start, error_threshold=error_threshold, value=value)

    def init_state(self, x0: Batch, x1: Batch) -> SinkhornPotentials | None:
        """With `warm_start`, potentials `g = 0` at `x1` (a cold start); else None.

        Starting from these, the first call has the state structure of every
        later one, so a jitted step compiles once.
        """
        del x0
        if not self.warm_start:
            return None
        return SinkhornPotentials(x1=x1, g=jnp.zeros((x1.shape[0],), x1.dtype))

    def _solve(self, x0, x1, state=None) -> _Solved:
        # ott is imported here, on first use: its import is slow and pulls in jaxopt.
        from ott.geometry import epsilon_scheduler, geometry, pointcloud
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn as ott_sinkhorn

        cost = sq_distances(x0, x1) if self.precompute_cost else None

        def geom_with(epsilon, relative):
            if cost is None:
                return pointcloud.PointCloud(flat(x0), flat(x1), epsilon=epsilon,
                                             relative_epsilon=relative)
            return geometry.Geometry(cost_matrix=cost, epsilon=epsilon, relative_epsilon=relative)

        geom = geom_with(self._epsilon(), "std" if self.scale_free else None)
        if self.annealing is not None:
            # The target is resolved first (scale-free: a fraction of std(C)); ott's schedule
            # then uses max(init * decay ** it, 1) * target at iteration it.
            init, decay = self.annealing
            geom = geom_with(epsilon_scheduler.Epsilon(jax.lax.stop_gradient(geom.epsilon),
                                                       init=init, decay=decay), None)
        solver = ott_sinkhorn.Sinkhorn(threshold=self.threshold,
                                       max_iterations=self.max_iterations,
                                       inner_iterations=_INNER, momentum=self.momentum)
        init = None
        if state is not None:
            eps = jax.lax.stop_gradient(geom.epsilon)
            lse = jax.scipy.special.logsumexp(
                (state.g[None, :] - sq_distances(x0, state.x1)) / eps, axis=1)
            f0 = eps * (-jnp.log(x0.shape[0]) - lse)
            # g is recomputed from f in the first half-iteration; its start value is unused.
            init = (f0.astype(x0.dtype), jnp.zeros((x1.shape[0],), x0.dtype))
        out = solver(linear_problem.LinearProblem(geom), init=init)
        return _Solved(out.matrix, out.f, out.g, out.n_iters, out.converged,
                       jnp.asarray(geom.epsilon, x0.dtype), cost)

    def __call__(self, key: KeyArray | None, x0: Batch, x1: Batch, *, cond: Cond = None,
                 state: SinkhornPotentials | None = None) -> CouplingResult:
        x0, x1 = _check_call(self, key, x0, x1, cond, key_used=self.sample)
        if state is not None:
            if not self.warm_start:
                raise ValueError(f"`state` is used only with warm_start=True; this "
                                 f"{type(self).__name__} is cold-started, got a "
                                 f"{type(state).__name__}.")
            _check_potentials(state, x0)
        out = self._solve(x0, x1, state)
        plan = out.plan
        idx = draw_partners(key, plan) if self.sample else jnp.argmax(plan, axis=0)
        # Judged on the plan itself, not on ott's `converged`: an underflowed plan (all
        # zeros) can come back "converged" from ott's vmapped loop. NaN fails `<=`.
        n, m = plan.shape
        error = jnp.maximum(jnp.sum(jnp.abs(jnp.sum(plan, 1) - 1.0 / n)),
                            jnp.sum(jnp.abs(jnp.sum(plan, 0) - 1.0 / m)))
        ok = ((error <= self.fallback_tolerance) & jnp.all(jnp.isfinite(out.f))
              & jnp.all(jnp.isfinite(out.g)))
        idx = jnp.where(ok, idx, jnp.arange(m))  # independent pairs
        c = sq_distances(x0, x1) if out.cost is None else out.cost
        stats = {"plan_cost": jnp.where(ok, jnp.sum(plan * c), jnp.mean(c)),
                 "renormalized_entropy": jnp.where(ok, plan_entropy(plan), 1.0),
                 "epsilon": out.epsilon, "n_iters": out.n_iters, "converged": out.converged}
        new_state = (SinkhornPotentials(x1=x1, g=jnp.where(ok, out.g, 0.0))
                     if self.warm_start else None)
        y0 = x0[idx]
        return CouplingResult(x0=y0, x1=x1, cost=mean_pair_cost(y0, x1), fallback=~ok,
                              state=new_state, stats=stats)


class Sinkhorn(_AbstractEntropicOT):
    r"""Entropic minibatch OT with ott-jax's Sinkhorn.

    Each `x1[j]` is paired with a source drawn from the plan's column
    :math:`P_{\cdot j}/\sum_i P_{ij}` (or its argmax, `sample=False`); `x1`
    stays in place and `x0` is drawn with replacement.

    Args:
      epsilon: entropic regularization, absolute (in units of the squared
        Euclidean cost), or with `scale_free=True` a fraction of the standard
        deviation of the batch's cost matrix (0.05 gives a plan cost within
        about 3% of exact OT in 2-D). The scale-free choice
        :math:`\tilde\varepsilon = \varepsilon\,\mathrm{std}(C)` is the one of
        Klein et al. (2025), who sweep :math:`\varepsilon` in [0.001, 1] and
        read the result on the :func:`renormalized_entropy` scale.
      threshold: Sinkhorn's tolerance on the marginals.
      max_iterations: iteration cap.
      epsilon_schedule: epsilon annealing, an ott
        `epsilon_scheduler.Epsilon(epsilon, init, decay)`: iteration `it` uses
        :math:`\max(\text{init}\cdot\text{decay}^{it}, 1)\,\varepsilon`, so the
        early iterations solve a blurrier problem. The fixed point, hence the
        plan, is that of :math:`\varepsilon`; only the path there changes. It
        pays for small :math:`\varepsilon` (sharp plans in low dimensions), best
        with momentum: in 2-D at 1,024 points and
        :math:`\varepsilon = 0.005\,\mathrm{std}(C)`, 660 iterations plain, 190
        with `Epsilon(epsilon, init=100, decay=0.8)`, 90 with adaptive momentum
        too; at larger :math:`\varepsilon` it only adds iterations. Its target
        must equal `epsilon` (as given: relative with `scale_free`) or be None
        (ott cannot print an `Epsilon` whose target is None).
      momentum: over-relaxation of the Sinkhorn updates, an ott
        `acceleration.Momentum`: `Momentum(value=w)`, w in (0, 2), a fixed
        over-relaxation (Thibault et al. 2021; large values can diverge: 1.8
        does in 784-D), or `Momentum(start=k)`, k >= 20, Lehmann et al.'s
        (2021) adaptive one, estimated once at iteration k from the marginal
        errors of the two previous checks (10 iterations apart): take k = 20
        without annealing, and with it
        `10 * (ceil(log(init) / -log(decay) / 10) + 2)`, two checks after
        the annealing ends (660 -> 130 iterations in the 2-D example above,
        none added in high dimensions). ott's stopping test measures the
        column marginal (plain Sinkhorn leaves the row marginal exact); with
        momentum the row marginal is off by about as much, so the plan cost
        can differ from the plain one's by about the tolerance.
      sample: if True, partners are drawn from the plan's columns with the
        key, by inversion of each column's cumulative sum (one uniform per
        column; the same distribution as Gumbel-max sampling of the log plan,
        which draws one Gumbel per entry of the plan); if False, each column's
        argmax (deterministic, the key may be None; not a permutation in general).
      scale_free: see `epsilon`.
      warm_start: if True, the coupling takes and returns `state`, a
        :class:`SinkhornPotentials` (`x1` and its dual potential `g`). Passing
        a result's `state` to the next call (a new batch of the same
        distributions) starts Sinkhorn from the potential it extrapolates
        instead of zero: the same plan (to the tolerance) in fewer
        iterations. Start from :meth:`init_state` (or None, a separate trace).
        The pairing does not depend on the model, so the natural home of this
        state is the data pipeline that draws the batches.
      precompute_cost: if True, the `[B, B]` squared-distance matrix is
        computed once and Sinkhorn runs on it (ott's `Geometry`); if False it
        runs on the points (ott's `PointCloud`), recomputing the cost inside
        the loop. The same plan up to rounding; worth it in high dimensions,
        where each recomputed entry costs a `D`-long dot product, not in 2-D,
        where reading the stored matrix costs about as much as recomputing it.
      fallback_tolerance: a batch whose plan has a marginal error
        :math:`\max(\|P\mathbf 1 - \mathbf 1/n\|_1, \|P^\top \mathbf 1 - \mathbf 1/n\|_1)`
        above it (default 0.1: a tenth of the mass misplaced), or whose plan
        or potentials are not finite (Sinkhorn stopped far from its marginals
        at a tiny `epsilon`, or overflowed), is paired independently: `x0`
        comes back as given and `fallback` is True. Decided inside `jit`, per
        batch. Looser than `threshold` on purpose: in float32 a solve at a
        small `epsilon` can stall a little above a tight threshold
        (`converged` False) with a plan that is still good. `float("inf")`
        keeps every finite plan.

    The result's `stats` hold `plan_cost` (:math:`\langle P, C\rangle`),
    `renormalized_entropy` (of the plan), `epsilon` (the absolute value
    used), `n_iters` (in multiples of ott's 10 inner iterations) and
    `converged`. After a fallback `plan_cost` and `renormalized_entropy` are
    those of the independent plan (mean cost, 1) and a warm start's `g` is
    reset to 0 (a cold start).
    """

    epsilon: Scalar

    def __init__(self, epsilon: Scalar = 0.05, *, threshold: Scalar = 1e-3,
                 max_iterations: int = 2000, epsilon_schedule=None, momentum=None,
                 sample: bool = True, scale_free: bool = False, warm_start: bool = False,
                 precompute_cost: bool = False, fallback_tolerance: Scalar = 0.1):
        self.epsilon = check_number("epsilon", epsilon, low=0.0, low_open=True)
        self._set_options(epsilon, threshold, max_iterations, epsilon_schedule, momentum,
                          sample, scale_free, warm_start, precompute_cost, fallback_tolerance)

    def _epsilon(self):
        return self.epsilon


def sinkhorn_plan(x0: Batch, x1: Batch, *, epsilon: Scalar, threshold: Scalar = 1e-3,
                  max_iterations: int = 2000, scale_free: bool = False,
                  precompute_cost: bool = False, epsilon_schedule=None,
                  momentum=None) -> tuple[Float[Array, "B B"], Bool[Array, ""]]:
    """The entropic OT plan `[B, B]` (summing to 1) of two batches, with ott-jax.

    Args:
      x0: sources `[B, *dims]`.
      x1: targets `[B, *dims]`.
      epsilon: as for :class:`Sinkhorn`.
      threshold: as for :class:`Sinkhorn`.
      max_iterations: as for :class:`Sinkhorn`.
      scale_free: as for :class:`Sinkhorn`.
      precompute_cost: as for :class:`Sinkhorn` (this and the next two change how
        the solve gets there; the plan is the same to the tolerance).
      epsilon_schedule: as for :class:`Sinkhorn`.
      momentum: as for :class:`Sinkhorn`.

    Returns:
      `(plan, converged)`.
    """
    solver = Sinkhorn(epsilon, threshold=threshold, max_iterations=max_iterations,
                      scale_free=scale_free, precompute_cost=precompute_cost,
                      epsilon_schedule=epsilon_schedule, momentum=momentum, sample=False)
    x0, x1 = _check_call(solver, None, x0, x1, None, key_used=False)
    out = solver._solve(x0, x1)
    return out.plan, out.converged

