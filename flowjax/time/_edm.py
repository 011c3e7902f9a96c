r"""EDM's log-normal training noise, as a time sampler in flow time."""

from __future__ import annotations

import math

import jax

from flowjax.time._grids import time_of_noise_ratio


def edm_lognormal(path, p_mean: float = -1.2, p_std: float = 1.2):
    r"""EDM's training noise, :math:`\ln\sigma \sim \mathcal N(P_{mean}, P_{std}^2)`, in flow time.

    Karras et al. 2022 (Table 1, "Training"; :math:`P_{mean} = -1.2`,
    :math:`P_{std} = 1.2`) draw EDM's noise level :math:`\sigma`; here each
    draw becomes the time t at which the path's noise-to-signal ratio
    :math:`\bar\sigma(t)/\alpha(t)` equals it (:func:`time_of_noise_ratio`,
    60 bisection steps; rectified flow's closed form is
    :math:`t = 1/(1 + \sigma)`). The density of t is then
    :math:`\pi(t) = \mathcal N(\ln\sigma(t); P_{mean}, P_{std}^2)\,|d\ln\sigma/dt|`,
    and :math:`x_t/\alpha = x_1 + \sigma\varepsilon` is distributed exactly as
    EDM's training input. Levels outside the path's range (a VE path's
    :math:`[\sigma_{min}, \sigma_{max}]`) land at t = 1 or t = 0.

    Args:
      path: the affine path that gives the time mapping.
      p_mean, p_std: mean and standard deviation of :math:`\ln\sigma`.

    Returns:
      `sample(key, shape) -> t` in [0, 1].
    """
    if not (isinstance(p_mean, (int, float)) and math.isfinite(p_mean)):
        raise ValueError(f"`p_mean` must be a finite number, got {p_mean!r}.")
    if not (isinstance(p_std, (int, float)) and p_std > 0 and math.isfinite(p_std)):
        raise ValueError(f"`p_std` must be a positive finite number, got {p_std!r}.")

    def sample(key, shape):
        sigma = jax.numpy.exp(p_mean + p_std * jax.random.normal(key, shape))
        return time_of_noise_ratio(path, sigma)

    return sample
