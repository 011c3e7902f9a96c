r"""Affine probability paths between a source (t = 0) and data (t = 1).

Every path here is

.. math::  x_t = \alpha(t)\, x_1 + \sigma(t)\, x_0 + \gamma(t)\, z,
           \qquad z \sim \mathcal N(0, I),\ t \in [0, 1],

with `x0` the source and `x1` the data, the convention of TorchCFM, Meta's
`flow_matching` and rectified flow. Its conditional velocity is the time
derivative

.. math::  u_t = \dot\alpha(t)\, x_1 + \dot\sigma(t)\, x_0 + \dot\gamma(t)\, z.

Diffusion papers (DDPM, score SDEs, SD3, MeanFlow) run time the other way;
the VP and VE paths below are written with `s = 1 - t` where that is so.

Derivatives are in closed form. Where one is singular at an end point
(VP's :math:`\dot\sigma` at t = 1, the bridge noise :math:`\dot\gamma` at
t = 0 and 1, :math:`t^n` with n < 1 at t = 0) it is evaluated at `t` clipped
to `[EDGE, 1 - EDGE]`, so it is finite everywhere; the clipping is exact
away from the ends.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import struct

from flowjax._checks import (broadcast_time, check_array, check_same_shape,
                             check_time)

#: Distance from the end points at which singular derivatives are evaluated.
EDGE = 1e-6


def _clip(t):
    return jnp.clip(t, EDGE, 1.0 - EDGE)


# --------------------------------------------------------------------------
# Extra noise gamma(t)
# --------------------------------------------------------------------------


@struct.dataclass
class ConstantNoise:
    r"""Constant extra noise :math:`\gamma(t) = \sigma`: TorchCFM's `sigma` (I-CFM, OT-CFM).

    Args:
      sigma: standard deviation of the Gaussian around the straight path.
    """

    sigma: float = 0.1

    def gamma(self, t):
        return jnp.full_like(t, self.sigma)

    def d_gamma(self, t):
        return jnp.zeros_like(t)


@struct.dataclass
class BridgeNoise:
    r"""Brownian-bridge noise :math:`\gamma(t) = \sigma \sqrt{t(1 - t)}`.

    The noise of Schrödinger-bridge CFM (Tong et al. 2023, "Improving and
    generalizing flow-based generative models with minibatch optimal
    transport", Eq. 18) and of stochastic interpolants (Albergo & Vanden-Eijnden).

    .. math:: \dot\gamma(t) = \sigma \frac{1 - 2t}{2\sqrt{t(1 - t)}}

    is singular at t = 0 and 1 and is evaluated at `t` clipped to
    `[EDGE, 1 - EDGE]`.
    """

    sigma: float = 1.0

    def gamma(self, t):
        return self.sigma * jnp.sqrt(jnp.clip(t * (1.0 - t), 0.0))

    def d_gamma(self, t):
        t = _clip(t)
        return self.sigma * (1.0 - 2.0 * t) / (2.0 * jnp.sqrt(t * (1.0 - t)))


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------


class AffinePath:
    """Base class: `alpha`, `sigma` and their derivatives, plus optional noise.

    Subclasses are immutable pytrees (`flax.struct.dataclass`) that define
    `alpha`, `sigma`, `d_alpha` and `d_sigma` for scalar or `[B]` times; all
    other methods are shared. `noise` is `None`, :class:`ConstantNoise` or
    :class:`BridgeNoise` (or anything with `gamma(t)` and `d_gamma(t)`).
    """

    noise: object = None

    # -- schedule --------------------------------------------------------
    def alpha(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def d_alpha(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def d_sigma(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def gamma(self, t):
        """Standard deviation of the extra noise, 0 when `noise` is None."""
        t = jnp.asarray(t)
        return jnp.zeros_like(t) if self.noise is None else self.noise.gamma(t)

    def d_gamma(self, t):
        t = jnp.asarray(t)
        return jnp.zeros_like(t) if self.noise is None else self.noise.d_gamma(t)

    def sigma_total(self, t):
        r"""Total noise level :math:`\bar\sigma = \sqrt{\sigma^2 + \gamma^2}`.

        For a Gaussian source independent of the data, :math:`\sigma x_0 + \gamma z`
        is :math:`\bar\sigma \varepsilon` with :math:`\varepsilon \sim \mathcal N(0, I)`,
        so the marginal path is the noise-free path with :math:`\sigma \to \bar\sigma`.
        """
        return jnp.sqrt(self.sigma(t) ** 2 + self.gamma(t) ** 2)

    def d_sigma_total(self, t):
        r""":math:`\dot{\bar\sigma} = (\sigma\dot\sigma + \gamma\dot\gamma)/\bar\sigma`.

        Without extra noise this is :math:`\dot\sigma`, also where :math:`\sigma = 0`.
        """
        if self.noise is None:
            return self.d_sigma(t)
        num = self.sigma(t) * self.d_sigma(t) + self.gamma(t) * self.d_gamma(t)
        return num / jnp.maximum(self.sigma_total(t), jnp.finfo(jnp.result_type(t)).tiny)

    # -- interpolant and conditional velocity ------------------------------
    def _prepare(self, x0, x1, t, z):
        check_array("x0", x0)
        check_array("x1", x1)
        check_same_shape("x0", x0, "x1", x1)
        t = check_time(t, x1.shape[0])
        if z is not None:
            check_same_shape("z", z, "x1", x1)
        elif self.noise is not None:
            raise ValueError("this path has extra noise: pass `z` (a standard normal like `x1`).")
        return broadcast_time(t, x1)

    def interpolate(self, x0, x1, t, z=None):
        r"""The point :math:`x_t = \alpha x_1 + \sigma x_0 + \gamma z`.

        Args:
          x0: source samples `[B, *dims]`.
          x1: data samples `[B, *dims]`.
          t: times, a scalar or `[B]`, in [0, 1].
          z: standard normal `[B, *dims]`; required iff the path has noise.

        Returns:
          `[B, *dims]`.
        """
        tb = self._prepare(x0, x1, t, z)
        x = self.alpha(tb) * x1 + self.sigma(tb) * x0
        return x if z is None else x + self.gamma(tb) * z

    def velocity(self, x0, x1, t, z=None):
        r"""The conditional velocity :math:`\dot\alpha x_1 + \dot\sigma x_0 + \dot\gamma z`.

        Same arguments and shape as :meth:`interpolate`; it is the time
        derivative of that function with `x0`, `x1`, `z` held fixed.
        """
        tb = self._prepare(x0, x1, t, z)
        v = self.d_alpha(tb) * x1 + self.d_sigma(tb) * x0
        return v if z is None else v + self.d_gamma(tb) * z

    def noise_target(self, x0, t, z=None):
        r"""The standardized total noise :math:`\varepsilon = (\sigma x_0 + \gamma z)/\bar\sigma`.

        This is what a noise-prediction model regresses; without extra noise it is `x0`.
        """
        if z is None:
            return x0
        tb = broadcast_time(check_time(t, x0.shape[0]), x0)
        safe = jnp.maximum(self.sigma_total(tb), jnp.finfo(x0.dtype).tiny)
        return (self.sigma(tb) * x0 + self.gamma(tb) * z) / safe


@struct.dataclass
class RectifiedFlow(AffinePath):
    r"""Rectified flow / CondOT / I-CFM: :math:`\alpha = t,\ \sigma = 1 - t`.

    Liu et al. 2022, "Flow straight and fast"; Lipman et al. 2023; Tong et al. 2023.
    With `noise=ConstantNoise(s)` it is TorchCFM's I-CFM/OT-CFM path with
    `sigma=s`; with `noise=BridgeNoise(s)` the SB-CFM path.
    """

    noise: object = None

    def alpha(self, t):
        return t

    def sigma(self, t):
        return 1.0 - t

    def d_alpha(self, t):
        return jnp.ones_like(t)

    def d_sigma(self, t):
        return -jnp.ones_like(t)


#: TorchCFM and Meta's flow_matching call the rectified-flow path CondOT.
CondOT = RectifiedFlow


@struct.dataclass
class LipmanPath(AffinePath):
    r"""Lipman et al. 2023's OT path: :math:`x_t = t x_1 + (1 - (1 - \sigma_{min}) t) x_0`.

    "Flow matching for generative modeling", Eq. 20–22: a Gaussian of width
    :math:`\sigma_{min}` around `x1` at t = 1.
    """

    sigma_min: float = 1e-4
    noise: object = None

    def alpha(self, t):
        return t

    def sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return jnp.ones_like(t)

    def d_sigma(self, t):
        return jnp.full_like(t, -(1.0 - self.sigma_min))


@struct.dataclass
class Cosine(AffinePath):
    r"""Cosine path: :math:`\alpha = \sin(\pi t/2),\ \sigma = \cos(\pi t/2)`.

    The variance-preserving trigonometric interpolant (Albergo &
    Vanden-Eijnden 2023; Nichol & Dhariwal 2021 up to the time reparametrisation).
    """

    noise: object = None

    def alpha(self, t):
        return jnp.sin(0.5 * math.pi * t)

    def sigma(self, t):
        return jnp.cos(0.5 * math.pi * t)

    def d_alpha(self, t):
        return 0.5 * math.pi * jnp.cos(0.5 * math.pi * t)

    def d_sigma(self, t):
        return -0.5 * math.pi * jnp.sin(0.5 * math.pi * t)


@struct.dataclass
class Polynomial(AffinePath):
    r"""Polynomial path :math:`\alpha = t^n,\ \sigma = 1 - t^n` (n > 0).

    Meta flow_matching's `PolynomialConvexScheduler`; n = 1 is rectified flow.
    """

    n: float = struct.field(pytree_node=False, default=2.0)
    noise: object = None

    def __post_init__(self):
        if not (isinstance(self.n, (int, float)) and self.n > 0):
            raise ValueError(f"`n` must be a positive number, got {self.n!r}.")

    def alpha(self, t):
        return t ** self.n

    def sigma(self, t):
        return 1.0 - t ** self.n

    def d_alpha(self, t):
        # For n < 1 the derivative is singular at t = 0.
        tc = jnp.maximum(t, EDGE) if self.n < 1 else t
        return self.n * tc ** (self.n - 1.0)

    def d_sigma(self, t):
        return -self.d_alpha(t)


@struct.dataclass
class VP(AffinePath):
    r"""Variance-preserving (DDPM / VP-SDE) path in flow time.

    With diffusion time :math:`s = 1 - t` and
    :math:`\beta(s) = \beta_{min} + s(\beta_{max} - \beta_{min})` (Song et al. 2021),
    :math:`B(s) = \int_0^s \beta = \beta_{min}s + \tfrac12(\beta_{max} - \beta_{min})s^2`,

    .. math:: \alpha(t) = e^{-B(1-t)/2},\quad \sigma(t) = \sqrt{1 - \alpha(t)^2},
              \quad \dot\alpha = \tfrac12\beta(1-t)\,\alpha,
              \quad \dot\sigma = -\alpha\dot\alpha/\sigma.

    This is the VP path of Lipman et al. 2023 (Eq. 19). :math:`\dot\sigma` is
    singular at t = 1 and evaluated at `t` clipped to `1 - EDGE`; at t = 0,
    :math:`\alpha(0) = e^{-5.025} \approx 0.0066` for the defaults, so the
    source is N(0, I) up to that much data.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    noise: object = None

    def _beta(self, s):
        return self.beta_min + s * (self.beta_max - self.beta_min)

    def _int_beta(self, s):
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s ** 2

    def alpha(self, t):
        return jnp.exp(-0.5 * self._int_beta(1.0 - t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self._int_beta(1.0 - t)))

    def d_alpha(self, t):
        return 0.5 * self._beta(1.0 - t) * self.alpha(t)

    def d_sigma(self, t):
        t = jnp.minimum(t, 1.0 - EDGE)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)


@struct.dataclass
class VE(AffinePath):
    r"""Variance-exploding (SMLD / VE-SDE) path in flow time.

    .. math:: \alpha = 1,\quad \sigma(t) = \sigma_{min}(\sigma_{max}/\sigma_{min})^{1-t},
              \quad \dot\sigma = -\log(\sigma_{max}/\sigma_{min})\,\sigma.

    Song et al. 2021 with diffusion time :math:`s = 1 - t`; Lipman et al. 2023,
    Eq. 17. The t = 0 marginal is the data plus :math:`\sigma_{max}` noise, so
    samplers start from :math:`\sigma_{max}\,\mathcal N(0, I)`.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    noise: object = None

    def alpha(self, t):
        return jnp.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (1.0 - t)

    def d_alpha(self, t):
        return jnp.zeros_like(t)

    def d_sigma(self, t):
        return -jnp.log(self.sigma_max / self.sigma_min) * self.sigma(t)
