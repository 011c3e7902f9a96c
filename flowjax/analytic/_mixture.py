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

Near t = 1 with a singular covariance (the empirical measure) the fields are
truly singular (the velocity grows like 1/(1 - t)); to stay finite, the noise
level in that component's :math:`C_k` is floored at
:math:`\bar\sigma(1 - t_{clip}) - \bar\sigma(1)` (`t_clip` is
:data:`flowjax.paths.T_CLIP`), which changes nothing for t <= 1 - t_clip. A
component whose covariance is nonsingular (smallest eigenvalue above
:math:`\sqrt{\epsilon}` times the largest, in the dtype's epsilon) keeps its exact
:math:`C_k` up to t = 1, where :math:`C_k = \alpha^2\Sigma_k + \bar\sigma(1)^2 I`
is invertible.

Covariances and weights are checked when a mixture is built: shapes at trace
time; finiteness, symmetry, positive semi-definiteness and the weights' signs
by compiled checks (:mod:`flowjax._checks`), so no array is copied to the host.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flowjax import _pytree as struct

from flowjax._checks import (as_real_array, check_array, check_finite, check_instance,
                             check_key, check_number, check_path, check_time, error_if)
from flowjax._types import Array, ArrayLike, Batch, BatchTimes, KeyArray, Times
from flowjax.paths import T_CLIP
from flowjax.paths._paths import AffinePath, checked_times


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


def _check_covariances(name, covs, shape=None):
    """`covs [..., d, d]` (of `shape`, when given) with compiled checks: finite, symmetric,
    positive semi-definite."""
    if shape is not None and covs.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {tuple(covs.shape)}.")
    covs = check_finite(name, covs)
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(covs), initial=0.0))
    sym = (covs + jnp.swapaxes(covs, -1, -2)) / 2
    covs = error_if(covs, jnp.max(jnp.abs(covs - sym), initial=0.0) > 1e-6 * scale,
                    f"`{name}` must be symmetric.")
    return error_if(covs, jnp.min(jnp.linalg.eigvalsh(sym), initial=0.0) < -1e-6 * scale,
                    f"`{name}` must be positive semi-definite.")


def _check_gaussian(mean, cov, d=None, dtype=None):
    """`mean: [d]`, `cov: [d, d]` (finite, symmetric PSD) as arrays of `dtype`.

    `d` and `dtype` default to those of `mean`.
    """
    mean = _float_array("mean", mean, dtype)
    if d is None and mean.ndim != 1:
        raise ValueError(f"`mean` must have shape [d], got {tuple(mean.shape)}.")
    d, dtype = mean.shape[0] if d is None else d, mean.dtype
    cov = _float_array("cov", cov, dtype)
    if mean.shape != (d,) or cov.shape != (d, d):
        raise ValueError(f"`mean` and `cov` must have shapes {(d,)} and {(d, d)}, "
                         f"got {mean.shape} and {cov.shape}.")
    return check_finite("mean", mean), _check_covariances("cov", cov)


def _check_gaussian_call(path, mean, cov, x, name, **times):
    """The checks of the Gaussian flow maps: `(x, mean, cov, *times)`, the times `[B]` or scalar."""
    check_path("path", path)
    x = _check_points(name, x)
    mean, cov = _check_gaussian(mean, cov, x.shape[1], x.dtype)
    return (x, mean, cov, *(check_time(t, x.shape[0], name=n) for n, t in times.items()))


def _check_draw(key, n):
    check_key("key", key)
    check_number("n", n, low=1, integer=True)


def _check_points(name, x, d=None):
    """`x [n, d]` (a floating array, finite by a compiled check)."""
    check_array(name, x, rank=2)
    if d is not None and x.shape[1] != d:
        raise ValueError(f"`{name}` has {x.shape[1]} columns but the `mixture` has dimension "
                         f"{d}.")
    return check_finite(name, x)


def _check_weights(weights, k, dtype):
    """`weights [K]` (>= 0, positive total; uniform when None), normalised to sum to 1."""
    if weights is None:
        return jnp.full((k,), 1.0 / k, dtype)
    weights = check_finite("weights", _float_array("weights", weights, dtype))
    if weights.shape != (k,):
        raise ValueError(f"`weights` must have shape {(k,)}, got {tuple(weights.shape)}.")
    weights = error_if(weights, jnp.any(weights < 0) | ~(jnp.sum(weights) > 0),
                       "`weights` must be >= 0 with a positive total.")
    return weights / jnp.sum(weights)


def _singular(covs):
    """`[K]` bool: covariances whose smallest eigenvalue is below sqrt(eps) times the largest."""
    lam = jnp.linalg.eigvalsh(covs)
    return lam[..., 0] <= jnp.sqrt(jnp.finfo(covs.dtype).eps) * jnp.maximum(lam[..., -1], 0.0)


