r"""Distances between sets of features: the Fréchet distance (FID's formula) and KID.

Both compare two samples of feature vectors `[n, F]`, e.g. a classifier's
penultimate layer (offline) or Inception-v3's pool features (true FID/KID).
They run on the host in float64 NumPy: evaluation, not training.
"""

from __future__ import annotations

import jax
import numpy as np

from flowjax._checks import check_host_array, check_key, check_number
from flowjax._types import ArrayLike, KeyArray


def _feature_pair(feats_a, feats_b):
    """Both feature sets as float64 host arrays `[n, F]` (n >= 2, finite, equal F)."""
    a = check_host_array("feats_a", feats_a, rank=2, min_points=2)
    b = check_host_array("feats_b", feats_b, rank=2, min_points=2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"`feats_a` and `feats_b` must have the same feature size, "
                         f"got {a.shape[1]} and {b.shape[1]}.")
    return a, b


def _psd_sqrt(m):
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    r"""The Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

    .. math:: d^2 = \|\mu_a - \mu_b\|^2 + \mathrm{tr}\big(\Sigma_a + \Sigma_b
              - 2 (\Sigma_a^{1/2} \Sigma_b \Sigma_a^{1/2})^{1/2}\big)

    (Heusel et al. 2017). The symmetric form of the cross term, with
    eigendecompositions, avoids the complex parts a general `sqrtm` of
    :math:`\Sigma_a\Sigma_b` can return. Covariances are unbiased (`n - 1`).
    The estimate is biased upwards at finite `n`: compare figures at equal `n`.

    Args:
      feats_a: `[n_a, F]` features.
      feats_b: `[n_b, F]` features.

    Returns:
      :math:`d^2` (what FID reports), a Python float.
    """
    a, b = _feature_pair(feats_a, feats_b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    root_a = _psd_sqrt(np.atleast_2d(cov_a))
    cross = _psd_sqrt(root_a @ np.atleast_2d(cov_b) @ root_a)
    d2 = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(cross)
    return float(max(d2, 0.0))


def kernel_distance(feats_a: ArrayLike, feats_b: ArrayLike, *, key: KeyArray,
                    num_subsets: int = 100, subset_size: int = 1000) -> tuple[float, float]:
    r"""The kernel (Inception) distance, KID: an unbiased MMD² with a cubic polynomial kernel.

    .. math:: k(x, y) = (x^\top y / F + 1)^3,

    averaged over `num_subsets` random subsets of `min(subset_size, n_a, n_b)`
    points a side, as Bińkowski et al. (2018) and `torch-fidelity` do.
    Unbiased: its expectation is 0 when both sets come from one distribution,
    so a single estimate can be negative.

    Args:
      feats_a: `[n_a, F]` features.
      feats_b: `[n_b, F]` features.
      key: a PRNG key (`jax.random.key(0)`) for the subset draws, made on the host
        with NumPy; the same key gives the same figure.
      num_subsets: number of subsets averaged.
      subset_size: points per subset (capped by the smaller set).

    Returns:
      `(mean, std)` of the subset estimates.
    """
    a, b = _feature_pair(feats_a, feats_b)
    rng = _host_rng(check_key("key", key))
    check_number("num_subsets", num_subsets, low=1, integer=True)
    check_number("subset_size", subset_size, low=2, integer=True)
    m = min(subset_size, a.shape[0], b.shape[0])
    dim = a.shape[1]
    estimates = []
    for _ in range(num_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / dim + 1.0) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = m * (m - 1)
        estimates.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                         - 2.0 * kxy.mean())
    return float(np.mean(estimates)), float(np.std(estimates))


def _host_rng(key):
    """A NumPy generator seeded by the words of a JAX key (this metric draws on the host)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel())
