r"""Time grids `[N + 1]` from t = 0 to t = 1 for fixed-step solvers.

Pass any of them, or your own monotone grid, as `ts=` to
:func:`flowjax.sample.solve_ode` (any solver, :class:`flowjax.sample.DPMSolver2M` included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flowjax._checks import as_real_array, check_number, check_path, error_if
from flowjax._types import Array, ArrayLike, Float, Scalar, TimeGrid
from flowjax.time._samplers import shift_time


def _check_steps(num_steps):
    check_number("num_steps", num_steps, low=1, integer=True)


def uniform_grid(num_steps: int) -> TimeGrid:
    """`num_steps + 1` equally spaced times from 0 to 1.

    Examples:
      >>> from flowjax.time import uniform_grid
      >>> uniform_grid(4)
      Array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
    """
    _check_steps(num_steps)
    return jnp.linspace(0.0, 1.0, num_steps + 1)


def shifted_grid(num_steps: int, shift: Scalar) -> TimeGrid:
    """The uniform grid warped by SD3's shift (:func:`flowjax.time.shift_time`);
    `shift > 1` puts more steps near the noise (t = 0)."""
    return shift_time(uniform_grid(num_steps), shift)


def time_of_noise_ratio(path, ratio: ArrayLike, *,
                        iterations: int = 60) -> Float[Array, "..."]:
    r"""The flow time t at which the path's noise-to-signal ratio :math:`\bar\sigma(t)/\alpha(t)` is `ratio`.

    That ratio is EDM's :math:`\sigma` (Karras et al. 2022 write every
    diffusion as :math:`x = x_1 + \sigma\varepsilon` up to scaling); it
    decreases from :math:`\infty` (or a large value) at t = 0 to 0 (or
    :math:`\sigma_{min}`) at t = 1 on every path here, so bisection finds t
    to float precision. Rectified flow has the closed form t = 1/(1 + ratio).

    Args:
      path: an affine path.
      ratio: noise-to-signal ratios >= 0 (`inf` gives t = 0), any shape.
      iterations: bisection steps (60 reach float64 precision).
    """
    check_path("path", path)
    ratio = as_real_array("ratio", ratio).astype(jnp.result_type(float))
    ratio = error_if(ratio, ~jnp.all(ratio >= 0), "`ratio` must be >= 0 (not NaN).")
    check_number("iterations", iterations, low=1, integer=True)

    def noise_ratio(t):
        return path.sigma_total(t) / jnp.maximum(path.alpha(t), jnp.finfo(t.dtype).tiny)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = noise_ratio(mid) > ratio  # still too noisy: the answer is later
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, body,
                               (jnp.zeros_like(ratio), jnp.ones_like(ratio)))
    return 0.5 * (lo + hi)


def _check_levels(sigma_min, sigma_max, rho):
    check_number("sigma_min", sigma_min, low=0.0, low_open=True)
    check_number("sigma_max", sigma_max, low=0.0, low_open=True)
    check_number("rho", rho, low=0.0, low_open=True)
    if all(isinstance(v, (int, float)) for v in (sigma_min, sigma_max)) \
            and not sigma_min < sigma_max:
        raise ValueError(f"`sigma_min` and `sigma_max` must satisfy 0 < sigma_min < sigma_max, "
                         f"got {sigma_min}, {sigma_max}.")


def edm_sigmas(num_steps: int, *, sigma_min: Scalar = 0.002, sigma_max: Scalar = 80.0,
               rho: Scalar = 7.0) -> Float[Array, " N1"]:
    r"""EDM's noise levels :math:`\sigma_0 > \dots > \sigma_N = 0` (Karras et al. 2022, Eq. 5).

    .. math:: \sigma_i = \big(\sigma_{max}^{1/\rho} + \tfrac{i}{N-1}
              (\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho})\big)^\rho,\quad i < N,
              \qquad \sigma_N = 0:

    equally spaced in :math:`\sigma^{1/\rho}`, dense at low noise for
    :math:`\rho > 1` (the paper's :math:`\rho = 7`, :math:`\sigma_{min} = 0.002`,
    :math:`\sigma_{max} = 80`). With one step the grid is :math:`[\sigma_{max}, 0]`.

    Args:
      num_steps: N, the number of steps (N + 1 levels).
      sigma_min: the smallest nonzero noise level (EDM: 0.002).
      sigma_max: the largest noise level (EDM: 80).
      rho: the schedule's exponent (EDM: 7).

    Returns:
      `[N + 1]`, decreasing, ending at 0.
    """
    _check_steps(num_steps)
    _check_levels(sigma_min, sigma_max, rho)
    if num_steps == 1:
        return jnp.array([sigma_max, 0.0])
    i = jnp.arange(num_steps) / (num_steps - 1)
    # (1 - i) a + i b, not a + i (b - a): exact at both ends, so the last level is sigma_min
    # even when a = sigma_max^(1/rho) dwarfs b (rho < 1 in float32: 6400 + (4e-6 - 6400) = 0).
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = ((1.0 - i) * hi + i * lo) ** rho
    return jnp.concatenate([sig, jnp.zeros(1, sig.dtype)])


def edm_grid(num_steps: int, path, *, sigma_min: Scalar = 0.002, sigma_max: Scalar = 80.0,
             rho: Scalar = 7.0) -> TimeGrid:
    r"""EDM's :math:`\rho`-schedule (:func:`edm_sigmas`) mapped to flow time.

    Each :math:`\sigma_i`, i < N, is mapped to the t where the path's
    noise-to-signal ratio equals it (:func:`time_of_noise_ratio`); the first point is then
    moved to t = 0 (a source sample is the state at :math:`\sigma = \infty`,
    and :math:`\sigma_{max} = 80` is t = 0.012 on rectified flow) and t = 1
    is appended (:math:`\sigma_N = 0`). Steps are dense near the data.
    (:class:`flowjax.sample.EDMHeun` caps the first level at :math:`\sigma_{max}`, as EDM does.)

    Args:
      num_steps: N, the number of steps (N + 1 times).
      path: the affine path that gives the time mapping.
      sigma_min: the smallest nonzero noise level, as for :func:`edm_sigmas`.
      sigma_max: the largest noise level.
      rho: the schedule's exponent (defaults from the paper).
    """
    _check_steps(num_steps)
    check_path("path", path)
    sig = edm_sigmas(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    if num_steps == 1:
        return jnp.array([0.0, 1.0])
    ts = time_of_noise_ratio(path, sig[:-1])
    return jnp.concatenate([jnp.zeros(1, ts.dtype), ts[1:], jnp.ones(1, ts.dtype)])
