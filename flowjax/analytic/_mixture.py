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

import jax
import jax.numpy as jnp
from flax import struct

from flowjax._checks import check_array, check_time


@struct.dataclass
class GaussianMixture:
    """A Gaussian mixture: `means [K, d]`, `covs [K, d, d]`, `weights [K]` (summing to 1)."""

    means: jax.Array
    covs: jax.Array
    weights: jax.Array

    @classmethod
    def create(cls, means, covs, weights=None):
        means = jnp.asarray(means)
        covs = jnp.asarray(covs, dtype=means.dtype)
        check_array("means", means, rank=2)
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(f"`covs` must have shape {(k, d, d)}, got {tuple(covs.shape)}.")
        weights = (jnp.full((k,), 1.0 / k, means.dtype) if weights is None
                   else jnp.asarray(weights, means.dtype))
        if weights.shape != (k,):
            raise ValueError(f"`weights` must have shape {(k,)}, got {tuple(weights.shape)}.")
        return cls(means, covs, weights / jnp.sum(weights))

    @classmethod
    def gaussian(cls, mean, cov):
        """A single Gaussian `N(mean [d], cov [d, d])`."""
        mean = jnp.asarray(mean)
        return cls.create(mean[None], jnp.asarray(cov, mean.dtype)[None])

    @classmethod
    def empirical(cls, points, weights=None):
        """The empirical measure of a finite data set `points [n, d]` (zero covariances)."""
        points = jnp.asarray(points)
        check_array("points", points, rank=2)
        d = points.shape[1]
        return cls.create(points, jnp.zeros((points.shape[0], d, d), points.dtype), weights)

    def sample(self, key, n: int):
        """Draws `[n, d]` samples."""
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
    check_array("x", x, rank=2)
    t = check_time(t, x.shape[0])
    t = jnp.broadcast_to(t, x.shape[:1]).astype(x.dtype)
    return jax.vmap(lambda xi, ti: fn(path, mix, xi, ti))(x, t)


def mixture_velocity(path, mixture: GaussianMixture, x, t):
    """The exact marginal velocity `v*(x, t)` `[B, d]` for an `N(0, I)` source."""

    def one(path, mix, xi, ti):
        resp, ex1, eeps, _, _ = _per_point(path, mix, xi, ti)
        v = path.d_alpha(ti) * ex1 + path.d_sigma_total(ti) * eeps
        return resp @ v

    return _batched(one, path, mixture, x, t)


def mixture_score(path, mixture: GaussianMixture, x, t):
    """The exact score `grad log p_t(x)` `[B, d]`."""

    def one(path, mix, xi, ti):
        resp, _, _, sol, _ = _per_point(path, mix, xi, ti)
        return -(resp @ sol)

    return _batched(one, path, mixture, x, t)


def mixture_log_prob(path, mixture: GaussianMixture, x, t):
    """The exact log-density `log p_t(x)` `[B]`."""

    def one(path, mix, xi, ti):
        return _per_point(path, mix, xi, ti)[-1]

    return _batched(one, path, mixture, x, t)


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
    check_array("x0", x0, rank=2)
    t = check_time(t, x0.shape[0])
    mean = jnp.asarray(mean, x0.dtype)
    cov = jnp.asarray(cov, x0.dtype)
    d = x0.shape[1]
    if mean.shape != (d,) or cov.shape != (d, d):
        raise ValueError(f"`mean` and `cov` must have shapes {(d,)} and {(d, d)}, "
                         f"got {mean.shape} and {cov.shape}.")
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

    Args:
      path: an affine path.
      mean: `[d]`; cov: `[d, d]`.
      x: states at time `r`, `[B, d]`.
      r, t: start and end times (scalars or `[B]`), `r <= t`.

    Returns:
      `[B, d]`.
    """
    check_array("x", x, rank=2)
    mean = jnp.asarray(mean, x.dtype)
    lam, u = jnp.linalg.eigh(jnp.asarray(cov, x.dtype))
    r = jnp.broadcast_to(jnp.asarray(r, x.dtype), x.shape[:1])[:, None]
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])[:, None]

    def var(s):  # eigenvalues of C_s, [B, d]
        return path.alpha(s) ** 2 * lam[None] + path.sigma_total(s) ** 2

    y = (x - path.alpha(r) * mean) @ u  # centred state in the eigenbasis
    jump = path.alpha(t) * mean + (y * jnp.sqrt(var(t) / var(r))) @ u.T
    equal = t == r
    average = (jump - x) / jnp.where(equal, 1.0, t - r)
    d_var = 2 * path.alpha(r) * path.d_alpha(r) * lam[None] \
        + 2 * path.sigma_total(r) * path.d_sigma_total(r)
    velocity = path.d_alpha(r) * mean + (0.5 * d_var / var(r) * y) @ u.T
    return jnp.where(equal, velocity, average)
