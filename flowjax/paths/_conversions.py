r"""Exact conversions between velocity, data, noise and score predictions.

For an affine path with an independent Gaussian source the marginal point is
:math:`x_t = \alpha x_1 + \bar\sigma \varepsilon` (:math:`\bar\sigma` is
:meth:`AffinePath.sigma_total`, which folds any extra noise in), and every
prediction a model can make is an affine function of the posterior means
:math:`\hat x_1 = E[x_1 | x_t]` and :math:`\hat\varepsilon = E[\varepsilon | x_t]`:

.. math::
    x_t = \alpha \hat x_1 + \bar\sigma \hat\varepsilon,\qquad
    v = \dot\alpha \hat x_1 + \dot{\bar\sigma} \hat\varepsilon,\qquad
    \nabla \log p_t(x_t) = -\hat\varepsilon / \bar\sigma.

(Lipman et al. 2024, "Flow Matching Guide and Code", Sec. 4.8; Kingma et al.
2021.) :func:`convert` solves this 2x2 system, so conversions are exact
inverses of each other. Their determinant is
:math:`\Delta = \alpha\dot{\bar\sigma} - \bar\sigma\dot\alpha`, which is
negative on every path of this module (-1 for rectified flow, -pi/2 for cosine).

Safety at the ends: the schedule is evaluated at the true `t`, and only the
denominators are floored: :math:`\alpha` by :math:`\alpha(t_{clip}) - \alpha(0)` (it
is 0 at t = 0 on most paths) and :math:`\bar\sigma` by
:math:`\bar\sigma(1 - t_{clip}) - \bar\sigma(1)` (0 at t = 1 on most paths), the
values a schedule that vanishes at the end reaches `t_clip` away from it, so a
floor never acts on a path whose :math:`\alpha(0)` or :math:`\bar\sigma(1)` is
clearly positive (VP at t = 0, Lipman's path and VE at t = 1); :math:`\Delta` is
floored in magnitude relative to its terms, at the dtype's machine epsilon
times :math:`|\alpha\dot{\bar\sigma}| + |\bar\sigma\dot\alpha|`, those terms
taken no smaller than their size `t_clip` from the nearer end. It vanishes
only where the velocity carries no information (at t = 0 on :math:`t^n` paths
with n > 1, where :math:`\Delta = -n t^{n-1}`), so the floor acts only there:
a velocity converts exactly down to `t_clip` from that end whatever the size
of :math:`\Delta` (in float32 at t = 1e-4 on :math:`t^5`, :math:`\Delta = -5\cdot 10^{-16}`).
So a conversion is exact wherever its
denominator is above the floor (e.g. data -> velocity at t = 0 on rectified
flow), and finite everywhere; where a floor acts the problem itself is
ill-posed (data cannot be read off pure noise) and errors are amplified by
at most the inverse of the floor.

At the ends exactly, in float32 and float64: every conversion is finite at
t = 0 and t = 1 (and at 1e-7 and 1 - 1e-7), on every path of this module,
and so are its gradients with respect to `t`, `x_t` and `value` (the
schedules have finite autodiff derivatives there, see
:mod:`flowjax.paths`). Where the problem is well posed the end values are
the exact limits: data and noise from a velocity at t = 0 and t = 1
(:math:`\Delta \ne 0`; at t = 1 with bridge noise :math:`\dot{\bar\sigma}` is the
clipped slope, not 0), a velocity from noise at t = 1 and from data at t = 0.
The floors act only within `t_clip` of an end; there a conversion that
divides by a vanishing :math:`\alpha` or :math:`\bar\sigma` (data from noise
near t = 0, noise or score from data near t = 1) is finite but not the
exact inverse.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flowjax._checks import (broadcast_time, check_array, check_instance,
                             check_number, check_path, check_same_shape, check_time)
from flowjax._types import Array, Batch, Times
from flowjax.paths._constants import T_CLIP
from flowjax.paths._paths import AffinePath, checked_times


class Prediction(enum.Enum):
    """What a model predicts; the loss target and the input of :func:`convert`."""

    VELOCITY = "velocity"  #: the marginal velocity v(x, t)
    DATA = "data"  #: x1, E[x1 | x_t]
    NOISE = "noise"  #: the standardized noise E[eps | x_t] (x0 for a Gaussian source)
    SCORE = "score"  #: grad_x log p_t(x)


def check_prediction(name: str, kind, allowed=tuple(Prediction)):
    """Raises unless `kind` is one of the `allowed` :class:`Prediction` members."""
    check_instance(name, kind, Prediction, "a flowjax.paths.Prediction (e.g. Prediction.DATA)")
    if kind not in allowed:
        raise ValueError(f"`{name}` must be one of {[k.name for k in allowed]}, got {kind!r}.")
    return kind


class _Coeffs(NamedTuple):
    a: jax.Array  # alpha
    da: jax.Array
    s: jax.Array  # sigma_total
    ds: jax.Array
    det: jax.Array  # a * ds - s * da, floored away from 0
    a_div: jax.Array  # alpha floored, for divisions
    s_div: jax.Array  # sigma_total floored, for divisions


def _coeffs(path, t, t_clip) -> _Coeffs:
    """The schedule at `t` (already checked) and the floored denominators (module docstring)."""
    with checked_times():
        a, da = path.alpha(t), path.d_alpha(t)
        s, ds = path.sigma_total(t), path.d_sigma_total(t)
        dtype = jnp.result_type(a)
        ends = jnp.asarray([0.0, t_clip, 1.0 - t_clip, 1.0], dtype)
        alphas, sigmas = path.alpha(ends), path.sigma_total(ends)
        inner = ends[1:3]
        terms_in = (jnp.abs(alphas[1:3] * path.d_sigma_total(inner))
                    + jnp.abs(sigmas[1:3] * path.d_alpha(inner)))
    tiny, eps = jnp.finfo(dtype).tiny, jnp.finfo(dtype).eps
    det = a * ds - s * da
    # Delta's floor is relative to its terms (which may all be small, e.g. -5 t^4 on t^5),
    # with the terms taken no smaller than t_clip from the nearer end.
    terms = jnp.abs(a * ds) + jnp.abs(s * da)
    near = jnp.where(t < 0.5, terms_in[0], terms_in[1])
    floor = jnp.maximum(eps * jnp.maximum(terms, near), tiny)
    det = jnp.where(jnp.abs(det) < floor, jnp.where(det > 0, floor, -floor), det)
    a_floor = alphas[1] - alphas[0]  # what a vanishing alpha grows to over t_clip
    s_floor = sigmas[2] - sigmas[3]
    a_div = jnp.maximum(a, jnp.maximum(a_floor, tiny))
    s_div = jnp.maximum(s, jnp.maximum(s_floor, tiny))
    return _Coeffs(a, da, s, ds, det, a_div, s_div)


_NO_T = object()


def _check_path_and_clip(path, t_clip, t=_NO_T):
    """Checks `path` and `t_clip`; returns `t` checked (a scalar or `[B]` in [0, 1]) if given."""
    check_path("path", path)
    check_number("t_clip", t_clip, low=0.0, high=0.5, low_open=True, high_open=True)
    return None if t is _NO_T else check_time(t)


def convert(path: AffinePath, x_t: Batch, t: Times, value: Batch, *, given: Prediction,
            to: Prediction, t_clip: float = T_CLIP) -> Batch:
    r"""Converts a prediction `value` of kind `given` at `(x_t, t)` to kind `to`.

    Args:
      path: an :class:`AffinePath`.
      x_t: points `[B, *dims]`.
      t: times, a scalar or `[B]`, in [0, 1].
      value: the prediction, shaped like `x_t`.
      given: the kind of `value` (a :class:`Prediction`).
      to: the kind wanted.
      t_clip: sets the floors of the denominators, alpha(t_clip) - alpha(0) and
        sigma_total(1 - t_clip) - sigma_total(1) (see the module docstring), in (0, 0.5).

    Returns:
      The prediction of kind `to`, shaped like `x_t`.

    Examples:
      A data prediction read as a velocity: on rectified flow the velocity
      is `x1 - x0`, with `x0 = (x_t - t x1) / (1 - t)`.

      >>> import jax.numpy as jnp
      >>> from flowjax.paths import Prediction, RectifiedFlow, convert
      >>> x_t, t, x1_hat = jnp.array([[1.0, 2.0]]), jnp.array([0.5]), jnp.array([[3.0, 2.0]])
      >>> convert(RectifiedFlow(), x_t, t, x1_hat, given=Prediction.DATA, to=Prediction.VELOCITY)
      Array([[4., 0.]], dtype=float32)
    """
    given, to = check_prediction("given", given), check_prediction("to", to)
    x_t, value, t = _check_points(path, x_t, t, value, t_clip)
    if given == to:
        return value
    c = _coeffs(path, t, t_clip)

    if given == Prediction.DATA:
        x1 = value
        eps = (x_t - c.a * x1) / c.s_div
    elif given == Prediction.NOISE:
        eps = value
        x1 = (x_t - c.s * eps) / c.a_div
    elif given == Prediction.SCORE:
        eps = -c.s * value
        x1 = (x_t - c.s * eps) / c.a_div
    else:  # VELOCITY
        x1 = (c.ds * x_t - c.s * value) / c.det
        eps = (c.a * value - c.da * x_t) / c.det

    if to == Prediction.DATA:
        return x1
    if to == Prediction.NOISE:
        return eps
    if to == Prediction.SCORE:
        return -eps / c.s_div
    return c.da * x1 + c.ds * eps


def _check_points(path, x_t, t, value, t_clip):
    """`convert`'s checks: `x_t`, `value` and the checked `t` (broadcast against `x_t`).

    Not finiteness: a NaN prediction propagates (see :mod:`flowjax.paths._paths`).
    """
    _check_path_and_clip(path, t_clip)
    check_array("x_t", x_t)
    check_array("value", value)
    check_same_shape("value", value, "x_t", x_t)
    return x_t, value, broadcast_time(check_time(t, x_t.shape[0]), x_t)


def _coefficient(path, t, given: Prediction, to: Prediction, t_clip: float):
    """The factor c(t) with d(prediction `to`) = c(t) d(prediction `given`) at fixed `x_t`.

    :func:`convert` is affine in `value` at fixed `x_t` and zero at
    `x_t = value = 0`, so the factor is `convert(0, t, 1)`: the same floors.
    """
    t = jnp.atleast_1d(jnp.asarray(t, jnp.result_type(t, float)))
    one = jnp.ones(t.shape + (1,), t.dtype)
    return convert(path, jnp.zeros_like(one), t, one, given=given, to=to, t_clip=t_clip)[:, 0]


def noise_ratio(path: AffinePath, t: Times, *, t_clip: float = T_CLIP) -> Array:
    r"""The noise-to-signal ratio :math:`\bar\sigma(t)/\alpha(t)`: EDM's noise level :math:`\sigma`.

    Karras et al. 2022 ("Elucidating the design space of diffusion-based
    generative models", Sec. 2) write every Gaussian diffusion as
    :math:`x = s(\sigma)(x_1 + \sigma\varepsilon)`; on an affine path
    :math:`x_t/\alpha = x_1 + (\bar\sigma/\alpha)\varepsilon`, so their
    :math:`\sigma` is this ratio and their :math:`s` is :math:`\alpha`. It decreases
    from :math:`\infty` (or :math:`\sigma_{max}` on VE) at t = 0 to 0 (or
    :math:`\sigma_{min}`) at t = 1; :func:`flowjax.time.time_of_noise_ratio` inverts it.
    Both are floored like :func:`convert` (by :math:`\bar\sigma(1 - t_{clip})` and
    :math:`\alpha(t_{clip})`), so the ratio is positive and finite at both ends.

    Args:
      path: an :class:`AffinePath`.
      t: times, a scalar or `[B]`, in [0, 1].
      t_clip: sets the floors.

    Returns:
      `[B]` (a scalar `t` gives `[1]`).
    """
    t = _check_path_and_clip(path, t_clip, t)
    c = _coeffs(path, jnp.atleast_1d(t).astype(jnp.result_type(t, float)), t_clip)
    return c.s_div / c.a_div


def sde_diffusion(path: AffinePath, t: Times, *, t_clip: float = T_CLIP) -> Array:
    r"""The diffusion :math:`g(t)` of the forward (noising) SDE whose marginals are the path's.

    A linear SDE :math:`dx = f(s)x\,ds + g(s)\,dW` run in diffusion time
    :math:`s = 1 - t` (from data to noise, the direction of Song et al. 2021,
    "Score-based generative modeling through SDEs", Eq. 5) has the marginals
    :math:`\alpha x_1 + \bar\sigma\varepsilon` iff :math:`f = d\log\alpha/ds` and
    :math:`g^2 = d\bar\sigma^2/ds - 2f\bar\sigma^2`; in flow time

    .. math:: g(t)^2 = \frac{2\bar\sigma\,(\bar\sigma\dot\alpha - \alpha\dot{\bar\sigma})}{\alpha}
              = \bar\sigma^2\,\frac{d}{dt}\log\mathrm{SNR}(t),
              \qquad \mathrm{SNR} = \alpha^2/\bar\sigma^2.

    VP gives Song et al.'s :math:`g^2 = \beta(1 - t)`, VE
    :math:`g^2 = 2\log(\sigma_{max}/\sigma_{min})\,\sigma(t)^2`, rectified flow
    :math:`2(1 - t)/t`. It is also the factor between score and velocity:
    :math:`v = \dot\alpha x/\alpha + \tfrac12 g^2\nabla\log p_t` (the
    probability-flow ODE), so with :math:`g` as the diffusion of
    :func:`flowjax.sample.solve_sde` the sampler is the reverse-time SDE.
    :math:`\alpha` is floored at :math:`\alpha(t_{clip})` (rectified flow's
    :math:`g` is infinite at t = 0).

    Args:
      path: an :class:`AffinePath`.
      t: times, a scalar or `[B]`, in [0, 1].
      t_clip: sets the floor of :math:`\alpha`.

    Returns:
      `[B]` (a scalar `t` gives `[1]`), non-negative.
    """
    t = _check_path_and_clip(path, t_clip, t)
    # (1/2) g^2 is the score -> velocity factor of `convert`: d v = (g^2 / 2) d score.
    return jnp.sqrt(jnp.maximum(2.0 * _coefficient(path, t, Prediction.SCORE,
                                                   Prediction.VELOCITY, t_clip), 0.0))
