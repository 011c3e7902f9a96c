r"""Losses for one- and few-step generation: MeanFlow, shortcut models and reflow.

All three train a *flow map* in flowjax's time (t = 0 source, t = 1 data):
an average-velocity model `u(x, r, t)` that takes the state `x` at time `r`
to time `t >= r` in one jump,

.. math:: x_t = x_r + (t - r)\, u(x_r, r, t),\qquad
          u(x_r, r, t) = \frac{1}{t - r}\int_r^t v(x_\tau, \tau)\, d\tau,

with `u(x, t, t) = v(x, t)` the instantaneous velocity (Boffi, Albergo and
Vanden-Eijnden 2024 write flow maps the same way). Sample with
:func:`flowjax.sample.solve_flow_map`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from flowjax._checks import (broadcast_time, check_array, check_callable, check_finite,
                             check_number, check_path, check_same_shape, check_time,
                             is_concrete)
from flowjax.couplings import independent
from flowjax.losses._cfm import (call_model, cfm_loss, check_batch, check_label_dropout,
                                 check_model, check_output, drop_labels, paired_batch,
                                 sample_times)
from flowjax.paths import RectifiedFlow
from flowjax.time import logit_normal, ordered_pairs, uniform


def meanflow_target(apply_fn, params, x, r, t, v, cond=None):
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
      r, t: `[B]` start and end times, `r <= t`.
      v: the velocity at `(x, r)` (conditional, marginal or guided), `[B, *dims]`.
      cond: conditioning passed to `apply_fn`.

    Returns:
      `(u, target)`: the prediction (differentiable in `params`) and the
      target, with its gradient stopped.
    """
    check_callable("apply_fn", apply_fn)
    check_array("x", x)
    check_finite("x", x)
    r, t = check_time(r, x.shape[0], name="r"), check_time(t, x.shape[0], name="t")
    if r.ndim != 1 or t.ndim != 1:
        raise ValueError(f"`r` and `t` must have shape [B], got {r.shape} and {t.shape}.")
    check_array("v", v)
    check_same_shape("v", v, "x", x)
    check_finite("v", v)
    if is_concrete(r) and is_concrete(t) and np.any(np.asarray(r) > np.asarray(t)):
        raise ValueError("`r` must not exceed `t`.")
    r, t = r.astype(x.dtype), t.astype(x.dtype)

    def u_fn(x_, r_, t_):
        return apply_fn(params, x_, r_, t_, cond)

    u, du_dr = jax.jvp(u_fn, (x, r, t), (v, jnp.ones_like(r), jnp.zeros_like(t)))
    check_output(u, x)
    target = v + broadcast_time(t - r, x) * du_dr
    return u, jax.lax.stop_gradient(target)


def _check_nonneg(name, value):
    check_number(name, value, low=0.0)


