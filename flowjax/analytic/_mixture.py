r"""Exact marginal fields of an affine Gaussian path towards a Gaussian mixture.

With source :math:`x_0 \sim \mathcal N(0, I)` independent of the data
:math:`x_1 \sim \sum_k w_k \mathcal N(\mu_k, \Sigma_k)`, the marginal of
:math:`x_t = \alpha x_1 + \bar\sigma \varepsilon` is the mixture

.. math:: p_t = \sum_k w_k\, \mathcal N(\alpha\mu_k,\ C_k),\qquad C_k = \alpha^2\Sigma_k + \bar\sigma^2 I,

and, with responsibilities :math:`r_k(x) \propto w_k \mathcal N(x; \alpha\mu_k, C_k)`,

.. math::
    E[x_1 | x, k] = \mu_k + \alpha\Sigma_k C_k^{-1}(x - \alpha\mu_k),\quad
    E[\varepsilon | x, k] = \bar\sigma C_k^{-1}(x - \alpha\mu_k),

    v^*(x, t) = \sum_k r_k\big(\dot\alpha E[x_1|x,k] + \dot{\bar\sigma} E[\varepsilon|x,k]\big),\quad
    \nabla\log p_t(x) = -\sum_k r_k C_k^{-1}(x - \alpha\mu_k).

(Lipman et al. 2023, Thm. 1: the marginal velocity is the posterior mean of
the conditional one.) A Gaussian is the one-component case and a finite data
set (the empirical measure) the case of zero covariances.

Near t = 1 with singular covariances (the empirical measure) the fields are
truly singular (the velocity grows like 1/(1 - t)); to stay finite, the noise
variance in :math:`C_k` is floored at :math:`\bar\sigma(1 - t_{clip})^2`, which
changes nothing for t <= 1 - t_clip.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from flowjax._checks import (as_real_array, check_array, check_finite, check_key, check_number,
                             check_path, check_time, is_concrete)


def _float_array(name, value, dtype=None):
    """`value` as an array: floating already, or any real one cast to `dtype` when given."""
    if value is None or isinstance(value, (str, bytes, dict)):
        raise TypeError(f"`{name}` must be an array of real numbers, got {type(value).__name__}.")
    if dtype is not None:
        return as_real_array(name, value).astype(dtype)
    try:
        value = jnp.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be an array of real numbers, "
                        f"got {type(value).__name__}.") from err
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype, got {value.dtype}.")
    return value


def _check_covariances(name, covs):
    """Finite, symmetric, positive semi-definite `[..., d, d]` matrices (values when concrete)."""
    check_finite(name, covs)
    if is_concrete(covs):
        c = np.asarray(covs, np.float64)
        scale = max(1.0, float(np.max(np.abs(c), initial=0.0)))
        if not np.allclose(c, np.swapaxes(c, -1, -2), atol=1e-6 * scale):
            raise ValueError(f"`{name}` must be symmetric.")
        if c.size and np.min(np.linalg.eigvalsh(c)) < -1e-6 * scale:
            raise ValueError(f"`{name}` must be positive semi-definite.")


def _check_gaussian(mean, cov, d, dtype):
    """`mean: [d]`, `cov: [d, d]` (finite, symmetric PSD) as arrays of `dtype`."""
    mean, cov = _float_array("mean", mean, dtype), _float_array("cov", cov, dtype)
    if mean.shape != (d,) or cov.shape != (d, d):
        raise ValueError(f"`mean` and `cov` must have shapes {(d,)} and {(d, d)}, "
                         f"got {mean.shape} and {cov.shape}.")
    check_finite("mean", mean)
    _check_covariances("cov", cov)
    return mean, cov


def _check_points(name, x, d=None):
    check_array(name, x, rank=2)
    check_finite(name, x)
    if d is not None and x.shape[1] != d:
        raise ValueError(f"`{name}` has {x.shape[1]} columns but the `mixture` has dimension "
                         f"{d}.")


@struct.dataclass
class GaussianMixture:
    """A Gaussian mixture: `means [K, d]`, `covs [K, d, d]`, `weights [K]` (summing to 1)."""

    means: jax.Array
    covs: jax.Array
    weights: jax.Array

    @classmethod
    def create(cls, means, covs, weights=None):
        """Checks and normalises: `means [K, d]`, `covs [K, d, d]` (symmetric PSD),
        `weights [K]` (>= 0, any positive total; uniform by default)."""
        means = _float_array("means", means)
        _check_points("means", means)
        covs = _float_array("covs", covs, means.dtype)
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(f"`covs` must have shape {(k, d, d)}, got {tuple(covs.shape)}.")
        _check_covariances("covs", covs)
        weights = (jnp.full((k,), 1.0 / k, means.dtype) if weights is None
                   else _float_array("weights", weights, means.dtype))
        if weights.shape != (k,):
            raise ValueError(f"`weights` must have shape {(k,)}, got {tuple(weights.shape)}.")
        check_finite("weights", weights)
        if is_concrete(weights) and (np.any(np.asarray(weights) < 0)
                                     or not np.sum(np.asarray(weights)) > 0):
            raise ValueError("`weights` must be >= 0 with a positive total.")
        return cls(means, covs, weights / jnp.sum(weights))

    @classmethod
    def gaussian(cls, mean, cov):
        """A single Gaussian `N(mean [d], cov [d, d])`."""
        mean = _float_array("mean", mean)
        if mean.ndim != 1:
            raise ValueError(f"`mean` must have shape [d], got {tuple(mean.shape)}.")
        mean, cov = _check_gaussian(mean, cov, mean.shape[0], mean.dtype)
        return cls.create(mean[None], cov[None])

    @classmethod
    def empirical(cls, points, weights=None):
        """The empirical measure of a finite data set `points [n, d]` (zero covariances)."""
        points = _float_array("points", points)
        _check_points("points", points)
        d = points.shape[1]
        return cls.create(points, jnp.zeros((points.shape[0], d, d), points.dtype), weights)

    def sample(self, key, n: int):
        """Draws `[n, d]` samples."""
        check_key("key", key)
        check_number("n", n, low=1, integer=True)
        kc, kz = jax.random.split(key)
        comp = jax.random.choice(kc, self.weights.shape[0], (n,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(kz, (n, self.means.shape[1]), self.means.dtype)
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)


T_CLIP = 1e-5


def _noise_var(path, t):
    """sigma_total(t)^2, floored at sigma_total(1 - T_CLIP)^2 (see the module docstring)."""
    floor = path.sigma_total(jnp.asarray(1.0 - T_CLIP, jnp.result_type(t)))
    return jnp.maximum(path.sigma_total(t), floor) ** 2


def _per_point(path, mix, x, t):
    """Responsibilities, E[x1|x,k], E[eps|x,k], C_k^{-1}(x - a mu_k) and log p for one x."""
    a, var = path.alpha(t), _noise_var(path, t)
    s = jnp.sqrt(var)
    d = x.shape[-1]
    cov = a ** 2 * mix.covs + var * jnp.eye(d, dtype=x.dtype)
    chol = jnp.linalg.cholesky(cov)
    diff = x[None, :] - a * mix.means
    sol = jax.vmap(lambda c, r: jax.scipy.linalg.cho_solve((c, True), r))(chol, diff)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
    logn = -0.5 * (jnp.sum(diff * sol, -1) + logdet + d * jnp.log(2.0 * jnp.pi))
    logits = jnp.log(mix.weights) + logn
    resp = jax.nn.softmax(logits)
    ex1 = mix.means + a * jnp.einsum("kij,kj->ki", mix.covs, sol)
    eeps = s * sol
    return resp, ex1, eeps, sol, jax.scipy.special.logsumexp(logits)


def _batched(fn, path, mix, x, t):
    check_path("path", path)
    if not isinstance(mix, GaussianMixture):
        raise TypeError(f"`mixture` must be an analytic.GaussianMixture, got {type(mix).__name__}.")
    _check_points("x", x, mix.means.shape[1])
    t = check_time(t, x.shape[0])
    t = jnp.broadcast_to(t, x.shape[:1]).astype(x.dtype)
    return _vmapped(fn, path, mix, x, t)


@functools.partial(jax.jit, static_argnums=0)
def _vmapped(fn, path, mix, x, t):
    """`fn` over the batch, as one compiled program: called eagerly (as in tests and
    notebooks) the first call compiles once instead of once per operation (1.8 s -> 0.2 s)."""
    return jax.vmap(lambda xi, ti: fn(path, mix, xi, ti))(x, t)


def _velocity_one(path, mix, x, t):
    resp, ex1, eeps, _, _ = _per_point(path, mix, x, t)
    v = path.d_alpha(t) * ex1 + path.d_sigma_total(t) * eeps
    return resp @ v


def _score_one(path, mix, x, t):
    resp, _, _, sol, _ = _per_point(path, mix, x, t)
    return -(resp @ sol)


def _log_prob_one(path, mix, x, t):
    return _per_point(path, mix, x, t)[-1]


def mixture_velocity(path, mixture: GaussianMixture, x, t):
    """The exact marginal velocity `v*(x, t)` `[B, d]` for an `N(0, I)` source."""
    return _batched(_velocity_one, path, mixture, x, t)


def mixture_score(path, mixture: GaussianMixture, x, t):
    """The exact score `grad log p_t(x)` `[B, d]`."""
    return _batched(_score_one, path, mixture, x, t)


def mixture_log_prob(path, mixture: GaussianMixture, x, t):
    """The exact log-density `log p_t(x)` `[B]`."""
    return _batched(_log_prob_one, path, mixture, x, t)


def gaussian_flow_map(path, mean, cov, x0, t):
    r"""The closed-form ODE flow map from `N(0, I)` to `N(mean, cov)` along an affine path.

    The marginals :math:`\mathcal N(\alpha\mu, C_t)`, :math:`C_t = \alpha^2\Sigma + \bar\sigma^2 I`,
    have commuting covariances, so the flow of the marginal velocity is

    .. math:: \psi_t(x_0) = \alpha(t)\mu + C_t^{1/2} x_0,

    with the symmetric square root (from the eigendecomposition of :math:`\Sigma`):
    :math:`\frac{d}{dt}\psi_t = \dot\alpha\mu + \tfrac12\dot C_t C_t^{-1}(\psi_t - \alpha\mu)`,
    which is :func:`mixture_velocity` for one component.

    Args:
      path: an affine path.
      mean: `[d]`; cov: `[d, d]` (symmetric positive semi-definite).
      x0: sources `[B, d]`.
      t: a scalar or `[B]` time.

    Returns:
      `[B, d]`, the points :math:`\psi_t(x_0)`.
    """
    check_path("path", path)
    _check_points("x0", x0)
    t = check_time(t, x0.shape[0])
    mean, cov = _check_gaussian(mean, cov, x0.shape[1], x0.dtype)
    lam, u = jnp.linalg.eigh(cov)
    t = jnp.broadcast_to(t, x0.shape[:1]).astype(x0.dtype)
    a = path.alpha(t)[:, None]
    s2 = path.sigma_total(t)[:, None] ** 2
    root = jnp.sqrt(jnp.maximum(a ** 2 * lam[None] + s2, 0.0))  # [B, d] in the eigenbasis
    return a * mean + ((x0 @ u) * root) @ u.T


def gaussian_average_velocity(path, mean, cov, x, r, t):
    r"""The exact average velocity (flow map) from `N(0, I)` to `N(mean, cov)`: MeanFlow's target.

    With :math:`\psi` from :func:`gaussian_flow_map`, the map from time `r`
    to time `t` is :math:`\Phi_{r\to t}(x) = \alpha_t\mu + C_t^{1/2}C_r^{-1/2}(x - \alpha_r\mu)`
    and the average velocity :math:`u(x, r, t) = (\Phi_{r\to t}(x) - x)/(t - r)`;
    at `r = t` it is the marginal velocity
    :math:`\dot\alpha\mu + \tfrac12\dot C_t C_t^{-1}(x - \alpha\mu)`.
    Smooth in `(x, r, t)`, so `jax.jvp` through it is exact.

    At the data end a singular `cov` makes :math:`C_t` singular (the velocity
    off the support grows like :math:`1/(1 - t)`, and is 0/0 at t = 1): as for
    the mixture fields, the noise variance in :math:`C` is floored at
    :math:`\bar\sigma(1 - t_{clip})^2`, which changes nothing for
    `r, t <= 1 - t_clip` and keeps the field finite up to t = 1.

    Args:
      path: an affine path.
      mean: `[d]`; cov: `[d, d]`.
      x: states at time `r`, `[B, d]`.
      r, t: start and end times (scalars or `[B]`), `r <= t`.

    Returns:
      `[B, d]`.
    """
    check_path("path", path)
    _check_points("x", x)
    mean, cov = _check_gaussian(mean, cov, x.shape[1], x.dtype)
    r, t = check_time(r, x.shape[0], name="r"), check_time(t, x.shape[0], name="t")
    if is_concrete(r) and is_concrete(t) and np.any(np.asarray(r) > np.asarray(t)):
        raise ValueError("`r` must not exceed `t`.")
    lam, u = jnp.linalg.eigh(cov)
    lam = jnp.maximum(lam, 0.0)  # PSD; rounding can leave -1e-8 for a singular cov
    r = jnp.broadcast_to(r.astype(x.dtype), x.shape[:1])[:, None]
    t = jnp.broadcast_to(t.astype(x.dtype), x.shape[:1])[:, None]
    floor = path.sigma_total(jnp.asarray(1.0 - T_CLIP, x.dtype))

    def var(s):  # eigenvalues of C_s, [B, d], with the noise floored (see above)
        return path.alpha(s) ** 2 * lam[None] + jnp.maximum(path.sigma_total(s), floor) ** 2

    y = (x - path.alpha(r) * mean) @ u  # centred state in the eigenbasis
    jump = path.alpha(t) * mean + (y * jnp.sqrt(var(t) / var(r))) @ u.T
    equal = t == r
    average = (jump - x) / jnp.where(equal, 1.0, t - r)
    s_r = path.sigma_total(r)
    d_var = 2 * path.alpha(r) * path.d_alpha(r) * lam[None] \
        + jnp.where(s_r > floor, 2 * s_r * path.d_sigma_total(r), 0.0)
    velocity = path.d_alpha(r) * mean + (0.5 * d_var / var(r) * y) @ u.T
    return jnp.where(equal, velocity, average)
