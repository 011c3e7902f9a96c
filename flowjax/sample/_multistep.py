r"""DPM-Solver++(2M): an exponential-integrator multistep ODE solver in flow time.

Derivation (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling of
diffusion probabilistic models", Sec. 4; written here for flowjax's time, in
which data sits at t = 1). On an affine path the marginal point and velocity
are :math:`x = \alpha\hat x_1 + \bar\sigma\hat\varepsilon` and
:math:`v = \dot\alpha\hat x_1 + \dot{\bar\sigma}\hat\varepsilon`, with
:math:`\hat x_1(x, t)` the data prediction. Eliminating
:math:`\hat\varepsilon` and writing :math:`\lambda = \log(\alpha/\bar\sigma)`
(half the log-SNR, increasing in t):

.. math:: \frac{dx}{dt} = \frac{\dot{\bar\sigma}}{\bar\sigma}x + \alpha\dot\lambda\,\hat x_1
          \quad\Longleftrightarrow\quad
          \frac{d}{dt}\frac{x}{\bar\sigma} = e^{\lambda}\dot\lambda\,\hat x_1,

so the linear part is integrated exactly:

.. math:: x_{t} = \frac{\bar\sigma_t}{\bar\sigma_s}x_s
          + \bar\sigma_t\int_{\lambda_s}^{\lambda_t} e^{\lambda}\hat x_1\,d\lambda.

Holding :math:`\hat x_1` constant gives the first-order step (DDIM)

.. math:: x_{i+1} = \frac{\bar\sigma_{i+1}}{\bar\sigma_i}x_i + \alpha_{i+1}(1 - e^{-h_i})D_i,
          \quad h_i = \lambda_{i+1} - \lambda_i,

and extrapolating it linearly in :math:`\lambda` from the previous step's
prediction gives the second-order multistep update with
:math:`D_i = (1 + \tfrac{1}{2r_i})\hat x_1^{(i)} - \tfrac{1}{2r_i}\hat x_1^{(i-1)}`,
:math:`r_i = h_{i-1}/h_i`. One model evaluation per step.

Corrector (Zhao et al. 2023, "UniPC", the UniC step for order 2): the
model is evaluated at the predicted point anyway, for the next step; with
that value :math:`\hat x_1^{(i+1)}` the step is redone with :math:`\hat x_1`
linear in :math:`\lambda` between the two ends, whose exact weight is

.. math:: x_{i+1} = \frac{\bar\sigma_{i+1}}{\bar\sigma_i}x_i + \alpha_{i+1}\Big[(1 - e^{-h})\hat x_1^{(i)}
          + \Big(1 - \frac{1 - e^{-h}}{h}\Big)(\hat x_1^{(i+1)} - \hat x_1^{(i)})\Big],

at no extra evaluation. On the first step from :math:`\alpha = 0` (where
:math:`\lambda = -\infty` and :math:`\hat x_1` is close to linear in
:math:`\rho = e^\lambda = \alpha/\bar\sigma`) the corrector is the trapezoid
rule in :math:`\rho`: :math:`x_1 = \frac{\bar\sigma_1}{\bar\sigma_0}x_0 + \alpha_1(\hat x_1^{(0)} + \hat x_1^{(1)})/2`.
The last step has nothing to correct with (the model is not evaluated at
the end point), so NFE = N for N steps.

Ends: :math:`e^{-h_i} = \alpha_i\bar\sigma_{i+1}/(\bar\sigma_i\alpha_{i+1})` is
computed without logarithms, so a first step from :math:`\alpha = 0` (t = 0)
and a last step to :math:`\bar\sigma = 0` (t = 1) are exact limits
(values below 10 machine epsilons count as 0). The first
step, the step after an infinite :math:`h` and a last step to
:math:`\bar\sigma = 0` are first order (as in k-diffusion's `sample_dpmpp_2m`);
the others are second order.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from flowjax._checks import check_output_shape
from flowjax.paths import AffinePath, Prediction, convert
from flowjax.sample._solution import GridSolver, Solution, _check_solver_options, make_stats


class DPMSolver2M(GridSolver):
    """DPM-Solver++(2M) with the UniC corrector, for :func:`flowjax.sample.solve_ode`.

    Use with a fixed increasing grid (`num_steps=` or `ts=`, e.g.
    :func:`flowjax.time.edm_grid`); one field evaluation per step (NFE = N).

    Attributes:
      path: the affine path the model was trained on.
      prediction: the kind of the field's output (a velocity by default; it is
        converted to a data prediction with :func:`flowjax.paths.convert`).
      corrector: apply the UniC corrector (no extra evaluations).
    """

    path: AffinePath
    prediction: Prediction = eqx.field(default=Prediction.VELOCITY, static=True)
    corrector: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_solver_options(self.path, self.prediction)

    def solve(self, field, x0, ts, save_trajectory):
        samples, states = _dpm_solver_2m(field, x0, ts, self.path, self.prediction,
                                         self.corrector, save_trajectory)
        n = ts.shape[0] - 1
        return Solution(samples, ts, states, None, make_stats(n, n))


def _dpm_solver_2m(field, x0, ts, path, prediction, corrector, save_trajectory):
    """`(samples, trajectory or None)` of DPM-Solver++(2M) on the grid `ts`."""
    n = ts.shape[0] - 1

    def data_prediction(x, t):
        tb = jnp.full((x.shape[0],), t, x.dtype)
        out = check_output_shape("field", field(x, tb), x)
        return convert(path, x, tb, out, given=prediction, to=Prediction.DATA)

    a, s = path.alpha(ts), path.sigma_total(ts)
    tiny = jnp.finfo(x0.dtype).tiny
    # exp(-h_i) = a_i s_{i+1} / (s_i a_{i+1}); h_i is infinite where a_i = 0 or s_{i+1} = 0.
    decay = a[:-1] * s[1:] / jnp.maximum(s[:-1] * a[1:], tiny)
    # cos(pi/2) is 6e-17 in float64 (and -4e-8 in float32), not 0: treat values below
    # 10 machine epsilons as zero, or the 2M extrapolation coefficient explodes at the end.
    zero = 10.0 * jnp.finfo(x0.dtype).eps
    finite = (a[:-1] > zero) & (s[1:] > zero)
    lam = jnp.log(jnp.maximum(a, tiny)) - jnp.log(jnp.maximum(s, tiny))
    h = jnp.where(finite, lam[1:] - lam[:-1], 1.0)
    scale = s[1:] / jnp.maximum(s[:-1], tiny)

    def predict(i, x, d, d_prev):
        """The 2M step; first order where this or the previous h is infinite."""
        second = (i > 0) & finite[i] & finite[jnp.maximum(i - 1, 0)]
        c = 0.5 / jnp.where(second, h[jnp.maximum(i - 1, 0)] / h[i], 1.0)
        d_used = jnp.where(second, (1.0 + c) * d - c * d_prev, d)  # c = 1/(2r)
        return scale[i] * x + a[i + 1] * (1.0 - decay[i]) * d_used

    def correct(i, x, d, d_next):
        phi = 1.0 - (1.0 - decay[i]) / h[i]
        lam_linear = (1.0 - decay[i]) * d + phi * (d_next - d)
        rho_trapezoid = 0.5 * (d + d_next)  # first step from alpha = 0
        return scale[i] * x + a[i + 1] * jnp.where(finite[i], lam_linear, rho_trapezoid)

    def step(carry, i):
        x, d, d_prev = carry
        x_pred = predict(i, x, d, d_prev)
        d_next = data_prediction(x_pred, ts[i + 1])
        x_next = correct(i, x, d, d_next) if corrector else x_pred
        return (x_next, d_next, d), x_next if save_trajectory else None

    d0 = data_prediction(x0, ts[0])
    (x, d, d_prev), states = jax.lax.scan(step, (x0, d0, jnp.zeros_like(x0)),
                                          jnp.arange(n - 1))
    samples = predict(n - 1, x, d, d_prev)
    if not save_trajectory:
        return samples, None
    return samples, jnp.concatenate([x0[None], states, samples[None]])
