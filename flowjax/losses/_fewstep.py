r"""Losses for one- and few-step generation: MeanFlow, shortcut models and reflow.

All three train a *flow map* in flowjax's time (t = 0 source, t = 1 data):
an average-velocity model `u(x, r, t)` that takes the state `x` at time `r`
to time `t >= r` in one jump,

.. math:: x_t = x_r + (t - r)\, u(x_r, r, t),\qquad
          u(x_r, r, t) = \frac{1}{t - r}\int_r^t v(x_\tau, \tau)\, d\tau,

with `u(x, t, t) = v(x, t)` the instantaneous velocity (Boffi, Albergo and
Vanden-Eijnden 2024 write flow maps the same way). Sample with
:func:`flowjax.sample.solve_flow_map`. Each loss is its target
(:func:`meanflow_target`, :func:`shortcut_target`, :func:`reflow_target`)
and :func:`flowjax.losses.regression`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from flowjax._checks import (broadcast_time, check_array, check_callable, check_finite,
                             check_same_shape, check_time, error_if)
from flowjax._types import Batch, BatchTimes, Cond, KeyArray, Params, Scalar
from flowjax.couplings import Independent
from flowjax.couplings._base import AbstractCoupling
from flowjax.losses._core import (_check_loss_options, _drop_labels, _guided, _keyed_model,
                                  _model_call, _path_noise, _sample_times, _squared_error,
                                  paired_batch, regression)
from flowjax.paths import RectifiedFlow
from flowjax.time import LogitNormal, OrderedPairs, Uniform
from flowjax.time._base import AbstractTimeSampler


_NO_V = object()  # shortcut_target has no velocity to check


def _check_jump(apply_fn, x, r, t, v=_NO_V):
    """A model, `x: [B, *dims]` and `[B]` times `r <= t` in [0, 1] (and `v` like `x`), checked."""
    check_callable("apply_fn", apply_fn)
    check_array("x", x)
    r, t = check_time(r, x.shape[0], name="r"), check_time(t, x.shape[0], name="t")
    if r.ndim != 1 or t.ndim != 1:
        raise ValueError(f"`r` and `t` must have shape [B], got {r.shape} and {t.shape}.")
    if v is not _NO_V:
        check_same_shape("v", v, "x", x)
        check_array("v", v)
        v = check_finite("v", v)
    r = error_if(r, jnp.any(r > t), "`r` must not exceed `t`.")
    return check_finite("x", x), r.astype(x.dtype), t.astype(x.dtype), v


def meanflow_target(apply_fn: Callable, params: Params, x: Batch, r: BatchTimes,
                    t: BatchTimes, v: Batch, cond: Cond = None) -> tuple[Batch, Batch]:
    r"""The MeanFlow regression target, with the model's own prediction.

    Differentiating :math:`(t - r)\,u(x_r, r, t) = \int_r^t v\,d\tau` along
    the trajectory in its start time `r` gives the MeanFlow identity in
    flowjax's time:

    .. math:: u(x_r, r, t) = v(x_r, r) + (t - r)\,\frac{d}{dr}u(x_r, r, t),\qquad
              \frac{d}{dr}u = v\cdot\nabla_x u + \partial_r u,

    computed as one `jax.jvp` with tangents `(v, 1, 0)` on `(x, r, t)`.

    The time flip: Geng et al. (2025, Eq. 6) run time from data (0) to noise
    (1), with the state at the later time :math:`t'` and the jump back to
    :math:`r' < t'`: :math:`u' = v' - (t' - r')(v'\cdot\nabla u' + \partial_{t'} u')`.
    With :math:`t' = 1 - r`, :math:`r' = 1 - t`, :math:`v' = -v` and
    :math:`u' = -u`, the derivative :math:`\partial_{t'} = -\partial_r` and
    both signs flip, which gives the identity above; the paper's tangent
    `(v', 1, 0)` on `(z, t', r')` becomes `(v, 1, 0)` on `(x, r, t)`.

    Args:
      apply_fn: `apply_fn(params, x, r, t, cond) -> [B, *dims]`.
      params: the model parameters.
      x: states at time `r`, `[B, *dims]`.
      r: `[B]` start times.
      t: `[B]` end times, `r <= t`.
      v: the velocity at `(x, r)` (conditional, marginal or guided), `[B, *dims]`.
      cond: conditioning passed to `apply_fn`.

    Returns:
      `(u, target)`: the prediction (differentiable in `params`) and the
      target, with its gradient stopped.
    """
    x, r, t, v = _check_jump(apply_fn, x, r, t, v)
    u, du_dr = jax.jvp(lambda x_, r_, t_: _model_call(apply_fn, None, params, x_, r_, t_, cond,
                                                      like=x),
                       (x, r, t), (v, jnp.ones_like(r), jnp.zeros_like(t)))
    return u, jax.lax.stop_gradient(v + broadcast_time(t - r, x) * du_dr)


def _guided_velocity(model, params, x_r, r, v, cond, dropped, null_cond, guidance_scale,
                     guidance_mix):
    """MeanFlow's guided velocity (stop-gradient) for labelled rows; `v` for dropped ones."""
    null = jax.tree.map(lambda c: jnp.full_like(c, null_cond), cond)
    v_g = guidance_scale * v + (1.0 - guidance_scale - guidance_mix) * model(
        params, x_r, r, r, null)
    if guidance_mix:
        v_g = v_g + guidance_mix * model(params, x_r, r, r, cond)
    v_g = jax.lax.stop_gradient(v_g)
    return v_g if dropped is None else jnp.where(broadcast_time(dropped, x_r), v, v_g)


