r"""Time samplers: objects called `sampler(key, shape) -> t` in [0, 1].

All densities are written in flowjax's convention (t = 0 source/noise,
t = 1 data). SD3 (Esser et al. 2024, "Scaling rectified flow transformers")
runs time the other way, :math:`t_{SD3} = 1 - t`; each docstring says how its
parameters map.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flowjax._checks import as_real_array, check_instance, check_number, check_unit_interval
from flowjax._types import Array, ArrayLike, Float, Scalar
from flowjax.time._base import AbstractTimeSampler

_SAMPLER = "a time sampler (e.g. flowjax.time.Uniform())"


def _param(name, value, **bounds):
    """A sampler's numeric parameter, checked; a PRNG key here means the class was called as a sampler."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and (dtype == jnp.uint32 or jnp.issubdtype(dtype, jax.dtypes.prng_key)):
        raise TypeError(f"`{name}` must be a real number, got a PRNG key: a time sampler class "
                        "was called with (key, shape); build the sampler first, e.g. "
                        "LogitNormal(), and pass that instance.")
    return check_number(name, value, **bounds)


def _positive(name, value):
    return _param(name, value, low=0.0, low_open=True)


class Uniform(AbstractTimeSampler):
    """The uniform density on [0, 1]."""

    def _draw(self, key, shape):
        return jax.random.uniform(key, shape)


class LogitNormal(AbstractTimeSampler):
    r"""Logit-normal: :math:`t = \mathrm{sigmoid}(m + s n),\ n \sim \mathcal N(0, 1)`.

    .. math:: \pi(t) = \frac{1}{s\sqrt{2\pi}}\frac{1}{t(1 - t)}
              \exp\Big(-\frac{(\mathrm{logit}\,t - m)^2}{2 s^2}\Big)

    SD3, Eq. 19. SD3's `m` becomes `-m` here (time flip); its best
    setting, m = 0, s = 1, is the same in both conventions.

    Args:
      loc: the mean `m` of the logit.
      std: the standard deviation `s` of the logit, > 0.
    """

    loc: Scalar = 0.0
    std: Scalar = 1.0

    def __check_init__(self):
        _param("loc", self.loc)
        _positive("std", self.std)

    def _draw(self, key, shape):
        return jax.nn.sigmoid(self.loc + self.std * jax.random.normal(key, shape))


class Mode(AbstractTimeSampler):
    r"""SD3's mode sampling with heavy tails.

    .. math:: t = u + s\,(\cos^2(\pi u/2) - 1 + u),\quad u \sim U[0, 1],

    which is SD3's :math:`f_{mode}` (Eq. 20) after the flip :math:`t = 1 - f`;
    the density is symmetric about 1/2, so `s` means the same in both
    conventions.

    Args:
      s: SD3's parameter, in [-1, 2/(pi - 2)] for the map to be monotone;
        s = 0 is uniform.
    """

    s: Scalar = 1.29

    def __check_init__(self):
        _param("s", self.s, low=-1.0, high=2.0 / (math.pi - 2.0))

    def _draw(self, key, shape):
        u = jax.random.uniform(key, shape)
        return jnp.clip(u + self.s * (jnp.cos(0.5 * math.pi * u) ** 2 - 1.0 + u), 0.0, 1.0)


class Beta(AbstractTimeSampler):
    """The Beta(a, b) density on [0, 1] (both parameters > 0)."""

    a: Scalar
    b: Scalar

    def __check_init__(self):
        _positive("a", self.a)
        _positive("b", self.b)

    def _draw(self, key, shape):
        return jax.random.beta(key, self.a, self.b, shape)


def shift_time(t: ArrayLike, shift: Scalar) -> Float[Array, "..."]:
    r"""SD3's resolution-dependent timestep shift, written in flow time.

    SD3 (Eq. 23) maps :math:`\tau \mapsto s\tau / (1 + (s - 1)\tau)` with
    :math:`\tau = 1 - t`; in flowjax's time this is

    .. math:: t \mapsto \frac{t}{s - (s - 1)\,t},

    which moves time towards the noise (t = 0) for `shift > 1` and keeps
    0 and 1 fixed: it is computed as :math:`t / (t + s(1 - t))`, which is
    exactly 1 at t = 1 in floating point (the form above gives 1.0000001 in
    float32 for some `s`, outside [0, 1]) and never leaves [0, 1].

    Args:
      t: times in [0, 1], any shape.
      shift: the factor s > 0.

    Examples:
      A shift above 1 moves the times towards the noise end (t = 0):

      >>> import jax.numpy as jnp
      >>> from flowjax.time import shift_time
      >>> shift_time(jnp.array([0.25, 0.5, 0.75]), 3.0)
      Array([0.1 , 0.25, 0.5 ], dtype=float32)
    """
    _positive("shift", shift)
    return _shift(check_unit_interval("t", as_real_array("t", t)), shift)


def _shift(t, shift):
    return t / (t + shift * (1.0 - t))


class Shifted(AbstractTimeSampler):
    """A time sampler's draws warped by :func:`shift_time` (`shift > 1`: towards the noise)."""

    sampler: AbstractTimeSampler
    shift: Scalar

    def __check_init__(self):
        check_instance("sampler", self.sampler, AbstractTimeSampler, _SAMPLER)
        if self.sampler.pairs:
            raise TypeError("`sampler` must draw single times, got a pair sampler.")
        _positive("shift", self.shift)

    def _draw(self, key, shape):
        return _shift(self.sampler._draw(key, shape), self.shift)


class OrderedPairs(AbstractTimeSampler):
    r"""Pairs of times `(r, t)` with `r <= t` for average-velocity (MeanFlow) training.

    Two times are drawn from `sampler` and sorted; then a fraction
    `equal_fraction` of the pairs is set to `r = t` (those train the
    instantaneous velocity, i.e. plain flow matching). MeanFlow (Geng et al.
    2025, Table 1) draws both from a logit-normal and keeps 25% of pairs
    with `r != t` (`equal_fraction=0.75`); its logit-normal `(-0.4, 1.0)`
    in the flipped time is `LogitNormal(0.4, 1.0)` here.

    Args:
      sampler: a time sampler; :class:`Uniform` when None.
      equal_fraction: probability of `r = t`, in [0, 1].

    Calling it returns `(r, t)`.
    """

    pairs = True
    sampler: AbstractTimeSampler
    equal_fraction: Scalar

    def __init__(self, sampler: AbstractTimeSampler | None = None,
                 equal_fraction: Scalar = 0.75):
        self.sampler = Uniform() if sampler is None else check_instance(
            "sampler", sampler, AbstractTimeSampler, _SAMPLER)
        if self.sampler.pairs:
            raise TypeError("`sampler` must draw single times, got a pair sampler.")
        self.equal_fraction = check_number("equal_fraction", equal_fraction, low=0.0, high=1.0)

    def _draw(self, key, shape):
        k_a, k_b, k_eq = jax.random.split(key, 3)
        a, b = self.sampler._draw(k_a, shape), self.sampler._draw(k_b, shape)
        r, t = jnp.minimum(a, b), jnp.maximum(a, b)
        r = jnp.where(jax.random.uniform(k_eq, shape) < self.equal_fraction, t, r)
        return r, t
