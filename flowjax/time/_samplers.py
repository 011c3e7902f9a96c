r"""Time samplers: factories that return `sampler(key, shape) -> t` in [0, 1].

All densities are written in flowjax's convention (t = 0 source/noise,
t = 1 data). SD3 (Esser et al. 2024, "Scaling rectified flow transformers")
runs time the other way, :math:`t_{SD3} = 1 - t`; each docstring says how its
parameters map.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flowjax._checks import (as_real_array, check_callable, check_key, check_number,
                             check_shape, check_unit_interval)


def _check_positive(name, value):
    check_number(name, value, low=0.0, low_open=True)


def _sampler(draw):
    """`sample(key, shape)` around `draw(key, shape)`, with the key and the shape checked.

    Samplers are called inside jitted losses: the checks look at types and
    shapes only, at trace time.
    """

    def sample(key, shape):
        check_key("key", key)
        return draw(key, check_shape("shape", shape))

    return sample


def uniform():
    """The uniform density on [0, 1]."""
    return _sampler(lambda key, shape: jax.random.uniform(key, shape))


def logit_normal(loc: float = 0.0, scale: float = 1.0):
    r"""Logit-normal: :math:`t = \mathrm{sigmoid}(m + s n),\ n \sim \mathcal N(0, 1)`.

    .. math:: \pi(t) = \frac{1}{s\sqrt{2\pi}}\frac{1}{t(1 - t)}
              \exp\Big(-\frac{(\mathrm{logit}\,t - m)^2}{2 s^2}\Big)

    SD3, Eq. 19. SD3's `m` becomes `-m` here (time flip); its best
    setting, m = 0, s = 1, is the same in both conventions.
    """
    check_number("loc", loc)
    _check_positive("scale", scale)
    return _sampler(lambda key, shape: jax.nn.sigmoid(loc + scale * jax.random.normal(key, shape)))


def mode(scale: float = 1.29):
    r"""SD3's mode sampling with heavy tails.

    .. math:: t = u + s\,(\cos^2(\pi u/2) - 1 + u),\quad u \sim U[0, 1],

    which is SD3's :math:`f_{mode}` (Eq. 20) after the flip :math:`t = 1 - f`;
    the density is symmetric about 1/2, so `scale` means the same in both
    conventions. `scale` must lie in [-1, 2/(pi - 2)] for the map to be
    monotone; s = 0 is uniform.
    """
    check_number("scale", scale)
    if not (-1.0 <= scale <= 2.0 / (math.pi - 2.0)):
        raise ValueError(f"`scale` must lie in [-1, 2/(pi-2)] = [-1, 1.752], got {scale!r}.")

    def draw(key, shape):
        u = jax.random.uniform(key, shape)
        return jnp.clip(u + scale * (jnp.cos(0.5 * math.pi * u) ** 2 - 1.0 + u), 0.0, 1.0)

    return _sampler(draw)


def beta(a: float, b: float):
    """The Beta(a, b) density on [0, 1]."""
    _check_positive("a", a)
    _check_positive("b", b)
    return _sampler(lambda key, shape: jax.random.beta(key, a, b, shape))


def shift_time(t, shift: float):
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
    """
    _check_positive("shift", shift)
    t = as_real_array("t", t)
    check_unit_interval("t", t)
    return t / (t + shift * (1.0 - t))


def shifted(sampler, shift: float):
    """Wraps a time sampler with :func:`shift_time`."""
    check_callable("sampler", sampler)
    _check_positive("shift", shift)
    return _sampler(lambda key, shape: shift_time(sampler(key, shape), shift))


def ordered_pairs(sampler=None, *, equal_fraction: float = 0.75):
    r"""Pairs of times `(r, t)` with `r <= t` for average-velocity (MeanFlow) training.

    Two times are drawn from `sampler` and sorted; then a fraction
    `equal_fraction` of the pairs is set to `r = t` (those train the
    instantaneous velocity, i.e. plain flow matching). MeanFlow (Geng et al.
    2025, Table 1) draws both from a logit-normal and keeps 25% of pairs
    with `r != t` (`equal_fraction=0.75`); its logit-normal `(-0.4, 1.0)`
    in the flipped time is `logit_normal(0.4, 1.0)` here.

    Args:
      sampler: a time sampler `(key, shape) -> t`; uniform by default.
      equal_fraction: probability of `r = t`, in [0, 1].

    Returns:
      `sample(key, shape) -> (r, t)`.
    """
    check_number("equal_fraction", equal_fraction, low=0.0, high=1.0)
    sampler = uniform() if check_callable("sampler", sampler, allow_none=True) is None \
        else sampler

    def draw(key, shape):
        k_a, k_b, k_eq = jax.random.split(key, 3)
        a, b = sampler(k_a, shape), sampler(k_b, shape)
        r, t = jnp.minimum(a, b), jnp.maximum(a, b)
        r = jnp.where(jax.random.uniform(k_eq, shape) < equal_fraction, t, r)
        return r, t

    return _sampler(draw)