def meanflow_loss(params, key, batch, *, apply_fn, path=None, coupling=None,
                  time_sampler=None, velocity_fn=None, weight_power: float = 1.0,
                  weight_eps: float = 1e-3, guidance_scale: float = 1.0,
                  guidance_mix: float = 0.0, null_cond=None, cond_drop_prob: float = 0.0,
                  model_key: bool = False):
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
      key: a PRNG key.
      batch: dict with `x1`, optionally `x0` and `cond` (as for
        :func:`flowjax.losses.cfm_loss`).
      apply_fn: `apply_fn(params, x, r, t, cond) -> [B, *dims]`.
      path: an affine path; rectified flow by default (the paper's).
      coupling: `(key, x0, x1) -> ((x0, x1), aux)`; independent by default.
      time_sampler: `(key, shape) -> (r, t)` with `r <= t`; by default the
        paper's, :func:`flowjax.time.ordered_pairs` of `logit_normal(0.4, 1.0)`
        with 75% of pairs at `r = t`.
      velocity_fn: optional `velocity_fn(x, t, cond) -> v` used instead of the
        conditional velocity (an exact marginal field, or a teacher to distil).
      weight_power, weight_eps: `p` and `c` of the adaptive weight.
      guidance_scale, guidance_mix: :math:`\omega` and :math:`\kappa`;
        `(1, 0)` is no guidance.
      null_cond: the "no label" value (e.g. `num_classes` for
        :class:`flowjax.models.MLP`); needed for guidance and label dropout.
      cond_drop_prob: probability of replacing a label by `null_cond`.
      model_key: if True, every model call gets `key=` (one key for the
        step, so the `jax.jvp` sees a single dropout mask; see
        :func:`flowjax.models.model_fn`).

    Returns:
      `(loss, aux)` with `aux = {"mse", "coupling_cost"}`.
    """
    check_model(key, apply_fn)
    check_batch(batch)
    _check_nonneg("weight_power", weight_power)
    check_number("weight_eps", weight_eps, low=0.0, low_open=True)
    check_number("guidance_scale", guidance_scale)
    check_number("guidance_mix", guidance_mix)
    check_callable("velocity_fn", velocity_fn, allow_none=True)
    check_callable("time_sampler", time_sampler, allow_none=True)
    if path is not None:
        check_path("path", path)
    check_label_dropout(cond_drop_prob, null_cond, batch)
    guided = guidance_scale != 1.0 or guidance_mix != 0.0
    if (guided or cond_drop_prob > 0) and (null_cond is None or batch.get("cond") is None):
        raise ValueError("guidance and label dropout need `null_cond` and batch['cond'].")
    path = RectifiedFlow() if path is None else path
    if time_sampler is None:
        time_sampler = ordered_pairs(logit_normal(0.4, 1.0), equal_fraction=0.75)

    k_x0, k_pair, k_t, k_z, k_drop, k_model = jax.random.split(key, 6)
    model = apply_fn if not model_key else functools.partial(call_model, apply_fn, k_model)
    x0, x1, pair_aux = paired_batch(k_x0, k_pair, batch, coupling)
    r, t = sample_times(time_sampler, k_t, x1.shape[0], x1.dtype, pairs=True)
    z = None if path.noise is None else jax.random.normal(k_z, x1.shape, x1.dtype)
    x_r = path.interpolate(x0, x1, r, z)
    cond = batch.get("cond")
    if cond_drop_prob > 0:
        cond, dropped = drop_labels(k_drop, cond, null_cond, cond_drop_prob)
    else:
        dropped = jnp.zeros(x1.shape[:1], bool)

    v = path.velocity(x0, x1, r, z) if velocity_fn is None else velocity_fn(x_r, r, cond)
    if guided:
        null = jax.tree.map(lambda c: jnp.full_like(c, null_cond), cond)
        v_g = guidance_scale * v + (1.0 - guidance_scale - guidance_mix) * model(
            params, x_r, r, r, null)
        if guidance_mix:
            v_g = v_g + guidance_mix * model(params, x_r, r, r, cond)
        v = jnp.where(broadcast_time(dropped, x1), v, jax.lax.stop_gradient(v_g))

    u, target = meanflow_target(model, params, x_r, r, t, v, cond)
    check_output(u, target)
    sq = jnp.sum(((u - target) ** 2).reshape(x1.shape[0], -1), axis=-1)
    dims = math.prod(x1.shape[1:])
    weight = jax.lax.stop_gradient((sq + weight_eps) ** -weight_power)
    return jnp.mean(weight * sq) / dims, {"mse": jnp.mean(sq) / dims,
                                          "coupling_cost": pair_aux["cost"]}


def shortcut_loss(params, key, batch, *, apply_fn, path=None, coupling=None,
                  time_sampler=None, max_steps: int = 128, bootstrap_fraction: float = 0.25):
    r"""The shortcut-model loss (Frans, Hafner, Levine and Abbeel 2024) for `u(x, r, t)`.

    A step-size-conditioned velocity :math:`s(x, r, d)` is an average velocity
    with `t = r + d`. Shortcut models use flowjax's time direction, so no flip
    is needed. Two kinds of rows:

    - flow matching (a fraction `1 - bootstrap_fraction`): the smallest step
      `d = 1/M` regresses on the conditional velocity at `r ~ U[0, 1 - 1/M]`
      (as in the authors' code; the paper writes it as `d = 0`);
    - self-consistency (the rest): `2d = 2^{-j}`, `j` uniform in
      `{0, ..., log2 M - 1}`, `r` uniform on the grid of multiples of `2d`,
      and the target is two half steps of the model itself:

    .. math:: s(x_r, r, 2d) \leftarrow \mathrm{sg}\big(\tfrac12 [s(x_r, r, d)
              + s(x_r + d\,s(x_r, r, d),\ r + d,\ d)]\big).

    Sampling with `K = 1, 2, 4, ..., M` uniform steps then stays on the
    trained grid.

    Args:
      params, key, batch, apply_fn, path, coupling: as for :func:`meanflow_loss`.
      time_sampler: `(key, shape) -> t` for the flow-matching rows (uniform).
      max_steps: `M`, the finest number of steps, a power of two >= 2.
      bootstrap_fraction: the share of the batch given self-consistency targets.

    Returns:
      `(loss, aux)` with `aux = {"mse", "fm_mse", "consistency_mse", "coupling_cost"}`.
    """
    check_model(key, apply_fn)
    check_batch(batch)
    check_number("max_steps", max_steps, low=2, integer=True)
    if max_steps & (max_steps - 1):
        raise ValueError(f"`max_steps` must be a power of two >= 2, got {max_steps!r}.")
    check_number("bootstrap_fraction", bootstrap_fraction, low=0.0, high=1.0, high_open=True)
    check_callable("time_sampler", time_sampler, allow_none=True)
    if path is not None:
        check_path("path", path)
    path = RectifiedFlow() if path is None else path
    time_sampler = uniform() if time_sampler is None else time_sampler
    k_x0, k_pair, k_t, k_level, k_start, k_z = jax.random.split(key, 6)
    x0, x1, pair_aux = paired_batch(k_x0, k_pair, batch, coupling)
    n, dtype = x1.shape[0], x1.dtype
    nb = int(round(n * bootstrap_fraction))
    levels = int(math.log2(max_steps))

    # Flow-matching rows nb: and self-consistency rows :nb.
    r_fm = sample_times(time_sampler, k_t, n - nb, dtype) * (1.0 - 1.0 / max_steps)
    j = jax.random.randint(k_level, (nb,), 0, levels)
    big = (2.0 ** -j).astype(dtype)
    r_b = jnp.floor(jax.random.uniform(k_start, (nb,)) * 2.0 ** j).astype(dtype) * big
    r = jnp.concatenate([r_b, r_fm])
    t = jnp.concatenate([r_b + big, r_fm + 1.0 / max_steps])
    z = None if path.noise is None else jax.random.normal(k_z, x1.shape, dtype)
    x_r = path.interpolate(x0, x1, r, z)
    cond = batch.get("cond")

    def rows(c, sl):
        return None if c is None else jax.tree.map(lambda a: a[sl], c)

    fm_target = path.velocity(x0, x1, r, z)[nb:]
    if nb:
        xb, cb, half = x_r[:nb], rows(cond, slice(None, nb)), big / 2
        s1 = apply_fn(params, xb, r_b, r_b + half, cb)
        check_output(s1, xb)
        s2 = apply_fn(params, xb + broadcast_time(half, xb) * s1, r_b + half, r_b + big, cb)
        target = jnp.concatenate([jax.lax.stop_gradient(0.5 * (s1 + s2)), fm_target])
    else:
        target = fm_target
    out = apply_fn(params, x_r, r, t, cond)
    check_output(out, target)
    err = jnp.mean(((out - target) ** 2).reshape(n, -1), axis=-1)
    aux = {"mse": jnp.mean(err), "fm_mse": jnp.mean(err[nb:]),
           "consistency_mse": jnp.mean(err[:nb]) if nb else jnp.zeros((), dtype),
           "coupling_cost": pair_aux["cost"]}
    return aux["mse"], aux


def _at_zero(key, shape):
    del key
    return jnp.zeros(shape)


def reflow_loss(params, key, batch, *, apply_fn, distill: bool = False, time_sampler=None):
    r"""Rectified-flow loss on fixed pairs `(x0, x1)`: k-rectified flow and its distillation.

    Reflow (Liu, Gong and Liu 2022) trains the straight path
    :math:`x_t = t x_1 + (1 - t) x_0` on pairs :math:`x_1 = \mathrm{ODE}(x_0)`
    of the previous flow (see :func:`flowjax.sample.reflow_pairs`); the
    pairs are kept as given (no re-coupling). With `distill=True` the loss
    is taken at `t = 0` only, :math:`\|v_\theta(x_0, 0) - (x_1 - x_0)\|^2`,
    which trains the one-step map :math:`x_0 + v_\theta(x_0, 0)` (their
    one-step distillation, with the L2 distance).

    Args:
      params, key, apply_fn: as for :func:`flowjax.losses.cfm_loss`.
      batch: a dict with `x0` and `x1` (paired row by row), optionally `cond`.
      distill: train the one-step map only.
      time_sampler: the time sampler of k-rectified flow (uniform by default).
    """
    check_batch(batch, ("x0", "x1"))
    return cfm_loss(params, key, batch, apply_fn=apply_fn, path=RectifiedFlow(),
                    coupling=independent(), time_sampler=_at_zero if distill else time_sampler)
