r"""Classifier-free and classifier guidance for any velocity function.

.. math:: v_w(x, t) = v(x, t \mid \varnothing) + w\,\big(v(x, t \mid c) - v(x, t \mid \varnothing)\big)

for t in the guidance interval, and the conditional :math:`v(x, t \mid c)`
outside it (Ho & Salimans 2022, "Classifier-free diffusion guidance";
Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves
sample and distribution quality"). w = 1 is the conditional model, w = 0 the
unconditional one. The combination is linear, so guiding velocities, data or
noise predictions gives the same field.

Classifier guidance (Song et al. 2021, "Score-based generative modeling
through SDEs", Sec. 5; Dhariwal & Nichol 2021, "Diffusion models beat GANs",
Sec. 4) adds the gradient of a time-dependent classifier
:math:`\log p_t(y \mid x)` (trained with :func:`flowjax.losses.classifier_loss`)
to the score, :math:`\nabla\log p_t(x) + w\nabla\log p_t(y \mid x)`, which is
:math:`\nabla\log p_t(x \mid y)` at w = 1. At fixed x the velocity is affine in
the score with slope :math:`\tfrac12 g(t)^2` (:func:`flowjax.paths.sde_diffusion`),
so in the flow view

.. math:: v_w(x, t) = v(x, t) + w\,\tfrac12 g(t)^2\,\nabla_x\log p_t(y \mid x),\qquad
          \tfrac12 g^2 = \frac{\bar\sigma(\bar\sigma\dot\alpha - \alpha\dot{\bar\sigma})}{\alpha}

(:math:`(1 - t)/t` on rectified flow). With exact fields, classifier guidance
at scale w equals classifier-free guidance at scale w.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flowjax._checks import check_callable, check_number, check_path
from flowjax.paths import Prediction, convert
from flowjax.paths._conversions import _coefficient, check_prediction


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


def classifier_guidance(velocity_fn, classifier_fn, *, path, scale: float,
                        interval: tuple[float, float] = (0.0, 1.0)):
    r"""Steers a velocity field with the gradient of a noisy-data classifier.

    .. math:: v_w(x, t) = v(x, t) + w\,\tfrac12 g(t)^2\,\nabla_x\log p_\phi(y \mid x, t)

    for t in `interval`, and :math:`v` outside it (no classifier term). w = 0
    is the unguided field, w = 1 samples :math:`p(x \mid y)` when :math:`v` and
    :math:`p_\phi` are exact. :math:`\tfrac12 g^2` is the score-to-velocity factor
    of :func:`flowjax.paths.convert` (with its floors); it grows like 1/t at the
    noise end of rectified flow, where the classifier carries no information,
    so an interval that starts a little after 0 is safer there.

    Args:
      velocity_fn: the (unconditional) field, `velocity_fn(x, t [B], args)`.
      classifier_fn: `classifier_fn(params, x, t) -> logits [B, K]`, trained on
        the path's noisy points (:func:`flowjax.losses.classifier_loss`). Rows
        must not interact (no batch statistics): the gradient of the summed
        log-probabilities is taken as each row's own.
      path: the affine path `velocity_fn` and the classifier were trained on.
      scale: the guidance weight w.
      interval: times where the classifier term applies.

    Returns:
      `guided(x, t, args)` with `args = (velocity_args, classifier_params, labels)`,
      `labels` integer `[B]`. Each call evaluates the field once and the
      classifier once forwards and once backwards.
    """
    _check(scale, interval)
    if not callable(velocity_fn) or not callable(classifier_fn):
        raise TypeError("`velocity_fn` and `classifier_fn` must be callable.")

    def guided(x, t, args):
        velocity_args, classifier_params, labels = args
        labels = jnp.asarray(labels)
        if labels.shape != x.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"`labels` must be integers of shape {x.shape[:1]}, "
                             f"got {labels.dtype} {labels.shape}.")
        v = velocity_fn(x, t, velocity_args)

        def log_prob(x):  # rows are independent, so the gradient of the sum is per row
            logits = classifier_fn(classifier_params, x, t)
            log_p = jax.nn.log_softmax(logits, axis=-1)
            return jnp.sum(jnp.take_along_axis(log_p, labels[:, None], axis=-1))

        grad = jax.grad(log_prob)(x)
        half_g2 = _coefficient(path, t, Prediction.SCORE, Prediction.VELOCITY, 1e-5)
        inside = (t >= interval[0]) & (t <= interval[1])
        w = jnp.where(inside, scale * half_g2, 0.0).reshape(t.shape + (1,) * (x.ndim - 1))
        return v + w.astype(x.dtype) * grad

    return guided