def _noise_floor(path, singular, dtype):
    """The floor of the noise level near t = 1: what a vanishing level reaches T_CLIP before
    the end, for singular covariances only (0 elsewhere: their C is invertible at t = 1)."""
    ends = path.sigma_total(jnp.asarray([1.0 - T_CLIP, 1.0], dtype))
    return jnp.where(singular, jnp.maximum(ends[0] - ends[1], 0.0), 0.0)


@struct.dataclass
class GaussianMixture:
    """A Gaussian mixture: `means [K, d]`, `covs [K, d, d]`, `weights [K]` (summing to 1)."""

    means: jax.Array
    covs: jax.Array
    weights: jax.Array

    @classmethod
    def create(cls, means: ArrayLike, covs: ArrayLike,
               weights: ArrayLike | None = None) -> GaussianMixture:
        """A checked, normalised mixture.

        Args:
          means: `[K, d]` component means.
          covs: `[K, d, d]` covariances (symmetric positive semi-definite).
          weights: `[K]` weights (>= 0, any positive total); uniform by default.

        Returns:
          The mixture, its weights normalised to sum to 1.
        """
        means = _check_points("means", _float_array("means", means))
        k, d = means.shape
        covs = _check_covariances("covs", _float_array("covs", covs, means.dtype), (k, d, d))
        return cls(means, covs, _check_weights(weights, k, means.dtype))

    @classmethod
    def gaussian(cls, mean: ArrayLike, cov: ArrayLike) -> GaussianMixture:
        """A single Gaussian `N(mean [d], cov [d, d])`."""
        mean, cov = _check_gaussian(mean, cov)
        return cls.create(mean[None], cov[None])

    @classmethod
    def empirical(cls, points: ArrayLike, weights: ArrayLike | None = None) -> GaussianMixture:
        """The empirical measure of a finite data set `points [n, d]` (zero covariances)."""
        points = _check_points("points", _float_array("points", points))
        d = points.shape[1]
        return cls.create(points, jnp.zeros((points.shape[0], d, d), points.dtype), weights)

    def sample(self, key: KeyArray, n: int) -> Array:
        """Draws `[n, d]` samples."""
        _check_draw(key, n)
        kc, kz = jax.random.split(key)
        comp = jax.random.choice(kc, self.weights.shape[0], (n,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(kz, (n, self.means.shape[1]), self.means.dtype)
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)


def _per_point(path, mix, floor, x, t):
    """Responsibilities, E[x1|x,k], E[eps|x,k], C_k^{-1}(x - a mu_k) and log p for one x.

    `floor [K]` is each component's floor of the noise level (see :func:`_noise_floor`).
    """
    a = path.alpha(t)
    s = jnp.maximum(path.sigma_total(t), floor)  # [K]
    d = x.shape[-1]
    cov = a ** 2 * mix.covs + (s ** 2)[:, None, None] * jnp.eye(d, dtype=x.dtype)
    chol = jnp.linalg.cholesky(cov)
    diff = x[None, :] - a * mix.means
    sol = jax.vmap(lambda c, r: jax.scipy.linalg.cho_solve((c, True), r))(chol, diff)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
    logn = -0.5 * (jnp.sum(diff * sol, -1) + logdet + d * jnp.log(2.0 * jnp.pi))
    logits = jnp.log(mix.weights) + logn
    resp = jax.nn.softmax(logits)
    ex1 = mix.means + a * jnp.einsum("kij,kj->ki", mix.covs, sol)
    eeps = s[:, None] * sol
    return resp, ex1, eeps, sol, jax.scipy.special.logsumexp(logits)


def _batched(fn, path, mix, x, t):
    check_path("path", path)
    check_instance("mixture", mix, GaussianMixture,
                   "an analytic.GaussianMixture (e.g. GaussianMixture.create(means, covs))")
    x = _check_points("x", x, mix.means.shape[1])
    t = check_time(t, x.shape[0])
    t = jnp.broadcast_to(t, x.shape[:1]).astype(x.dtype)
    return _vmapped(fn, path, mix, x, t)


@functools.partial(jax.jit, static_argnums=0)
def _vmapped(fn, path, mix, x, t):
    """`fn` over the batch, as one compiled program: called eagerly (as in tests and
    notebooks), a call compiles one program instead of dispatching every operation."""
    floor = _noise_floor(path, _singular(mix.covs), x.dtype)
    with checked_times():  # `t` was checked by the caller
        return jax.vmap(lambda xi, ti: fn(path, mix, floor, xi, ti))(x, t)


def _velocity_one(path, mix, floor, x, t):
    resp, ex1, eeps, _, _ = _per_point(path, mix, floor, x, t)
    v = path.d_alpha(t) * ex1 + path.d_sigma_total(t) * eeps
    return resp @ v


def _score_one(path, mix, floor, x, t):
    resp, _, _, sol, _ = _per_point(path, mix, floor, x, t)
    return -(resp @ sol)


def _log_prob_one(path, mix, floor, x, t):
    return _per_point(path, mix, floor, x, t)[-1]


def mixture_velocity(path: AffinePath, mixture: GaussianMixture, x: Batch, t: Times) -> Batch:
    """The exact marginal velocity `v*(x, t)` `[B, d]` for an `N(0, I)` source.

    Args:
      path: an affine path.
      mixture: the data distribution.
      x: points `[B, d]`.
      t: a scalar or `[B]` time in [0, 1].

    Returns:
      `[B, d]`.
    """
    return _batched(_velocity_one, path, mixture, x, t)


def mixture_score(path: AffinePath, mixture: GaussianMixture, x: Batch, t: Times) -> Batch:
    """The exact score `grad log p_t(x)` `[B, d]` (arguments as :func:`mixture_velocity`)."""
    return _batched(_score_one, path, mixture, x, t)


def mixture_log_prob(path: AffinePath, mixture: GaussianMixture, x: Batch,
                     t: Times) -> BatchTimes:
    """The exact log-density `log p_t(x)` `[B]` (arguments as :func:`mixture_velocity`)."""
    return _batched(_log_prob_one, path, mixture, x, t)


def gaussian_flow_map(path: AffinePath, mean: ArrayLike, cov: ArrayLike, x0: Batch,
                      t: Times) -> Batch:
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
    x0, mean, cov, t = _check_gaussian_call(path, mean, cov, x0, "x0", t=t)
    lam, u = jnp.linalg.eigh(cov)
    t = jnp.broadcast_to(t, x0.shape[:1]).astype(x0.dtype)
    a = path.alpha(t)[:, None]
    s2 = path.sigma_total(t)[:, None] ** 2
    root = jnp.sqrt(jnp.maximum(a ** 2 * lam[None] + s2, 0.0))  # [B, d] in the eigenbasis
    return a * mean + ((x0 @ u) * root) @ u.T


def gaussian_average_velocity(path: AffinePath, mean: ArrayLike, cov: ArrayLike, x: Batch,
                              r: Times, t: Times) -> Batch:
    r"""The exact average velocity (flow map) from `N(0, I)` to `N(mean, cov)`: MeanFlow's target.

    With :math:`\psi` from :func:`gaussian_flow_map`, the map from time `r`
    to time `t` is :math:`\Phi_{r\to t}(x) = \alpha_t\mu + C_t^{1/2}C_r^{-1/2}(x - \alpha_r\mu)`
    and the average velocity :math:`u(x, r, t) = (\Phi_{r\to t}(x) - x)/(t - r)`;
    at `r = t` it is the marginal velocity
    :math:`\dot\alpha\mu + \tfrac12\dot C_t C_t^{-1}(x - \alpha\mu)`.
    Smooth in `(x, r, t)`, so `jax.jvp` through it is exact.

    At the data end a singular `cov` makes :math:`C_t` singular (the velocity
    off the support grows like :math:`1/(1 - t)`, and is 0/0 at t = 1): as for
    the mixture fields, the noise level in :math:`C` is then floored at
    :math:`\bar\sigma(1 - t_{clip}) - \bar\sigma(1)`, which changes nothing for
    `r, t <= 1 - t_clip` and keeps the field finite up to t = 1; a nonsingular
    `cov` is exact up to t = 1.

    Args:
      path: an affine path.
      mean: `[d]`, the target's mean.
      cov: `[d, d]`, the target's covariance.
      x: states at time `r`, `[B, d]`.
      r: start times (a scalar or `[B]`), `r <= t`.
      t: end times (a scalar or `[B]`).

    Returns:
      `[B, d]`.
    """
    x, mean, cov, r, t = _check_gaussian_call(path, mean, cov, x, "x", r=r, t=t)
    r = error_if(r, jnp.any(r > t), "`r` must not exceed `t`.")
    lam, u = jnp.linalg.eigh(cov)
    lam = jnp.maximum(lam, 0.0)  # PSD; rounding can leave -1e-8 for a singular cov
    r = jnp.broadcast_to(r.astype(x.dtype), x.shape[:1])[:, None]
    t = jnp.broadcast_to(t.astype(x.dtype), x.shape[:1])[:, None]
    floor = _noise_floor(path, _singular(cov), x.dtype)

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