def meanflow_loss(params: Params, key: KeyArray, batch: dict, *, apply_fn: Callable,
                  path=None, coupling: AbstractCoupling | None = None,
                  time_sampler: AbstractTimeSampler | None = None,
                  velocity_fn: Callable | None = None, weight_power: Scalar = 1.0,
                  weight_eps: Scalar = 1e-3, guidance_scale: Scalar = 1.0,
                  guidance_mix: Scalar = 0.0, null_cond: Cond = None,
                  cond_drop_prob: Scalar = 0.0, model_key: bool = False,
                  allow_cond_blind_coupling: bool = False) -> tuple[jax.Array, dict]:
    r"""The MeanFlow loss (Geng et al. 2025) for an average-velocity model `u(x, r, t)`.

    .. math:: \mathcal L = E\ \mathrm{sg}(w)\,\|u_\theta(x_r, r, t) - \mathrm{sg}(u_{tgt})\|^2 / D,
              \qquad w = (\|\Delta\|^2 + c)^{-p},

    with :math:`u_{tgt}` from :func:`meanflow_target`, :math:`x_r` on the
    path and `v` its conditional velocity (the target is affine in `v`, so
    its conditional mean is the marginal target). `p = 0` is the plain mean
    squared error; the paper's adaptive weighting uses `p = 1`, `c = 1e-3`
    (:math:`\|\Delta\|^2` summed over dimensions; the loss is divided by D).

    Guidance folded into the target (the paper's Eq. 13–14, Appendix B.1):
    for labelled samples the velocity becomes

    .. math:: \tilde v = \omega v + \kappa\,u_\theta(x_r, r, r \mid c)
              + (1 - \omega - \kappa)\,u_\theta(x_r, r, r \mid \varnothing),

    (stop-gradient), so the model's one-step field samples with effective
    CFG scale :math:`\omega / (1 - \kappa)`; samples whose label was dropped
    (probability `cond_drop_prob`) keep :math:`\tilde v = v`.

    Args:
      params: model parameters.
      key: a PRNG key (split as in :func:`flowjax.losses.cfm_loss`; the model's
        key is the last of `jax.random.split(key, 5)`).
      batch: dict with `x1`, optionally `x0` and `cond` (as for
        :func:`flowjax.losses.cfm_loss`).
      apply_fn: `apply_fn(params, x, r, t, cond) -> [B, *dims]`.
      path: an affine path; rectified flow by default (the paper's).
      coupling: a coupling object; `Independent()` by default (refused on a
        conditional batch when it ignores `cond`, as in :func:`flowjax.losses.cfm_loss`).
      time_sampler: a pair sampler `(key, shape) -> (r, t)`, `r <= t`; by
        default the paper's, `OrderedPairs(LogitNormal(0.4, 1.0), equal_fraction=0.75)`.
      velocity_fn: optional `velocity_fn(x, t, cond) -> v` used instead of the
        conditional velocity (an exact marginal field, or a teacher to distil).
      weight_power: `p` of the adaptive weight.
      weight_eps: `c` of the adaptive weight.
      guidance_scale: :math:`\omega`; with `guidance_mix = 0`, 1 is no guidance.
      guidance_mix: :math:`\kappa`.
      null_cond: the "no label" value (e.g. `num_classes` for
        :class:`flowjax.models.MLP`); needed for guidance and label dropout.
      cond_drop_prob: probability of replacing a label by `null_cond`.
      model_key: if True, every model call gets `key=` (one key for the
        step, so the `jax.jvp` sees a single dropout mask).
      allow_cond_blind_coupling: as in :func:`flowjax.losses.cfm_loss`.

    Returns:
      `(loss, aux)` with the scalars `mse` and the coupling's `coupling_*`
      (as in :func:`flowjax.losses.cfm_loss`).
    """
    time_sampler = _check_loss_options(locals(), OrderedPairs(LogitNormal(0.4, 1.0),
                                                              equal_fraction=0.75))
    path = RectifiedFlow() if path is None else path
    k_pair, k_t, k_z, k_drop, k_model = jax.random.split(key, 5)
    model = _keyed_model(apply_fn, k_model if model_key else None)
    x0, x1, cond, aux = paired_batch(k_pair, batch, Independent() if coupling is None
                                     else coupling,
                                     allow_cond_blind_coupling=allow_cond_blind_coupling)
    r, t = _sample_times(time_sampler, k_t, x1.shape[0], x1.dtype)
    z = _path_noise(path, k_z, x1)
    x_r = path.interpolate(x0, x1, r, z)
    cond, dropped = _drop_labels(k_drop, cond, null_cond, cond_drop_prob)
    v = path.velocity(x0, x1, r, z) if velocity_fn is None else velocity_fn(x_r, r, cond)
    if _guided(guidance_scale, guidance_mix):
        v = _guided_velocity(model, params, x_r, r, v, cond, dropped, null_cond,
                             guidance_scale, guidance_mix)
    u, target = meanflow_target(model, params, x_r, r, t, v, cond)
    err = _squared_error(u, target)
    weight = jax.lax.stop_gradient((err * math.prod(x1.shape[1:]) + weight_eps)
                                   ** -weight_power)
    return regression(u, target, weight), {"mse": jnp.mean(err), **aux}


