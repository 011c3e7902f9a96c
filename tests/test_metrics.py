"""Metrics: exact W2 against brute force and closed forms; path energy and straightness;
Fréchet distance against SciPy and closed forms; KID as the unbiased polynomial MMD."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from flowjax import metrics

KEY = jax.random.key(0)


def test_w2_of_a_translation_is_its_length():
    x = np.random.default_rng(0).normal(size=(300, 2))
    c = np.array([0.3, -0.4])
    assert metrics.w2(x, x + c) == pytest.approx(0.5, rel=1e-9)


def test_w2_equals_brute_force_over_permutations():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 1.0
    best = min(((x[list(p)] - y) ** 2).sum(-1).mean() for p in itertools.permutations(range(7)))
    assert metrics.w2(x, y) == pytest.approx(math.sqrt(best), rel=1e-9)


def test_w2_in_one_dimension_matches_sorting():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(500, 1)), rng.exponential(size=(500, 1))
    expected = np.sqrt(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))
    assert metrics.w2(jnp.asarray(x), jnp.asarray(y)) == pytest.approx(expected, rel=1e-6)


def _quarter_circle(num=1001):
    ts = np.linspace(0.0, 1.0, num)
    traj = np.stack([np.cos(0.5 * np.pi * ts), np.sin(0.5 * np.pi * ts)], -1)[:, None, :]
    vel = 0.5 * np.pi * np.stack([-np.sin(0.5 * np.pi * ts), np.cos(0.5 * np.pi * ts)], -1)
    return jnp.asarray(traj), jnp.asarray(vel[:, None, :]), jnp.asarray(ts)


def test_straightness_and_energy_of_a_quarter_circle():
    """Closed forms: S = pi^2/4 - 2, PE = pi^2/4."""
    traj, vel, ts = _quarter_circle()
    assert metrics.straightness(traj, vel, ts) == pytest.approx(np.pi ** 2 / 4 - 2, rel=1e-4)
    assert metrics.path_energy(vel, ts) == pytest.approx(np.pi ** 2 / 4, rel=1e-6)
    assert metrics.normalized_path_energy(vel, ts, 2.0) == pytest.approx(
        (np.pi ** 2 / 4 - 2) / 2, rel=1e-4)
    # Against a cost above the energy the excess is negative, with the same magnitude formula.
    assert metrics.normalized_path_energy(vel, ts, 4.0) == pytest.approx(
        (np.pi ** 2 / 4 - 4) / 4, rel=1e-4)


def _straight_lines(speed=1.0, num=21):
    """Straight paths x0 -> x0 + speed (x1 - x0) at constant speed, with the exact OT pairs."""
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(64, 2))
    x1 = 3.0 * x0 + np.array([1.0, -2.0])  # a monotone affine map: (x0, x1) is the OT coupling
    ts = np.linspace(0.0, 1.0, num)
    step = speed * (x1 - x0)
    traj = jnp.asarray(x0[None] + ts[:, None, None] * step[None])
    vel = jnp.broadcast_to(jnp.asarray(step), traj.shape)
    return x0, x1, traj, vel, jnp.asarray(ts)


def test_straight_ot_lines_have_path_energy_w2_squared_and_zero_npe():
    """On the straight OT path PE = W2^2 exactly (Benamou-Brenier), so NPE = 0 and S = 0."""
    x0, x1, traj, vel, ts = _straight_lines()
    w2sq = metrics.w2(x0, x1) ** 2
    np.testing.assert_allclose(w2sq, np.mean(np.sum((x1 - x0) ** 2, -1)), rtol=1e-9)
    assert metrics.path_energy(vel, ts) == pytest.approx(w2sq, rel=1e-6)
    assert abs(metrics.normalized_path_energy(vel, ts, w2sq)) < 1e-6
    assert metrics.straightness(traj, vel, ts) < 1e-10


@pytest.mark.parametrize("speed, expected", [(0.5, -0.75), (2.0, 3.0)])
def test_npe_is_signed(speed, expected):
    """A flow run at `speed` times the OT displacement has PE = speed^2 W2^2, NPE = speed^2 - 1:
    negative when it stops short of the target (speed 1/2 reaches half way), positive past it."""
    x0, x1, _, vel, ts = _straight_lines(speed)
    w2sq = metrics.w2(x0, x1) ** 2
    assert metrics.normalized_path_energy(vel, ts, w2sq) == pytest.approx(expected, rel=1e-6)


def test_bad_inputs():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="`x` and `y` must have the same shape"):
        metrics.w2(x, np.zeros((11, 2)))
    with pytest.raises(ValueError, match="`y` contains non-finite"):
        metrics.w2(x, np.full((10, 2), np.nan))
    with pytest.raises(ValueError, match="limited to 4000"):
        metrics.w2(np.zeros((4001, 2)), np.zeros((4001, 2)))
    traj, vel, ts = _quarter_circle(11)
    with pytest.raises(ValueError, match="`velocities` must have shape"):
        metrics.straightness(traj, vel[:5], ts)
    with pytest.raises(ValueError, match="`w2_squared`"):
        metrics.normalized_path_energy(vel, ts, 0.0)


def _gaussian(rng, n, mean, cov):
    return rng.multivariate_normal(mean, cov, size=n)


def test_frechet_distance_equals_the_textbook_formula_and_the_closed_form():
    rng = np.random.default_rng(0)
    a = _gaussian(rng, 3000, [0.0, 1.0, -1.0], [[1.0, 0.3, 0.0], [0.3, 2.0, 0.5], [0.0, 0.5, 0.7]])
    b = _gaussian(rng, 2000, [0.5, 0.0, -1.0], [[0.5, 0.0, 0.1], [0.0, 1.0, 0.0], [0.1, 0.0, 1.5]])
    fd = metrics.frechet_distance(a, b)
    # pytorch-fid's formula with SciPy's general sqrtm of the product.
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = scipy.linalg.sqrtm(ca @ cb).real
    textbook = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca) + np.trace(cb)
                - 2 * np.trace(cross))
    np.testing.assert_allclose(fd, textbook, rtol=1e-8)
    # Commuting (diagonal) covariances: d^2 = |dmu|^2 + sum (sqrt(s_a) - sqrt(s_b))^2.
    sa, sb = np.array([1.0, 4.0]), np.array([0.25, 1.0])
    x = rng.normal(size=(200_000, 2)) * np.sqrt(sa) + [1.0, 0.0]
    y = rng.normal(size=(200_000, 2)) * np.sqrt(sb)
    closed = 1.0 + np.sum((np.sqrt(sa) - np.sqrt(sb)) ** 2)
    np.testing.assert_allclose(metrics.frechet_distance(x, y), closed, rtol=0.02)
    assert metrics.frechet_distance(a, a) < 1e-9


def test_kernel_distance_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 0.5
    # With one subset of all points the estimate is the plain unbiased MMD^2.
    k = lambda p, q: (p @ q.T / 4 + 1.0) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    mmd = ((kaa.sum() - np.trace(kaa)) / (50 * 49) + (kbb.sum() - np.trace(kbb)) / (50 * 49)
           - 2 * kab.mean())
    mean, std = metrics.kernel_distance(a, b, key=KEY, num_subsets=1, subset_size=50)
    np.testing.assert_allclose(mean, mmd, rtol=1e-10)
    assert std == 0.0
    # Unbiased: same-distribution estimates average to 0 within their spread.
    same = [metrics.kernel_distance(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)),
                                    key=KEY, num_subsets=1, subset_size=100)[0]
            for _ in range(200)]
    assert abs(np.mean(same)) < 4 * np.std(same) / np.sqrt(len(same))
    assert metrics.kernel_distance(a, b, key=KEY)[0] > 10 * np.std(same)


def test_feature_distances_reject_bad_inputs():
    a = np.ones((10, 3))
    with pytest.raises(ValueError, match="feats_b"):
        metrics.frechet_distance(a, np.ones((10, 4)))
    with pytest.raises(ValueError, match="feats_a"):
        metrics.frechet_distance(np.ones(10), a)
    with pytest.raises(ValueError, match="feats_b"):
        metrics.kernel_distance(a, np.where(np.eye(10, 3) > 0, np.nan, a), key=KEY)
    with pytest.raises(ValueError, match="num_subsets"):
        metrics.kernel_distance(a, a, key=KEY, num_subsets=0)
    with pytest.raises(TypeError, match="`key` must be a PRNG key"):
        metrics.kernel_distance(a, a, key=0)
    with pytest.raises(TypeError, match="key"):
        metrics.kernel_distance(a, a, seed=0)  # the key convention: no `seed`


def test_kernel_distance_key_fixes_the_subsets():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(60, 3)), rng.normal(size=(60, 3)) + 0.2
    one = metrics.kernel_distance(a, b, key=jax.random.key(3), num_subsets=5, subset_size=20)
    again = metrics.kernel_distance(a, b, key=jax.random.key(3), num_subsets=5, subset_size=20)
    raw = metrics.kernel_distance(a, b, key=jax.random.PRNGKey(3), num_subsets=5,
                                  subset_size=20)
    other = metrics.kernel_distance(a, b, key=jax.random.key(4), num_subsets=5, subset_size=20)
    assert one == again == raw and one != other
