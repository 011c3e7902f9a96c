"""Metrics: exact W2 against brute force and closed forms; path energy and straightness."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import metrics


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


def test_straight_lines_have_zero_straightness_and_npe():
    rng = np.random.default_rng(3)
    x0, x1 = rng.normal(size=(64, 2)), rng.normal(size=(64, 2)) + 3.0
    ts = np.linspace(0.0, 1.0, 21)
    traj = jnp.asarray(x0[None] + ts[:, None, None] * (x1 - x0)[None])
    vel = jnp.broadcast_to(jnp.asarray(x1 - x0), traj.shape)
    assert metrics.straightness(traj, vel, jnp.asarray(ts)) < 1e-10
    w2sq = float(np.mean(np.sum((x1 - x0) ** 2, -1)))
    assert metrics.normalized_path_energy(vel, jnp.asarray(ts), w2sq) < 1e-6


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