def shortcut_target(apply_fn: Callable, params: Params, x: Batch, r: BatchTimes,
                    t: BatchTimes, cond: Cond = None) -> Batch:
    r"""The shortcut models' bootstrap target: two half jumps of the model itself.

    With :math:`d = (t - r)/2`,

    .. math:: s(x_r, r, t) \leftarrow \mathrm{sg}\big(\tfrac12 [s(x_r, r, r + d)
              + s(x_r + d\,s(x_r, r, r + d),\ r + d,\ t)]\big)

    (Frans, Hafner, Levine and Abbeel 2024, Eq. 5, written for an average
    velocity `s(x, r, t)` with `t = r + 2d`).

    Args:
      apply_fn: `apply_fn(params, x, r, t, cond) -> [B, *dims]`.
      params: the model parameters.
      x: states at time `r`, `[B, *dims]`.
      r: `[B]` start times.
      t: `[B]` end times, `r <= t`.
      cond: conditioning passed to `apply_fn`.

    Returns:
      The target `[B, *dims]`, with its gradient stopped.
    """
    x, r, t, _ = _check_jump(apply_fn, x, r, t)
    half = 0.5 * (t - r)
    s1 = _model_call(apply_fn, None, params, x, r, r + half, cond, like=x)
    s2 = apply_fn(params, x + broadcast_time(half, x) * s1, r + half, t, cond)
    return jax.lax.stop_gradient(0.5 * (s1 + s2))


