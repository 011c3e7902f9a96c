r"""EDM's preconditioning (Karras et al. 2022) as a wrapper around any model function.

Karras et al. 2022, "Elucidating the design space of diffusion-based
generative models" (EDM), Table 1 and Appendix B.6, train a denoiser

.. math:: D(x; \sigma) = c_{skip}(\sigma)\,x
          + c_{out}(\sigma)\,F\big(c_{in}(\sigma)\,x;\ c_{noise}(\sigma)\big),

.. math:: c_{skip} = \frac{\sigma_d^2}{\sigma^2 + \sigma_d^2},\quad
          c_{out} = \frac{\sigma\sigma_d}{\sqrt{\sigma^2 + \sigma_d^2}},\quad
          c_{in} = \frac{1}{\sqrt{\sigma^2 + \sigma_d^2}},\quad
          c_{noise} = \tfrac14\ln\sigma,

on :math:`x = x_1 + \sigma\varepsilon`, with the loss weight
:math:`\lambda(\sigma) = (\sigma^2 + \sigma_d^2)/(\sigma\sigma_d)^2`. These make the
network's input and its effective target :math:`(x_1 - c_{skip}x)/c_{out}` unit
variance when the data have standard deviation :math:`\sigma_d`, and
:math:`\lambda c_{out}^2 = 1`, so every noise level contributes equally.

In flowjax's time the state of an affine path is :math:`x_t = \alpha x_1 + \bar\sigma\varepsilon`
(data at t = 1), so EDM's variables are :math:`x = x_t/\alpha` and
:math:`\sigma = \bar\sigma/\alpha` (:func:`flowjax.paths.noise_ratio`); the wrapped
model is then a data predictor (`Prediction.DATA`) on any path. EDM's own
path is VE-like (:math:`\alpha = 1`, :math:`\bar\sigma = \sigma`); the training
distribution depends on the path only through :math:`\sigma`, so EDM's loss
is the same on every path (see :func:`flowjax.losses.edm_weighting` and
:class:`flowjax.time.EDMLogNormal`).
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx

import jax.numpy as jnp

from flowjax._checks import (as_real_array, broadcast_time, check_array,
                             check_number, check_output_shape, check_signature, check_time,
                             error_if)
from flowjax._types import Array, ArrayLike
from flowjax.paths._constants import T_CLIP
from flowjax.paths._conversions import _check_path_and_clip, _coeffs
from flowjax.paths._paths import AffinePath


def _check_sigma_data(sigma_data):
    check_number("sigma_data", sigma_data, low=0.0, low_open=True)


def _check_sigma(sigma, sigma_data):
    """`sigma` as a real array, positive and finite by a compiled check; `sigma_data` > 0."""
    _check_sigma_data(sigma_data)
    sigma = as_real_array("sigma", sigma)
    return error_if(sigma, ~jnp.all((sigma > 0) & jnp.isfinite(sigma)),
                    "`sigma` must be positive and finite (EDM's c_noise is ln(sigma) / 4).")


def _check_options(apply_fn, path, sigma_data, t_clip):
    _check_sigma_data(sigma_data)
    check_signature("apply_fn", apply_fn, 4)
    _check_path_and_clip(path, t_clip)


def _check_state(x, t):
    """The state `x [B, *dims]` and its checked times `t` as a `[B]` array of x's dtype."""
    check_array("x", x)
    t = check_time(t, x.shape[0])
    return x, jnp.broadcast_to(t, x.shape[:1]).astype(x.dtype)


def _scalings(sigma, sigma_data):
    total = sigma ** 2 + sigma_data ** 2
    return (sigma_data ** 2 / total, sigma * sigma_data / jnp.sqrt(total),
            1.0 / jnp.sqrt(total), 0.25 * jnp.log(sigma))


def edm_scalings(sigma: ArrayLike, sigma_data: float = 0.5
                 ) -> tuple[Array, Array, Array, Array]:
    r"""EDM's `(c_skip, c_out, c_in, c_noise)` at noise levels `sigma` (Karras et al., Table 1).

    Args:
      sigma: noise levels :math:`\sigma > 0`, any shape.
      sigma_data: the data's standard deviation :math:`\sigma_d` (0.5 for images in [-1, 1]).

    Returns:
      Four arrays shaped like `sigma` (formulas in :mod:`flowjax.paths._edm`).
    """
    return _scalings(_check_sigma(sigma, sigma_data), sigma_data)


def edm_precondition(apply_fn: Callable, path: AffinePath, *, sigma_data: float = 0.5,
                     t_clip: float = T_CLIP) -> Callable:
    r"""Wraps a raw network `F` into EDM's preconditioned denoiser, a data predictor in flow time.

    .. math:: \hat x_1(x_t, t) = c_{skip}(\sigma)\,\frac{x_t}{\alpha} + c_{out}(\sigma)\,
              F\Big(c_{in}(\sigma)\frac{x_t}{\alpha},\ c_{noise}(\sigma)\Big),
              \qquad \sigma = \bar\sigma(t)/\alpha(t),

    which is EDM's :math:`D(x_t/\alpha; \sigma)` (Karras et al. 2022, Eq. 7
    and Table 1). Train it with `prediction=Prediction.DATA`,
    :func:`flowjax.losses.edm_weighting` and :class:`flowjax.time.EDMLogNormal`;
    sample it with :class:`flowjax.sample.EDMHeun` or any flowjax sampler
    (through :func:`flowjax.paths.convert`).

    Args:
      apply_fn: the raw network, `apply_fn(params, x, c_noise, cond, **kwargs)`
        with `c_noise` `[B]` in the place of the time (any real number).
      path: the :class:`AffinePath` whose `t` the wrapped model takes.
      sigma_data: the data's standard deviation :math:`\sigma_d`.
      t_clip: floors of :math:`\alpha` and :math:`\bar\sigma` at the ends (as in
        :func:`flowjax.paths.convert`), so :math:`\sigma` is finite and positive.

    Returns:
      `model(params, x, t, cond=None, **kwargs) -> [B, *dims]`, a data
      prediction; extra keyword arguments (e.g. `key=` for dropout) reach `apply_fn`.
    """
    _check_options(apply_fn, path, sigma_data, t_clip)
    return EDMPreconditioned(apply_fn, path, float(sigma_data), float(t_clip))


class EDMPreconditioned(eqx.Module):
    """The denoiser of :func:`edm_precondition`: a model function that is a pytree.

    `apply_fn` and the options are static, the path's parameters are leaves,
    so two wrappers built from the same pieces compare equal and a sampler or
    train step compiled for one serves the other.
    """

    apply_fn: Callable = eqx.field(static=True)
    path: AffinePath
    sigma_data: float = eqx.field(static=True)
    t_clip: float = eqx.field(static=True)

    def __call__(self, params, x, t, cond=None, **kwargs):
        x, t = _check_state(x, t)
        c = _coeffs(self.path, t, self.t_clip)
        c_skip, c_out, c_in, c_noise = _scalings(c.s_div / c.a_div, self.sigma_data)
        x_edm = x / broadcast_time(c.a_div, x)
        out = self.apply_fn(params, broadcast_time(c_in, x) * x_edm, c_noise, cond, **kwargs)
        out = check_output_shape("apply_fn", out, x)
        return broadcast_time(c_skip, x) * x_edm + broadcast_time(c_out, x) * out
