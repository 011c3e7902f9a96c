r"""Classifier-free and classifier guidance as velocity fields.

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

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from flowjax._checks import check_callable, check_number, check_path
from flowjax._types import Array, Batch, BatchTimes, Cond, Float, Params, Scalar
from flowjax.paths import T_CLIP, AffinePath, Prediction
from flowjax.paths._conversions import _coefficient
from flowjax.sample._fields import _call_model, _check_field, _check_model, _to_velocity


def _scale_and_interval(guidance_scale, interval):
    """Checks the guidance weight (kept as an array leaf) and the interval (static floats)."""
    check_number("guidance_scale", guidance_scale)
    ok = isinstance(interval, (tuple, list)) and len(interval) == 2
    lo, hi = (check_number("interval", b) for b in interval) if ok else (None, None)
    if not ok or not 0.0 <= float(lo) <= float(hi) <= 1.0:
        raise ValueError(f"`interval` must be a pair (lo, hi) with 0 <= lo <= hi <= 1, "
                         f"got {interval!r}.")
    return jnp.asarray(guidance_scale), (float(lo), float(hi))


def _check_labels(labels, x):
    labels = jnp.asarray(labels)
    if labels.shape != x.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"`labels` must be integers of shape {x.shape[:1]}, "
                         f"got {labels.dtype} {labels.shape}.")
    return labels


@eqx.filter_jit
def _call_classifier(classifier_fn, params, x, t):
    """The classifier's logits, compiled once per input shape."""
    return classifier_fn(params, x, t)


def _inside(t, interval, x):
    inside = (t >= interval[0]) & (t <= interval[1])
    return inside.reshape(t.shape + (1,) * (x.ndim - 1))


class ClassifierFreeGuidance(eqx.Module):
    r"""Classifier-free guidance of a model trained with condition dropout.

    One forward pass on a doubled batch, `(cond, null_cond)`, combined as
    :math:`o_\varnothing + w\,(o_c - o_\varnothing)` inside `interval` and
    :math:`o_c` outside, then converted to a velocity.

    Attributes:
      apply_fn: `apply_fn(params, x, t, cond)` (static).
      params: its parameters.
      cond: the conditions `[B, ...]`.
      null_cond: the "no condition" value (e.g. `num_classes` for
        `flowjax.models.MLP`), broadcast like `cond`.
      guidance_scale: the guidance weight w (an array leaf: a new value
        reuses the compiled sampler).
      interval: the times `(lo, hi)` where guidance applies.
      path: as for :class:`flowjax.sample.ModelVelocity`.
      prediction: as for :class:`flowjax.sample.ModelVelocity`.
    """

    apply_fn: Callable = eqx.field(static=True)
    params: Params
    cond: Cond
    null_cond: Cond
    guidance_scale: Float[Array, ""]
    interval: tuple[float, float] = eqx.field(static=True)
    path: AffinePath | None
    prediction: Prediction = eqx.field(static=True)

    def __init__(self, apply_fn: Callable, params: Params, cond: Cond, null_cond: Cond,
                 guidance_scale: Scalar, interval: tuple[float, float] = (0.0, 1.0),
                 path: AffinePath | None = None,
                 prediction: Prediction = Prediction.VELOCITY):
        _check_model(apply_fn, 4, path, prediction)
        self.guidance_scale, self.interval = _scale_and_interval(guidance_scale, interval)
        self.apply_fn, self.params, self.path, self.prediction = apply_fn, params, path, prediction
        self.cond, self.null_cond = cond, null_cond

    def __call__(self, x: Batch, t: BatchTimes) -> Batch:
        cond = jnp.asarray(self.cond)
        null = jnp.broadcast_to(jnp.asarray(self.null_cond, cond.dtype), cond.shape)
        out = _call_model(self.apply_fn, self.params, jnp.concatenate([x, x]),
                         jnp.concatenate([t, t]), jnp.concatenate([cond, null]))
        oc, ou = out[: x.shape[0]], out[x.shape[0]:]
        w = jnp.where(_inside(t, self.interval, x), self.guidance_scale, 1.0).astype(x.dtype)
        return _to_velocity(self.path, self.prediction, x, t, ou + w * (oc - ou))


class ClassifierGuidance(eqx.Module):
    r"""Steers a velocity field with the gradient of a noisy-data classifier.

    .. math:: v_w(x, t) = v(x, t) + w\,\tfrac12 g(t)^2\,\nabla_x\log p_\phi(y \mid x, t)

    for t in `interval`, and :math:`v` outside it. w = 0 is the unguided
    field, w = 1 samples :math:`p(x \mid y)` when :math:`v` and :math:`p_\phi`
    are exact. :math:`\tfrac12 g^2` is the score-to-velocity factor of
    :func:`flowjax.paths.convert` (with its floors); it grows like 1/t at the
    noise end of rectified flow, where the classifier carries no information,
    so an interval that starts a little after 0 is safer there. Each call
    evaluates the field once and the classifier once forwards and once
    backwards.

    Attributes:
      field: the (unconditional) velocity field, `field(x, t)`.
      classifier_fn: `classifier_fn(params, x, t) -> logits [B, K]` (static),
        trained on the path's noisy points (:func:`flowjax.losses.classifier_loss`).
        Rows must not interact (no batch statistics).
      classifier_params: its parameters.
      labels: the target classes, integers `[B]`.
      path: the affine path the field and the classifier were trained on.
      guidance_scale: the guidance weight w (an array leaf).
      interval: the times where the classifier term applies.
    """

    field: Callable
    classifier_fn: Callable = eqx.field(static=True)
    classifier_params: Params
    labels: Array
    path: AffinePath
    guidance_scale: Float[Array, ""]
    interval: tuple[float, float] = eqx.field(static=True)

    def __init__(self, field: Callable, classifier_fn: Callable, classifier_params: Params,
                 labels: Array, path: AffinePath, guidance_scale: Scalar,
                 interval: tuple[float, float] = (0.0, 1.0)):
        _check_field("field", field)
        check_callable("classifier_fn", classifier_fn)
        self.path = check_path("path", path)
        self.guidance_scale, self.interval = _scale_and_interval(guidance_scale, interval)
        self.field, self.classifier_fn = field, classifier_fn
        self.classifier_params, self.labels = classifier_params, labels

    def __call__(self, x: Batch, t: BatchTimes) -> Batch:
        labels = _check_labels(self.labels, x)
        v = self.field(x, t)

        def log_prob(x):  # rows are independent, so the gradient of the sum is per row
            logits = _call_classifier(self.classifier_fn, self.classifier_params, x, t)
            log_p = jax.nn.log_softmax(logits, axis=-1)
            return jnp.sum(jnp.take_along_axis(log_p, labels[:, None], axis=-1))

        grad = jax.grad(log_prob)(x)
        half_g2 = _coefficient(self.path, t, Prediction.SCORE, Prediction.VELOCITY, T_CLIP)
        w = jnp.where(_inside(t, self.interval, x),
                      self.guidance_scale * half_g2.reshape(t.shape + (1,) * (x.ndim - 1)), 0.0)
        return v + w.astype(x.dtype) * grad