def shortcut_loss(params: Params, key: KeyArray, batch: dict, *, apply_fn: Callable,
                  path=None, coupling: AbstractCoupling | None = None,
                  time_sampler: AbstractTimeSampler | None = None, finest_steps: int = 128,
                  bootstrap_fraction: Scalar = 0.25, model_key: bool = False,
                  allow_cond_blind_coupling: bool = False) -> tuple[jax.Array, dict]:
    r"""The shortcut-model loss (Frans, Hafner, Levine and Abbeel 2024) for `u(x, r, t)`.

    A step-size-conditioned velocity :math:`s(x, r, d)` is an average velocity
    with `t = r + d`. Shortcut models use flowjax's time direction, so no flip
    is needed. Two kinds of rows:

    - flow matching (a fraction `1 - bootstrap_fraction`): the smallest step
      `d = 1/M` regresses on the conditional velocity at `r ~ U[0, 1 - 1/M]`
      (as in the authors' code; the paper writes it as `d = 0`);
    - self-consistency (the rest): `2d = 2^{-j}`, `j` uniform in
      `{0, ..., log2 M - 1}`, `r` uniform on the grid of multiples of `2d`,
      and the target is :func:`shortcut_target`, two half steps of the model.

    Sampling with `K = 1, 2, 4, ..., M` uniform steps then stays on the
    trained grid.

    Args:
      params: model parameters.
      key: a PRNG key.
      batch: dict with `x1`, optionally `x0` and `cond`.
      apply_fn: `apply_fn(params, x, r, t, cond) -> [B, *dims]`.
      path: an affine path; rectified flow by default.
      coupling: a coupling object; `Independent()` by default.
      time_sampler: a time sampler for the flow-matching rows; `Uniform()` by default.
      finest_steps: `M`, the finest number of sampling steps, a power of two >= 2.
      bootstrap_fraction: the share of the batch given self-consistency targets.
      model_key: if True, every model call gets the same `key=` (dropout).
      allow_cond_blind_coupling: as in :func:`flowjax.losses.cfm_loss`.

    Returns:
      `(loss, aux)` with the scalars `mse`, `fm_mse`, `consistency_mse` and
      the coupling's `coupling_*`.
    """
    time_sampler = _check_loss_options(locals(), Uniform())
    path = RectifiedFlow() if path is None else path
    k_pair, k_t, k_level, k_start, k_z, k_model = jax.random.split(key, 6)
    model = _keyed_model(apply_fn, k_model if model_key else None)
    x0, x1, cond, aux = paired_batch(k_pair, batch, Independent() if coupling is None
                                     else coupling,
                                     allow_cond_blind_coupling=allow_cond_blind_coupling)
    n, dtype = x1.shape[0], x1.dtype
    nb = int(round(n * bootstrap_fraction))

    # Self-consistency rows :nb on the dyadic grid, flow-matching rows nb: at step 1/M.
    r_fm = _sample_times(time_sampler, k_t, n - nb, dtype) * (1.0 - 1.0 / finest_steps)
    j = jax.random.randint(k_level, (nb,), 0, int(math.log2(finest_steps)))
    big = (2.0 ** -j).astype(dtype)
    r_b = jnp.floor(jax.random.uniform(k_start, (nb,)) * 2.0 ** j).astype(dtype) * big
    r = jnp.concatenate([r_b, r_fm])
    t = jnp.concatenate([r_b + big, r_fm + 1.0 / finest_steps])
    z = _path_noise(path, k_z, x1)
    x_r = path.interpolate(x0, x1, r, z)
    target = path.velocity(x0, x1, r, z)[nb:]
    if nb:
        head = jax.tree.map(lambda c: c[:nb], cond)
        target = jnp.concatenate(
            [shortcut_target(model, params, x_r[:nb], r_b, r_b + big, head), target])
    out = _model_call(model, None, params, x_r, r, t, cond, like=x1)
    aux = {"mse": regression(out, target), "fm_mse": regression(out[nb:], target[nb:]),
           "consistency_mse": regression(out[:nb], target[:nb]) if nb
           else jnp.zeros((), dtype), **aux}
    return aux["mse"], aux


