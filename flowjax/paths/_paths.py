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
t = 0 and 1, :math:`t^n` with n < 1 at t = 0, :math:`\dot{\bar\sigma}` wherever
:math:`\bar\sigma = 0`) it is evaluated at `t` clipped to `[EDGE, 1 - EDGE]`,
so it is finite everywhere; the clipping is exact away from the ends.

What happens at the ends, t = 0 and t = 1 exactly:

- values are exact: :math:`\alpha(0) = 0` and :math:`\sigma(1) = 0` where the
  formula says so (the cosine path is written with :math:`\sin(\pi(1 - t)/2)`
  so that float32 gives 0, not -4e-8, at t = 1);
- autodiff is finite: where a schedule has a square-root or fractional-power
  singularity (VP's :math:`\sigma` at t = 1, the bridge :math:`\gamma` at t = 0
  and 1, :math:`t^n` with n < 1 at t = 0, :math:`\bar\sigma = \sqrt{\sigma^2 +
  \gamma^2}` where it vanishes) its true slope is infinite; there the square
  root is differentiated as if its argument were at least `EDGE**2`, and
  :math:`t^n` with the clipped `d_alpha`, so `jax.grad`/`jax.jvp` of anything
  built on the schedules is finite at t = 0 and 1. Elsewhere (in float32:
  everywhere but those points) derivatives are the exact ones, and they
  stay exact in the parameters (`beta_min`, `sigma`, ...);
- the data arrays (`x0`, `x1`, `z`) are checked for type, rank and shape, not
  for finiteness: a NaN propagates, so a training step on a bad batch is
  skipped by :func:`flowjax.train.make_train_step`'s non-finite guard instead
  of stopping the program (the losses run these methods on every step);
- every method checks its `t`: a real number or array (a TypeError otherwise)
  whose values lie in [0, 1], a check compiled into the program
  (:func:`flowjax.set_value_checks`), so a schedule call on device arrays
  makes no copy to the host. Methods called by another method, or by a
  function that has checked its `t` (:func:`flowjax.paths.convert`), skip the
  check.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flowjax import _pytree as struct

from flowjax._checks import (as_real_array, broadcast_time, check_array, check_instance,
                             check_number, check_same_shape, check_time,
                             check_unit_interval)
from flowjax._types import Array, Batch, Times

#: Distance from the end points at which singular derivatives are evaluated.
EDGE = 1e-6


def _clip(t):
    return jnp.clip(t, EDGE, 1.0 - EDGE)


@jax.custom_jvp
def _sqrt(u):
    """`sqrt(max(u, 0))` whose slope is finite at u = 0 (see :func:`_sqrt_jvp`)."""
    return jnp.sqrt(jnp.maximum(u, 0.0))


