r"""Classifier-free guidance for any velocity function.

.. math:: v_w(x, t) = v(x, t \mid \varnothing) + w\,\big(v(x, t \mid c) - v(x, t \mid \varnothing)\big)

for t in the guidance interval, and the conditional :math:`v(x, t \mid c)`
outside it (Ho & Salimans 2022, "Classifier-free diffusion guidance";
Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves
sample and distribution quality"). w = 1 is the conditional model, w = 0 the
unconditional one. The combination is linear, so guiding velocities, data or
noise predictions gives the same field.
"""

from __future__ import annotations

import jax.numpy as jnp

from flowjax._checks import check_callable, check_number, check_path
from flowjax.paths import Prediction, convert
from flowjax.paths._conversions import check_prediction


def _check(scale, interval):
    check_number("scale", scale)
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise ValueError(f"`interval` must be a pair (lo, hi), got {interval!r}.")
    lo, hi = interval
    for bound in interval:
        check_number("interval", bound)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"`interval` must satisfy 0 <= lo <= hi <= 1, got {interval!r}.")


def _weight(t, scale, interval):
    inside = (t >= interval[0]) & (t <= interval[1])
    return jnp.where(inside, scale, 1.0)


def classifier_free_guidance(cond_fn, uncond_fn, *, scale: float,
                             interval: tuple[float, float] = (0.0, 1.0)):
    """Combines a conditional and an unconditional velocity function (same `args`).

    Returns `velocity_fn(x, t, args)`; both functions are evaluated at every call.
    """
    check_callable("cond_fn", cond_fn)
    check_callable("uncond_fn", uncond_fn)
    _check(scale, interval)

    def velocity_fn(x, t, args):
        vc, vu = cond_fn(x, t, args), uncond_fn(x, t, args)
        w = _weight(t, scale, interval).reshape(t.shape + (1,) * (x.ndim - 1))
        return vu + w * (vc - vu)

    return velocity_fn


def guided_model_velocity(apply_fn, *, scale: float, null_cond,
                          interval: tuple[float, float] = (0.0, 1.0), path=None,
                          prediction: Prediction = Prediction.VELOCITY):
    """CFG for a model trained with label dropout: one forward pass on a doubled batch.

    Args:
      apply_fn: `apply_fn(params, x, t, cond)`.
      scale: the guidance weight w.
      null_cond: the "no condition" value (e.g. `num_classes` for `flowjax.models.MLP`),
        broadcast like `cond`.
      interval: times where guidance applies.
      path, prediction: as in :func:`flowjax.sample.model_velocity`.

    Returns:
      `velocity_fn(x, t, args)` with `args = (params, cond)`.
    """
    check_callable("apply_fn", apply_fn)
    _check(scale, interval)
    check_prediction("prediction", prediction)
    if path is not None:
        check_path("path", path)
    if prediction != Prediction.VELOCITY and path is None:
        raise ValueError("`path` is needed to convert a non-velocity prediction.")

    def velocity_fn(x, t, args):
        params, cond = args
        cond = jnp.asarray(cond)
        null = jnp.broadcast_to(jnp.asarray(null_cond, cond.dtype), cond.shape)
        out = apply_fn(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                       jnp.concatenate([cond, null]))
        oc, ou = out[: x.shape[0]], out[x.shape[0]:]
        w = _weight(t, scale, interval).reshape(t.shape + (1,) * (x.ndim - 1))
        guided = ou + w * (oc - ou)
        if prediction == Prediction.VELOCITY:
            return guided
        return convert(path, x, t, guided, given=prediction, to=Prediction.VELOCITY)

    return velocity_fn
