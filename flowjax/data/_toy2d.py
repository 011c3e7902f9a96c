"""2D toy distributions as jittable samplers `(key, n) -> [n, 2]`.

Scales follow TorchCFM's 2D examples (8 Gaussians on a circle of radius 5,
moons scaled by 3 and shifted by -1) and FFJORD's toy data (the others, in
roughly [-4, 4]^2), so figures are comparable with theirs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flowjax._checks import check_array, check_finite, check_key, check_number


def _check_n(n):
    check_number("n", n, low=1, integer=True)


def _check(key, n, **scales):
    """The key, the number of points and the nonnegative scales of a toy sampler."""
    check_key("key", key)
    _check_n(n)
    for name, value in scales.items():
        check_number(name, value, low=0.0)


def standard_normal(key, n: int, dim: int = 2):
    """N(0, I) in `dim` dimensions."""
    _check(key, n)
    check_number("dim", dim, low=1, integer=True)
    return jax.random.normal(key, (n, dim))


def eight_gaussians(key, n: int, radius: float = 5.0, std: float = 0.1 ** 0.25):
    """Eight Gaussians on a circle (TorchCFM: radius 5, covariance sqrt(0.1) I)."""
    _check(key, n, radius=radius, std=std)
    kc, kz = jax.random.split(key)
    angle = jax.random.randint(kc, (n,), 0, 8) * (2.0 * math.pi / 8.0)
    centers = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
    return centers + std * jax.random.normal(kz, (n, 2))


def moons(key, n: int, noise: float = 0.2):
    """scikit-learn's two moons with Gaussian noise, times 3 minus 1 (as TorchCFM)."""
    _check(key, n, noise=noise)
    ka, kb, kz = jax.random.split(key, 3)
    theta = jax.random.uniform(ka, (n,), maxval=math.pi)
    upper = jax.random.bernoulli(kb, 0.5, (n,))
    outer = jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)
    inner = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], -1)
    x = jnp.where(upper[:, None], outer, inner) + noise * jax.random.normal(kz, (n, 2))
    return 3.0 * x - 1.0


def circles(key, n: int, noise: float = 0.08):
    """Two concentric circles (radii 1 and 0.5), scaled by 3."""
    _check(key, n, noise=noise)
    ka, kb, kz = jax.random.split(key, 3)
    theta = jax.random.uniform(ka, (n,), maxval=2.0 * math.pi)
    r = jnp.where(jax.random.bernoulli(kb, 0.5, (n,)), 1.0, 0.5)
    x = r[:, None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)
    return 3.0 * (x + noise * jax.random.normal(kz, (n, 2)))


def swissroll(key, n: int, noise: float = 1.0):
    """The 2D Swiss roll of FFJORD (scikit-learn's, x and z, divided by 5)."""
    _check(key, n, noise=noise)
    ka, kz = jax.random.split(key)
    t = 1.5 * math.pi * (1.0 + 2.0 * jax.random.uniform(ka, (n,)))
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) + noise * jax.random.normal(kz, (n, 2))
    return x / 5.0


def scurve(key, n: int, noise: float = 0.1):
    """The 2D S-curve (scikit-learn's x and z), scaled by 2."""
    _check(key, n, noise=noise)
    ka, kz = jax.random.split(key)
    t = 3.0 * math.pi * (jax.random.uniform(ka, (n,)) - 0.5)
    x = jnp.stack([jnp.sin(t), jnp.sign(t) * (jnp.cos(t) - 1.0)], -1)
    return 2.0 * (x + noise * jax.random.normal(kz, (n, 2)))


def two_spirals(key, n: int, noise: float = 0.1):
    """Two interleaved spirals (FFJORD's '2spirals')."""
    _check(key, n, noise=noise)
    ka, kb, kz = jax.random.split(key, 3)
    r = jnp.sqrt(jax.random.uniform(ka, (n,))) * 540.0 * (2.0 * math.pi) / 360.0
    x = jnp.stack([-jnp.cos(r) * r, jnp.sin(r) * r], -1)
    sign = jnp.where(jax.random.bernoulli(kb, 0.5, (n,)), 1.0, -1.0)[:, None]
    return (sign * x) / 3.0 + noise * jax.random.normal(kz, (n, 2))


def checkerboard(key, n: int):
    """A 4x4 checkerboard on [-4, 4]^2 (FFJORD's)."""
    _check(key, n)
    ka, kb, kc = jax.random.split(key, 3)
    x1 = jax.random.uniform(ka, (n,)) * 4.0 - 2.0
    x2 = (jax.random.uniform(kb, (n,)) - jax.random.randint(kc, (n,), 0, 2) * 2.0
          + jnp.floor(x1) % 2)
    return jnp.stack([x1, x2], -1) * 2.0


def from_array(data):
    """A sampler that draws rows of a user array `[N, *dims]` uniformly with replacement."""
    if data is None or isinstance(data, (str, bytes, dict)):
        raise TypeError(f"`data` must be an array, got {type(data).__name__}.")
    try:
        data = jnp.asarray(data)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`data` must be an array, got {type(data).__name__}.") from err
    check_array("data", data)
    check_finite("data", data)

    def sample(key, n: int):
        _check(key, n)
        return data[jax.random.randint(key, (n,), 0, data.shape[0])]

    return sample
