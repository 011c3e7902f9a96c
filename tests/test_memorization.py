"""The memorization experiment end to end (tiny config): the exact empirical velocity copies
the training points, the network does not; the run files; a rerun resumes."""

import json
import os

import jax
import numpy as np
import pytest

from experiments.memorization import train as memorization
from experiments.memorization.configs import tiny
from flowjax import analytic, paths


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("memorization"))
    config = tiny.get_config()
    return config, workdir, memorization.train_and_evaluate(config, workdir)


@pytest.mark.slow
@pytest.mark.xdist_group("memorization_run")  # one worker: the run is made once
def test_exact_velocity_copies_and_network_generalizes(tiny_run):
    config, _, rows = tiny_run
    by = {r["sampler"]: r for r in rows}
    exact, net = by[memorization.EXACT], by[memorization.NETWORK]
    held, fresh = by[memorization.HELDOUT], by[memorization.FRESH]
    # The flow of the empirical measure's velocity ends on the training points.
    assert exact["copy_fraction"] == 1.0 and exact["nn_mean"] < 1e-3
    # Held-out and fresh data sit well away from the training points, and so do the
    # network's samples (none is a copy).
    assert held["nn_mean"] > 0.1 and fresh["nn_mean"] > 0.1
    assert net["copy_fraction"] == 0.0 and net["nn_mean"] > 0.5 * held["nn_mean"]
    # The exact field minimizes the training CFM loss; it is worse on held-out points.
    assert exact["train_loss"] < net["train_loss"]
    assert exact["heldout_loss"] > exact["train_loss"] + 1.0
    assert exact["nfe"] > 0 and net["nfe"] > 0 and fresh["w2"] > 0
    assert len(rows) == 4 * len(config.train_sizes)


@pytest.mark.slow
@pytest.mark.xdist_group("memorization_run")  # one worker: the run is made once
def test_run_files_and_resume(tiny_run):
    config, workdir, rows = tiny_run
    for name in ("config.json", "metrics.jsonl", "results.json", "samples.png",
                 "nn_distances.png", "loss_vs_t.png", "loss.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == rows
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        before = f.read()
    assert len(before.splitlines()) == config.num_train_steps // config.steps_per_call
    again = memorization.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert f.read() == before  # nothing was trained again
    assert [r["nn_mean"] for r in again] == [r["nn_mean"] for r in rows]


def test_config_checks():
    config = tiny.get_config()
    config.target = "spiral"
    with pytest.raises(ValueError, match="config.target"):
        memorization.validate_config(config)
    config = tiny.get_config()
    config.train_sizes = (1,)
    with pytest.raises(ValueError, match="train_sizes"):
        memorization.validate_config(config)


def test_empirical_velocity_is_the_analytic_one(x64):
    """The experiment's closed form is flowjax.analytic's velocity of the empirical measure,
    up to the floored noise scale at t = 1."""
    points = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
    mixture = analytic.GaussianMixture.empirical(points)
    both = jax.jit(lambda t: (memorization.empirical_velocity(points, x, t),
                              analytic.mixture_velocity(paths.RectifiedFlow(), mixture, x, t)))
    for t in (0.0, 0.3, 0.9, 1.0 - 1e-6, 1.0):
        ours, reference = both(t)
        np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9, err_msg=f"t={t}")
