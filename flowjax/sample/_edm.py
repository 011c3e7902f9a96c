r"""EDM's deterministic second-order sampler (Karras et al. 2022, Algorithm 1) for any affine path.

In EDM's variables :math:`x = x_t/\alpha` and :math:`\sigma = \bar\sigma/\alpha`
(:func:`flowjax.paths.noise_ratio`) the probability-flow ODE of every affine
Gaussian path is the same,

.. math:: \frac{dx}{d\sigma} = \frac{x - D(x; \sigma)}{\sigma},

with :math:`D` the data prediction (Karras et al. 2022, Eq. 4 with
:math:`s = 1`; it is flowjax's velocity ODE after the change of variables). It is
integrated with Heun's method over the :math:`\rho`-grid
(:func:`flowjax.time.edm_sigmas`) from :math:`\sigma_{max}` down to
:math:`\sigma_{min}`, and the last step, to :math:`\sigma_N = 0`, is an Euler
step (which returns :math:`D(x; \sigma_{N-1})`): 2N - 1 evaluations for N
steps. The model is called at the flow times
:math:`t_i = \sigma^{-1}(\sigma_i)` (:func:`flowjax.time.time_of_noise_ratio`)
on the flow state :math:`\alpha(t_i)x`, so any model of flowjax's convention
can be sampled (its prediction converted with :func:`flowjax.paths.convert`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from flowjax._checks import check_array, check_finite
from flowjax.paths import Prediction, convert
from flowjax.sample._ode import ODESolution
from flowjax.time import edm_sigmas, time_of_noise_ratio


def edm_heun(velocity_fn, x0, args=None, *, path, num_steps: int, sigma_min: float = 0.002,
             sigma_max: float = 80.0, rho: float = 7.0,
             prediction: Prediction = Prediction.VELOCITY,
             save_trajectory: bool = False) -> ODESolution:
    r"""EDM's Heun sampler (Karras et al. 2022, Algorithm 1) on the :math:`\rho = 7` grid.

    .. math:: d_i = \frac{x_i - D(x_i; \sigma_i)}{\sigma_i},\quad
              \tilde x = x_i + (\sigma_{i+1} - \sigma_i)d_i,\quad
              x_{i+1} = x_i + (\sigma_{i+1} - \sigma_i)\tfrac12\Big(d_i
              + \frac{\tilde x - D(\tilde x; \sigma_{i+1})}{\sigma_{i+1}}\Big),

    with the last step (to :math:`\sigma_N = 0`) Euler's. It starts at
    :math:`x_0 = \sigma_{max}\,n`, :math:`n \sim \mathcal N(0, I)`, as EDM does:
    the flow state :math:`\bar\sigma(t_0)\,n` at :math:`t_0 = \sigma^{-1}(\sigma_{max})`.

    Args:
      velocity_fn: the model, `velocity_fn(x, t [B], args)`, predicting what
        `prediction` says (for :func:`flowjax.paths.edm_precondition`, the data).
      x0: standard-normal noise `[B, *dims]` (not scaled by :math:`\sigma_{max}`,
        also on a VE path).
      args: a pytree passed to `velocity_fn`.
      path: the affine path the model takes its times from; its noise-to-signal
        ratio must cover :math:`[\sigma_{min}, \sigma_{max}]`.
      num_steps: N, the number of steps (2N - 1 evaluations).
      sigma_min, sigma_max, rho: the grid (the paper's defaults).
      prediction: the kind of the model's output.
      save_trajectory: also return the flow states at the grid times.

    Returns:
      An :class:`ODESolution`: the samples (the data, :math:`\sigma = 0`), `nfe`
      = 2N - 1, and with `save_trajectory` the times `[N + 1]` (the last is 1)
      and the flow states `[N + 1, B, *dims]`.
    """
    check_array("x0", x0)
    check_finite("x0", x0)
    if not isinstance(prediction, Prediction):
        raise TypeError(f"`prediction` must be a flowjax.paths.Prediction, got {prediction!r}.")
    sigmas = edm_sigmas(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    ends = np.asarray([0.0, 1.0])
    with np.errstate(divide="ignore"):  # the ratio is infinite at t = 0 where alpha(0) = 0
        top, bottom = np.asarray(path.sigma_total(ends)) / np.asarray(path.alpha(ends))
    if sigma_max > top * (1 + 1e-6) or sigma_min < bottom * (1 - 1e-6):
        raise ValueError(f"the path's noise-to-signal ratio spans [{bottom:.4g}, {top:.4g}]; "
                         f"`sigma_min` and `sigma_max` ({sigma_min}, {sigma_max}) must lie in it.")
    samples, ts, xs = _heun(velocity_fn, path, prediction, x0, args,
                            jnp.asarray(sigmas, x0.dtype), save_trajectory)
    nfe = 2 * int(num_steps) - 1
    return ODESolution(samples, nfe, ts if save_trajectory else None, xs, {})


@eqx.filter_jit
def _heun(velocity_fn, path, prediction, x0, args, sig, save_trajectory):
    """The sampler's loop, compiled once per (velocity_fn, path, shapes); `velocity_fn` static."""
    dtype, n = x0.dtype, sig.shape[0] - 1
    ts = jnp.concatenate([time_of_noise_ratio(path, sig[:-1]).astype(dtype), jnp.ones(1, dtype)])

    def denoise(x, i):
        t = jnp.full((x.shape[0],), ts[i], dtype)
        x_t = path.alpha(ts[i]) * x
        out = velocity_fn(x_t, t, args)
        return convert(path, x_t, t, out, given=prediction, to=Prediction.DATA)

    def heun(x, i):
        h = sig[i + 1] - sig[i]
        d = (x - denoise(x, i)) / sig[i]
        x_euler = x + h * d
        d_next = (x_euler - denoise(x_euler, i + 1)) / sig[i + 1]
        x = x + h * 0.5 * (d + d_next)
        return x, x if save_trajectory else None

    x, states = jax.lax.scan(heun, sig[0] * x0, jnp.arange(n - 1))
    samples = denoise(x, n - 1)  # Euler to sigma = 0: x + (0 - s)(x - D)/s = D
    if not save_trajectory:
        return samples, ts, None
    xs = jnp.concatenate([(sig[0] * x0)[None], states, samples[None]])
    return samples, ts, path.alpha(ts).reshape((-1,) + (1,) * x0.ndim) * xs
