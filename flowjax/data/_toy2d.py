"""2D toy distributions as jittable samplers `(key, n) -> [n, 2]`.

Scales follow TorchCFM's 2D examples (8 Gaussians on a circle of radius 5,
moons scaled by 3 and shifted by -1) and FFJORD's toy data (the others, in
roughly [-4, 4]^2), so figures are comparable with theirs.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp

from flowjax._checks import check_array, check_finite, check_key, check_number
from flowjax._types import Array, ArrayLike, KeyArray


def _check(key, n, *dims, **scales):
    """The key, the number of points, the dimension if any and the nonnegative scales."""
    check_key("key", key)
    check_number("n", n, low=1, integer=True)
    for dim in dims:
        check_number("dim", dim, low=1, integer=True)
    for name, value in scales.items():
        check_number(name, value, low=0.0)


def _toy(sampler):
    """Checks a toy sampler's arguments before it runs: the key, `n` (and `dim`) as positive
    ints, every other (scale) argument a real number >= 0."""
    signature = inspect.signature(sampler)

    @functools.wraps(sampler)
    def checked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        options = dict(bound.arguments)
        dims = [options.pop("dim")] if "dim" in options else []
        _check(options.pop("key"), options.pop("n"), *dims, **options)
        return sampler(*args, **kwargs)

    return checked


def _check_data(data):
    """`data [N, *dims]` as a floating array, finite by a compiled check."""
    if data is None or isinstance(data, (str, bytes, dict)):
        raise TypeError(f"`data` must be an array, got {type(data).__name__}.")
    try:
        data = jnp.asarray(data)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`data` must be an array, got {type(data).__name__}.") from err
    check_array("data", data)
    return check_finite("data", data)


@_toy
def standard_normal(key: KeyArray, n: int, dim: int = 2) -> Array:
    """N(0, I) in `dim` dimensions."""
    return jax.random.normal(key, (n, dim))


@_toy
def eight_gaussians(key: KeyArray, n: int, radius: float = 5.0,
                    std: float = 0.1 ** 0.25) -> Array:
    """Eight Gaussians on a circle (TorchCFM: radius 5, covariance sqrt(0.1) I)."""
    kc, kz = jax.random.split(key)
    angle = jax.random.randint(kc, (n,), 0, 8) * (2.0 * math.pi / 8.0)
    centers = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
    return centers + std * jax.random.normal(kz, (n, 2))


@_toy
def moons(key: KeyArray, n: int, noise: float = 0.2) -> Array:
    """scikit-learn's two moons with Gaussian noise, times 3 minus 1 (as TorchCFM)."""
    ka, kb, kz = jax.random.split(key, 3)
    theta = jax.random.uniform(ka, (n,), maxval=math.pi)
    upper = jax.random.bernoulli(kb, 0.5, (n,))
    outer = jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)
    inner = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], -1)
    x = jnp.where(upper[:, None], outer, inner) + noise * jax.random.normal(kz, (n, 2))
    return 3.0 * x - 1.0


@_toy
def circles(key: KeyArray, n: int, noise: float = 0.08) -> Array:
    """Two concentric circles (radii 1 and 0.5), scaled by 3."""
    ka, kb, kz = jax.random.split(key, 3)
    theta = jax.random.uniform(ka, (n,), maxval=2.0 * math.pi)
    r = jnp.where(jax.random.bernoulli(kb, 0.5, (n,)), 1.0, 0.5)
    x = r[:, None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)
    return 3.0 * (x + noise * jax.random.normal(kz, (n, 2)))


@_toy
def swissroll(key: KeyArray, n: int, noise: float = 1.0) -> Array:
    """The 2D Swiss roll of FFJORD (scikit-learn's, x and z, divided by 5)."""
    ka, kz = jax.random.split(key)
    t = 1.5 * math.pi * (1.0 + 2.0 * jax.random.uniform(ka, (n,)))
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) + noise * jax.random.normal(kz, (n, 2))
    return x / 5.0


@_toy
def scurve(key: KeyArray, n: int, noise: float = 0.1) -> Array:
    """The 2D S-curve (scikit-learn's x and z), scaled by 2."""
    ka, kz = jax.random.split(key)
    t = 3.0 * math.pi * (jax.random.uniform(ka, (n,)) - 0.5)
    x = jnp.stack([jnp.sin(t), jnp.sign(t) * (jnp.cos(t) - 1.0)], -1)
    return 2.0 * (x + noise * jax.random.normal(kz, (n, 2)))


@_toy
def two_spirals(key: KeyArray, n: int, noise: float = 0.1) -> Array:
    """Two interleaved spirals (FFJORD's '2spirals')."""
    ka, kb, kz = jax.random.split(key, 3)
    r = jnp.sqrt(jax.random.uniform(ka, (n,))) * 540.0 * (2.0 * math.pi) / 360.0
    x = jnp.stack([-jnp.cos(r) * r, jnp.sin(r) * r], -1)
    sign = jnp.where(jax.random.bernoulli(kb, 0.5, (n,)), 1.0, -1.0)[:, None]
    return (sign * x) / 3.0 + noise * jax.random.normal(kz, (n, 2))


@_toy
def checkerboard(key: KeyArray, n: int) -> Array:
    """A 4x4 checkerboard on [-4, 4]^2 (FFJORD's)."""
    ka, kb, kc = jax.random.split(key, 3)
    x1 = jax.random.uniform(ka, (n,)) * 4.0 - 2.0
    x2 = (jax.random.uniform(kb, (n,)) - jax.random.randint(kc, (n,), 0, 2) * 2.0
          + jnp.floor(x1) % 2)
    return jnp.stack([x1, x2], -1) * 2.0


def from_array(data: ArrayLike) -> Callable[[KeyArray, int], Array]:
    """A sampler `(key, n) -> [n, *dims]` drawing rows of `data [N, *dims]` with replacement."""
    data = _check_data(data)

    def sample(key, n: int):
        _check(key, n)
        return data[jax.random.randint(key, (n,), 0, data.shape[0])]

    return sample
