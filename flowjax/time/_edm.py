r"""EDM's log-normal training noise, as a time sampler in flow time."""

from __future__ import annotations

from typing import Any

import jax

from flowjax._checks import check_number, check_path
from flowjax._types import Scalar
from flowjax.time._base import AbstractTimeSampler
from flowjax.time._grids import time_of_noise_ratio


class EDMLogNormal(AbstractTimeSampler):
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
      p_mean: mean of :math:`\ln\sigma`.
      p_std: standard deviation of :math:`\ln\sigma`, > 0.
    """

    path: Any
    p_mean: Scalar = -1.2
    p_std: Scalar = 1.2

    def __check_init__(self):
        check_path("path", self.path)
        check_number("p_mean", self.p_mean)
        check_number("p_std", self.p_std, low=0.0, low_open=True)

    def _draw(self, key, shape):
        sigma = jax.numpy.exp(self.p_mean + self.p_std * jax.random.normal(key, shape))
        return time_of_noise_ratio(self.path, sigma)