@_sqrt.defjvp
def _sqrt_jvp(primals, tangents):
    # The slope 1 / (2 sqrt(u)) is infinite at u = 0; it is taken at u = EDGE^2
    # below that, so derivatives through a vanishing square root are finite. In
    # float32 this changes the derivative only where u = 0 exactly.
    (u,), (du,) = primals, tangents
    return _sqrt(u), du / (2.0 * jnp.sqrt(jnp.maximum(u, EDGE ** 2)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _power(t, n):
    """`t ** n` for t >= 0 and 0 < n < 1, whose slope at t = 0 is the clipped `d_alpha`."""
    return jnp.maximum(t, 0.0) ** n


@_power.defjvp
def _power_jvp(n, primals, tangents):
    (t,), (dt,) = primals, tangents
    return _power(t, n), n * jnp.maximum(t, EDGE) ** (n - 1.0) * dt


_TRUSTED = threading.local()


@contextlib.contextmanager
def checked_times():
    """Within it, schedule methods take their `t` as already checked (a real array in [0, 1]).

    Entered by each schedule method around its own body and by the functions
    that check `t` once at their boundary, so one call checks its time once.
    Trace-time Python state, per thread.
    """
    depth = getattr(_TRUSTED, "depth", 0)
    _TRUSTED.depth = depth + 1
    try:
        yield
    finally:
        _TRUSTED.depth = depth


def _checked_t(method):
    """Checks `t` of a schedule method (a real number or array in [0, 1], any shape), once."""

    @functools.wraps(method)
    def wrapper(self, t):
        if getattr(_TRUSTED, "depth", 0):
            return method(self, t)
        t = check_unit_interval("t", as_real_array("t", t))
        with checked_times():
            return method(self, t)

    wrapper.checks_t = True
    return wrapper


def _trusts_t(method):
    """For methods that check their `t` themselves: the schedules they call skip the check."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with checked_times():
            return method(*args, **kwargs)

    return wrapper


def _param(name, value, **bounds):
    """Checks a constructor parameter given as a Python number (or as a string, list, ...).

    Arrays and tracers pass unchecked, and so do `None`, booleans and other
    objects: JAX and equinox rebuild these pytrees with such placeholders as
    leaves (gradients, `vmap` axis specs, `eqx.partition`).
    """
    if isinstance(value, (str, bytes, list, tuple, dict, complex)):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    if isinstance(value, (int, float, np.integer, np.floating)) \
            and not isinstance(value, (bool, np.bool_)):
        check_number(name, value, **bounds)


def _check_noise(noise):
    if noise is None or isinstance(noise, (bool, np.bool_)):
        return
    if isinstance(noise, type) or not (callable(getattr(noise, "gamma", None))
                                       and callable(getattr(noise, "d_gamma", None))):
        check_instance("noise", noise, (), "None, ConstantNoise(...), BridgeNoise(...) or an "
                       "object with `gamma(t)` and `d_gamma(t)`")


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

    def __post_init__(self):
        _param("sigma", self.sigma, low=0.0)

    @_checked_t
    def gamma(self, t: Times) -> Array:
        return jnp.full_like(t, self.sigma)

    @_checked_t
    def d_gamma(self, t: Times) -> Array:
        return jnp.zeros_like(t)


@struct.dataclass
class BridgeNoise:
    r"""Brownian-bridge noise :math:`\gamma(t) = \sigma \sqrt{t(1 - t)}`.

    The noise of Schrödinger-bridge CFM (Tong et al. 2023, "Improving and
    generalizing flow-based generative models with minibatch optimal
    transport", Eq. 18) and of stochastic interpolants (Albergo & Vanden-Eijnden).

    .. math:: \dot\gamma(t) = \sigma \frac{1 - 2t}{2\sqrt{t(1 - t)}}

    is singular at t = 0 and 1 and is evaluated at `t` clipped to
    `[EDGE, 1 - EDGE]`; autodiff of :math:`\gamma` is finite there too (see the
    module docstring).
    """

    sigma: float = 1.0

    def __post_init__(self):
        _param("sigma", self.sigma, low=0.0)

    @_checked_t
    def gamma(self, t: Times) -> Array:
        return self.sigma * _sqrt(t * (1.0 - t))

    @_checked_t
    def d_gamma(self, t: Times) -> Array:
        t = _clip(t)
        return self.sigma * (1.0 - 2.0 * t) / (2.0 * jnp.sqrt(t * (1.0 - t)))


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------


class AffinePath:
    """Base class: `alpha`, `sigma` and their derivatives, plus optional noise.

    Subclasses are immutable pytrees (`flowjax._pytree.dataclass`) that define
    `alpha`, `sigma`, `d_alpha` and `d_sigma` for scalar or `[B]` times; all
    other methods are shared. `noise` is `None`, :class:`ConstantNoise` or
    :class:`BridgeNoise` (or anything with `gamma(t)` and `d_gamma(t)`).
    """

    noise: object = None

    def __init_subclass__(cls, **kwargs):
        # Every schedule a subclass defines checks its `t` like the methods below.
        super().__init_subclass__(**kwargs)
        for name in ("alpha", "sigma", "d_alpha", "d_sigma"):
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "checks_t", False):
                setattr(cls, name, _checked_t(method))

    def __post_init__(self):
        _check_noise(self.noise)

    # -- schedule --------------------------------------------------------
    def alpha(self, t: Times) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t: Times) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def d_alpha(self, t: Times) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def d_sigma(self, t: Times) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    @_checked_t
    def gamma(self, t: Times) -> Array:
        """Standard deviation of the extra noise, 0 when `noise` is None."""
        return jnp.zeros_like(t) if self.noise is None else self.noise.gamma(t)

    @_checked_t
    def d_gamma(self, t: Times) -> Array:
        return jnp.zeros_like(t) if self.noise is None else self.noise.d_gamma(t)

    @_checked_t
    def sigma_total(self, t: Times) -> Array:
        r"""Total noise level :math:`\bar\sigma = \sqrt{\sigma^2 + \gamma^2}`.

        For a Gaussian source independent of the data, :math:`\sigma x_0 + \gamma z`
        is :math:`\bar\sigma \varepsilon` with :math:`\varepsilon \sim \mathcal N(0, I)`,
        so the marginal path is the noise-free path with :math:`\sigma \to \bar\sigma`.
        Without extra noise it is :math:`\sigma` itself. Where it vanishes (t = 1
        with bridge noise) its autodiff derivative is finite (module docstring).
        """
        if self.noise is None:
            return self.sigma(t)
        return _sqrt(self.sigma(t) ** 2 + self.gamma(t) ** 2)

    @_checked_t
    def d_sigma_total(self, t: Times) -> Array:
        r""":math:`\dot{\bar\sigma} = (\sigma\dot\sigma + \gamma\dot\gamma)/\bar\sigma`.

        Without extra noise this is :math:`\dot\sigma`, also where :math:`\sigma = 0`.
        With extra noise it is evaluated at `t` clipped to `[EDGE, 1 - EDGE]`:
        at the ends its pieces are singular (:math:`\dot\gamma` of the bridge,
        VP's :math:`\dot\sigma`) or it is 0/0 (t = 1 with bridge noise), and the
        clipped value is the limit up to O(EDGE) where that is finite (VP with
        constant noise at t = 1: :math:`-\alpha\dot\alpha/\bar\sigma`, not the 0
        that :math:`\sigma(1)\dot\sigma(1)` would give) and the large slope of the
        last instants where it is not (bridge noise at t = 1, not 0), so
        conversions at t = 1 still read the data off the velocity
        (:func:`flowjax.paths.convert`).
        """
        if self.noise is None:
            return self.d_sigma(t)
        t = _clip(t)
        sigma, gamma = self.sigma(t), self.gamma(t)
        num = sigma * self.d_sigma(t) + gamma * self.d_gamma(t)
        den = jnp.sqrt(jnp.maximum(sigma ** 2 + gamma ** 2, jnp.finfo(jnp.result_type(t)).tiny))
        return num / den

    # -- interpolant and conditional velocity ------------------------------
    def _prepare(self, x0, x1, t, z):
        """Checked `(x0, x1, t, z)`, `t` broadcast against `x1`."""
        check_array("x0", x0)
        check_array("x1", x1)
        check_same_shape("x0", x0, "x1", x1)
        t = check_time(t, x1.shape[0])
        return x0, x1, broadcast_time(t, x1), self._check_z(z, x1)

    def _prepare_noise(self, x0, t, z):
        """`noise_target`'s checked `(x0, t, z)`, `t` broadcast against `x0`."""
        check_array("x0", x0)
        tb = broadcast_time(check_time(t, x0.shape[0]), x0)
        return x0, tb, self._check_z(z, x0, "x0")

    def _check_z(self, z, like, like_name="x1"):
        """`z` checked against `like` (same shape), or None where the path has no noise."""
        if z is None and self.noise is not None:
            raise ValueError("this path has extra noise: pass `z` (a standard normal like "
                             f"`{like_name}`).")
        if z is None:
            return z
        check_array("z", z)
        check_same_shape("z", z, like_name, like)
        return z

    @_trusts_t
    def interpolate(self, x0: Batch, x1: Batch, t: Times, z: Batch | None = None) -> Batch:
        r"""The point :math:`x_t = \alpha x_1 + \sigma x_0 + \gamma z`.

        Args:
          x0: source samples `[B, *dims]`.
          x1: data samples `[B, *dims]`.
          t: times, a scalar or `[B]`, in [0, 1].
          z: standard normal `[B, *dims]`; required iff the path has noise.

        Returns:
          `[B, *dims]`.
        """
        x0, x1, tb, z = self._prepare(x0, x1, t, z)
        x = self.alpha(tb) * x1 + self.sigma(tb) * x0
        return x if z is None else x + self.gamma(tb) * z

    @_trusts_t
    def velocity(self, x0: Batch, x1: Batch, t: Times, z: Batch | None = None) -> Batch:
        r"""The conditional velocity :math:`\dot\alpha x_1 + \dot\sigma x_0 + \dot\gamma z`.

        Same arguments and shape as :meth:`interpolate`; it is the time
        derivative of that function with `x0`, `x1`, `z` held fixed.
        """
        x0, x1, tb, z = self._prepare(x0, x1, t, z)
        v = self.d_alpha(tb) * x1 + self.d_sigma(tb) * x0
        return v if z is None else v + self.d_gamma(tb) * z

    @_trusts_t
    def noise_target(self, x0: Batch, t: Times, z: Batch | None = None) -> Batch:
        r"""The standardized total noise :math:`\varepsilon = (\sigma x_0 + \gamma z)/\bar\sigma`.

        This is what a noise-prediction model regresses; without extra noise it is `x0`.
        Where :math:`\bar\sigma = 0` (t = 1 with bridge noise) there is no noise
        left and the target is 0.
        """
        x0, tb, z = self._prepare_noise(x0, t, z)
        if z is None:
            return x0
        s_tot = self.sigma_total(tb)
        pos = s_tot > 0
        safe = jnp.where(pos, s_tot, 1.0)
        return jnp.where(pos, (self.sigma(tb) * x0 + self.gamma(tb) * z) / safe, 0.0)


@struct.dataclass
class RectifiedFlow(AffinePath):
    r"""Rectified flow / CondOT / I-CFM: :math:`\alpha = t,\ \sigma = 1 - t`.

    Liu et al. 2022, "Flow straight and fast"; Lipman et al. 2023; Tong et al. 2023.
    With `noise=ConstantNoise(s)` it is TorchCFM's I-CFM/OT-CFM path with
    `sigma=s`; with `noise=BridgeNoise(s)` the SB-CFM path.
    """

    noise: object = None

    def alpha(self, t: Times) -> Array:
        return t

    def sigma(self, t: Times) -> Array:
        return 1.0 - t

    def d_alpha(self, t: Times) -> Array:
        return jnp.ones_like(t)

    def d_sigma(self, t: Times) -> Array:
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

    def __post_init__(self):
        _param("sigma_min", self.sigma_min, low=0.0, high=1.0, high_open=True)
        _check_noise(self.noise)

    def alpha(self, t: Times) -> Array:
        return t

    def sigma(self, t: Times) -> Array:
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t: Times) -> Array:
        return jnp.ones_like(t)

    def d_sigma(self, t: Times) -> Array:
        return jnp.full_like(t, -(1.0 - self.sigma_min))


@struct.dataclass
class Cosine(AffinePath):
    r"""Cosine path: :math:`\alpha = \sin(\pi t/2),\ \sigma = \cos(\pi t/2)`.

    The variance-preserving trigonometric interpolant (Albergo &
    Vanden-Eijnden 2023; Nichol & Dhariwal 2021 up to the time reparametrisation).
    The cosines are computed as :math:`\sin(\pi(1 - t)/2)`, which is exactly 0 at
    t = 1 (float32's :math:`\cos(\pi/2)` is -4.4e-8, a negative noise level) and
    more accurate near it.
    """

    noise: object = None

    def alpha(self, t: Times) -> Array:
        return jnp.sin(0.5 * math.pi * t)

    def sigma(self, t: Times) -> Array:
        return jnp.sin(0.5 * math.pi * (1.0 - t))

    def d_alpha(self, t: Times) -> Array:
        return 0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t))

    def d_sigma(self, t: Times) -> Array:
        return -0.5 * math.pi * jnp.sin(0.5 * math.pi * t)


@struct.dataclass
class Polynomial(AffinePath):
    r"""Polynomial path :math:`\alpha = t^n,\ \sigma = 1 - t^n` (n > 0).

    Meta flow_matching's `PolynomialConvexScheduler`; n = 1 is rectified flow.
    """

    n: float = struct.field(pytree_node=False, default=2.0)
    noise: object = None

    def __post_init__(self):
        if isinstance(self.n, (bool, np.bool_)) or not isinstance(
                self.n, (int, float, np.integer, np.floating)):
            raise TypeError(f"`n` must be a positive number, got {self.n!r}.")
        if not (self.n > 0 and math.isfinite(self.n)):
            raise ValueError(f"`n` must be a positive number, got {self.n!r}.")
        _check_noise(self.noise)

    def _power(self, t):
        # With n < 1 the slope of t^n is infinite at t = 0: the clipped d_alpha there instead.
        return t ** self.n if self.n >= 1 else _power(t, float(self.n))

    def alpha(self, t: Times) -> Array:
        return self._power(t)

    def sigma(self, t: Times) -> Array:
        return 1.0 - self._power(t)

    def d_alpha(self, t: Times) -> Array:
        # For n < 1 the derivative is singular at t = 0.
        tc = jnp.maximum(t, EDGE) if self.n < 1 else t
        return self.n * tc ** (self.n - 1.0)

    def d_sigma(self, t: Times) -> Array:
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

    def __post_init__(self):
        _param("beta_min", self.beta_min, low=0.0)
        _param("beta_max", self.beta_max, low=0.0, low_open=True)
        if all(isinstance(b, (int, float)) for b in (self.beta_min, self.beta_max)) \
                and self.beta_min > self.beta_max:
            raise ValueError(f"`beta_min` must not exceed `beta_max`, got {self.beta_min!r} "
                             f"and {self.beta_max!r}.")
        _check_noise(self.noise)

    def _beta(self, s):
        return self.beta_min + s * (self.beta_max - self.beta_min)

    def _int_beta(self, s):
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s ** 2

    def alpha(self, t: Times) -> Array:
        return jnp.exp(-0.5 * self._int_beta(1.0 - t))

    def _sigma_sq(self, t):
        return -jnp.expm1(-self._int_beta(1.0 - t))

    def sigma(self, t: Times) -> Array:
        return _sqrt(self._sigma_sq(t))

    def d_alpha(self, t: Times) -> Array:
        return 0.5 * self._beta(1.0 - t) * self.alpha(t)

    def d_sigma(self, t: Times) -> Array:
        t = jnp.minimum(t, 1.0 - EDGE)
        return -self.alpha(t) * self.d_alpha(t) / jnp.sqrt(self._sigma_sq(t))


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

    def __post_init__(self):
        _param("sigma_min", self.sigma_min, low=0.0, low_open=True)
        _param("sigma_max", self.sigma_max, low=0.0, low_open=True)
        if all(isinstance(b, (int, float)) for b in (self.sigma_min, self.sigma_max)) \
                and self.sigma_min >= self.sigma_max:
            raise ValueError(f"`sigma_min` must be below `sigma_max`, got {self.sigma_min!r} "
                             f"and {self.sigma_max!r}.")
        _check_noise(self.noise)

    def alpha(self, t: Times) -> Array:
        return jnp.ones_like(t)

    def sigma(self, t: Times) -> Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (1.0 - t)

    def d_alpha(self, t: Times) -> Array:
        return jnp.zeros_like(t)

    def d_sigma(self, t: Times) -> Array:
        return -jnp.log(self.sigma_max / self.sigma_min) * self.sigma(t)
