r"""EDM's deterministic second-order sampler (Karras et al. 2022, Algorithm 1) for any affine path.

In EDM's variables :math:`x = x_t/\alpha` and :math:`\sigma = \bar\sigma/\alpha`
(:func:`flowjax.paths.noise_ratio`) the probability-flow ODE of every affine
Gaussian path is the same,

.. math:: \frac{dx}{d\sigma} = \frac{x - D(x; \sigma)}{\sigma},

with :math:`D` the data prediction (Karras et al. 2022, Eq. 4 with
:math:`s = 1`; it is flowjax's velocity ODE after the change of variables). It is
integrated with Heun's method over the noise levels of a time grid (EDM's
:math:`\rho`-grid from :func:`flowjax.time.edm_grid`) from :math:`\sigma_{max}`
down to :math:`\sigma_{min}`, and the last step, to :math:`\sigma_N = 0`, is an Euler
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

from flowjax._checks import check_number, check_output_shape, error_if
from flowjax.paths import AffinePath, Prediction, convert, noise_ratio
from flowjax.sample._solution import GridSolver, Solution, _check_solver_options, make_stats
from flowjax.time import time_of_noise_ratio


class EDMHeun(GridSolver):
    r"""EDM's Heun sampler (Karras et al. 2022, Algorithm 1), for :func:`flowjax.sample.solve_ode`.

    .. math:: d_i = \frac{x_i - D(x_i; \sigma_i)}{\sigma_i},\quad
              \tilde x = x_i + (\sigma_{i+1} - \sigma_i)d_i,\quad
              x_{i+1} = x_i + (\sigma_{i+1} - \sigma_i)\tfrac12\Big(d_i
              + \frac{\tilde x - D(\tilde x; \sigma_{i+1})}{\sigma_{i+1}}\Big),

    over the noise levels :math:`\sigma_i` = :func:`flowjax.paths.noise_ratio`
    of the grid times (`ts=flowjax.time.edm_grid(N, path)` gives EDM's
    :math:`\rho = 7` schedule), with the first level capped at `sigma_max`
    and the last step, to :math:`\sigma_N = 0`, Euler's: 2N - 1 evaluations.
    `x0` is standard-normal noise `[B, *dims]` (not scaled by :math:`\sigma_{max}`,
    also on a VE path); the sampler starts, as EDM does, at
    :math:`x_0 = \sigma_0 n`, the flow state :math:`\bar\sigma(t_0)\,n` at
    :math:`t_0 = \sigma^{-1}(\sigma_0)`. The solution's `ts` are the flow times
    of the levels (the last is 1) and its trajectory the flow states there.

    Attributes:
      path: the affine path the model takes its times from; its
        noise-to-signal ratio must reach `sigma_max` at the grid's first time.
      prediction: the kind of the field's output (for
        :func:`flowjax.paths.edm_precondition`, the data).
      sigma_max: EDM's largest noise level (80 in the paper).
    """

    path: AffinePath
    prediction: Prediction = eqx.field(default=Prediction.VELOCITY, static=True)
    sigma_max: float = eqx.field(default=80.0, static=True)

    def __check_init__(self):
        _check_solver_options(self.path, self.prediction)
        check_number("sigma_max", self.sigma_max, low=0.0, low_open=True)

    def solve(self, field, x0, ts, save_trajectory):
        ts, sig = _levels(self.path, ts, self.sigma_max, x0.dtype)
        samples, xs = _heun(field, self.path, self.prediction, x0, ts, sig, save_trajectory)
        n = ts.shape[0] - 1
        return Solution(samples, ts, xs, None, make_stats(2 * n - 1, n))


def _levels(path, ts, sigma_max, dtype):
    """`(ts, sigmas)`: the grid's noise levels, the first capped at `sigma_max` (and its time
    moved to where the path reaches it), the last 0."""
    raw = noise_ratio(path, ts[:-1]).astype(dtype)
    top = jnp.minimum(raw[0], sigma_max)
    ts = error_if(ts, top < sigma_max * (1 - 1e-6),
                  "`sigma_max` must not exceed the noise-to-signal ratio of the path at the "
                  "grid's first time (build `ts` with flowjax.time.edm_grid and the same "
                  "`sigma_max`).")
    sig = jnp.concatenate([top[None], raw[1:], jnp.zeros(1, dtype)])
    t_first = jnp.where(raw[0] > top, time_of_noise_ratio(path, top[None])[0].astype(dtype),
                        ts[0])
    return jnp.concatenate([t_first[None], ts[1:]]), sig


def _heun(field, path, prediction, x0, ts, sig, save_trajectory):
    """The sampler's loop over the levels `sig` at the flow times `ts`."""
    dtype, n = x0.dtype, sig.shape[0] - 1

    def denoise(x, i):
        t = jnp.full((x.shape[0],), ts[i], dtype)
        x_t = path.alpha(ts[i]) * x
        out = check_output_shape("field", field(x_t, t), x_t)
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
        return samples, None
    xs = jnp.concatenate([(sig[0] * x0)[None], states, samples[None]])
    return samples, path.alpha(ts).reshape((-1,) + (1,) * x0.ndim) * xs