def reflow_target(x0: Batch, x1: Batch) -> Batch:
    r"""The reflow target :math:`x_1 - x_0`: the velocity of the straight path through a pair.

    Reflow (Liu, Gong and Liu 2022) regresses :math:`v_\theta(x_t, t)`,
    :math:`x_t = t x_1 + (1 - t) x_0`, on it for pairs
    :math:`x_1 = \mathrm{ODE}(x_0)` of the previous flow.

    Args:
      x0: sources `[B, *dims]`.
      x1: their images under the previous flow, shaped like `x0`.

    Returns:
      `[B, *dims]`.
    """
    check_same_shape("x1", x1, "x0", x0)
    return x1 - x0


def reflow_loss(params: Params, key: KeyArray, batch: dict, *, apply_fn: Callable,
                distill: bool = False, time_sampler: AbstractTimeSampler | None = None,
                model_key: bool = False) -> tuple[jax.Array, dict]:
    r"""Rectified-flow loss on fixed pairs `(x0, x1)`: k-rectified flow and its distillation.

    Reflow (Liu, Gong and Liu 2022) trains the straight path
    :math:`x_t = t x_1 + (1 - t) x_0` on pairs :math:`x_1 = \mathrm{ODE}(x_0)`
    of the previous flow (see :func:`flowjax.sample.reflow_pairs`) with
    :func:`reflow_target`; the pairs are kept as given (no re-coupling). With
    `distill=True` the loss is taken at `t = 0` only,
    :math:`\|v_\theta(x_0, 0) - (x_1 - x_0)\|^2`, which trains the one-step
    map :math:`x_0 + v_\theta(x_0, 0)` (their one-step distillation, with the
    L2 distance).

    Args:
      params: model parameters.
      key: a PRNG key.
      batch: a dict with `x0` and `x1` (paired row by row), optionally `cond`.
      apply_fn: `apply_fn(params, x, t, cond) -> [B, *dims]`.
      distill: train the one-step map only (no `time_sampler` then).
      time_sampler: the time sampler of k-rectified flow; `Uniform()` by default.
      model_key: if True, the model is called with `key=` (dropout).

    Returns:
      `(loss, aux)` with the scalars `mse` (the loss) and `coupling_*` of the given pairs.
    """
    time_sampler = _check_loss_options(locals(), Uniform())
    k_pair, k_t, k_model = jax.random.split(key, 3)
    x0, x1, cond, aux = paired_batch(k_pair, batch, Independent(), keys=("x0", "x1"))
    t = (jnp.zeros(x1.shape[:1], x1.dtype) if distill
         else _sample_times(time_sampler, k_t, x1.shape[0], x1.dtype))
    x_t = RectifiedFlow().interpolate(x0, x1, t)
    out = _model_call(apply_fn, k_model if model_key else None, params, x_t, t, cond, like=x1)
    loss = regression(out, reflow_target(x0, x1))
    return loss, {"mse": loss, **aux}
