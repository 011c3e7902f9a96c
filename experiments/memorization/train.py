"""Memorization: the exact empirical-data velocity against a trained network on a small data set.

For a finite training set :math:`\\{y_k\\}_{k=1}^N`, the minimizer of the
conditional flow-matching loss over all functions is the exact marginal
velocity of the empirical measure (Lipman et al. 2023, Thm. 1 with a
mixture of Dirac masses; `flowjax.analytic`). Its flow reproduces the
training points: every sample lands on some :math:`y_k`. A network trained
on the same loss does not reach that minimizer; its samples fall between and
around the training points instead, at distances comparable to those of fresh
data (the "bless of neural fitting error" of the flow-matching tutorials; see
also Kadkhodaie et al. 2024 and Gu et al. 2023 on memorization in diffusion).

`train_and_evaluate(config, workdir)`, for each training-set size N:

- draws N training points of a 2-D target (nested: the sizes share a
  prefix), `num_heldout` held-out points and `num_samples` fresh points; for
  `digits`, disjoint random subsets of scikit-learn's 1,797 8x8 digits;
- trains an MLP with I-CFM (rectified-flow path, independent pairs;
  `methods.network`) on batches drawn with replacement from the N points,
  through `experiments._loop.train_loop` (orbax checkpoints under
  `workdir/checkpoints/n<N>`: a rerun on the same workdir resumes or skips
  the training);
- samples both fields with Dopri5 from the same sources;
- reports the CFM loss of both fields on the N training points and on N
  held-out points (the same loss, times on a midpoint grid of t, the same
  source draws), the distance of every sample, held-out point and fresh
  point to its nearest training point, the fraction of copies (closer than
  `copy_radius`), and the exact W2 of the samples to fresh data.

Writes `config.json`, `metrics.jsonl`, `results.json`, `samples.png`,
`nn_distances.png`, `loss_vs_t.png`, `loss.png` and the checkpoints.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments._loop import (
    eval_params,
    evaluating,
    named_key,
    results_in,
    root_key,
    train_loop,
)
from experiments._workdir import start_run, write_results
from experiments.memorization import evaluate, methods
from experiments.memorization.evaluate import EXACT, FRESH, HELDOUT, NETWORK
from experiments.memorization.methods import empirical_velocity, exact_apply_fn
from experiments.toy2d.train import TARGETS  # the 2-D samplers, by name
from flowjax import metrics, sample

DATASETS = ("digits",)  # scikit-learn's 1,797 8x8 digits, 64-D in [-1, 1]
__all__ = ["EXACT", "FRESH", "HELDOUT", "NETWORK", "empirical_velocity", "exact_apply_fn",
           "train_and_evaluate", "train_network", "validate_config"]


def validate_config(config):
    """Checks names and sizes in the config; raises ValueError naming the field."""
    if config.target not in TARGETS and config.target not in DATASETS:
        raise ValueError(f"config.target: unknown target {config.target!r}; "
                         f"choose from {tuple(TARGETS) + DATASETS}.")
    sizes = tuple(config.train_sizes)
    if not sizes or any(int(n) < 2 for n in sizes):
        raise ValueError(f"config.train_sizes must be integers >= 2, got {sizes}.")
    for field in ("num_heldout", "num_train_steps", "batch_size", "steps_per_call",
                  "checkpoint_every", "keep_checkpoints"):
        if int(config[field]) < 1:
            raise ValueError(f"config.{field} must be a positive integer, got {config[field]}.")
    if config.num_train_steps % config.steps_per_call:
        raise ValueError("config.num_train_steps must be a multiple of config.steps_per_call.")
    if config.checkpoint_every % config.steps_per_call:
        raise ValueError("config.checkpoint_every must be a multiple of config.steps_per_call.")
    n = int(config.eval.num_samples)
    if not 1 < n <= metrics.MAX_W2_POINTS:
        raise ValueError(f"config.eval.num_samples must lie in [2, {metrics.MAX_W2_POINTS}].")
    if config.target == "digits":
        need = max(sizes) + int(config.num_heldout) + 2 * n
        if need > 1797:
            raise ValueError(f"digits has 1,797 images; max(config.train_sizes) + num_heldout + "
                             f"2 * eval.num_samples = {need}.")
    for field in ("loss_bins", "loss_repeats"):
        if int(config.eval[field]) < 1:
            raise ValueError(f"config.eval.{field} must be a positive integer.")
    if not config.eval.copy_radius > 0:
        raise ValueError("config.eval.copy_radius must be positive.")


def train_network(config, workdir, method, train_points, writer=None):
    """Trains `method` (the MLP) on `train_points [N, d]`, resuming from checkpoints; the state."""
    n = train_points.shape[0]
    key = named_key(root_key(config), "train", f"n{n}")
    batches = methods.point_batches(config, train_points, named_key(key, "data"))
    return train_loop(method, batches, key, config, workdir, name=f"n{n}",
                      tags={"train_size": n}, writer=writer).state


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _draw_toy(target: str, n_pool: int, n_heldout: int, n_samples: int, key):
    """Training pool, held-out, fresh and second fresh points of a 2-D target (one compile)."""
    points = TARGETS[target](key, n_pool + n_heldout + 2 * n_samples)  # independent rows
    return tuple(jnp.split(points, np.cumsum([n_pool, n_heldout, n_samples])))


def draw_data(config, n_pool: int, n_samples: int):
    """`(pool, heldout, fresh, fresh2)`: a 2-D target's draws from the key named "data", or
    disjoint random subsets of a finite data set (digits, in [-1, 1], shuffled by the seed)."""
    if config.target not in DATASETS:
        return _draw_toy(config.target, n_pool, int(config.num_heldout), n_samples,
                         named_key(root_key(config), "data"))
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.float32) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    images = images[np.random.default_rng(config.seed).permutation(images.shape[0])]
    parts = np.split(images, np.cumsum([n_pool, int(config.num_heldout), n_samples, n_samples]))
    return tuple(jnp.asarray(p) for p in parts[:4])


def train_and_evaluate(config, workdir: str):
    """Runs the experiment for every training-set size; returns the result rows."""
    validate_config(config)
    writer = start_run(config, workdir)
    sizes = sorted(int(n) for n in config.train_sizes)
    m = int(config.eval.num_samples)
    pool, heldout, fresh, fresh2 = draw_data(config, sizes[-1], m)
    key = named_key(root_key(config), "eval")
    x0 = jax.random.normal(named_key(key, "x0"), (m, pool.shape[1]))
    k_loss = named_key(key, "loss")
    w2_floor = metrics.w2(np.asarray(fresh2), np.asarray(fresh))
    method = methods.network(config, pool.shape[1])  # one object: one compiled step for all N
    radius, tolerances = float(config.eval.copy_radius), sample.Adaptive(config.eval.rtol,
                                                                         config.eval.atol)
    rows, plot_data = [], {}
    for n in sizes:
        train_points = pool[:n]
        state = train_network(config, workdir, method, train_points, writer)
        params = eval_params(state, config.eval.use_ema)
        evaluating(f"n{n}", "Dopri5 samples of both fields")
        exact = sample.solve_ode(jax.tree_util.Partial(empirical_velocity, train_points), x0,
                                 adaptive=tolerances)
        net = sample.solve_ode(sample.ModelVelocity(method.apply_fn, params), x0,
                               adaptive=tolerances)
        evaluating(f"n{n}", "CFM loss against t on training and held-out points")
        curves = {}
        for name, fn, p in ((EXACT, exact_apply_fn, train_points),
                            (NETWORK, method.apply_fn, params)):
            for split, pts in (("train", train_points), ("heldout", heldout[:n])):
                curves[(name, split)], grid = evaluate.loss_vs_t(fn, p, pts, k_loss, config)
        evaluating(f"n{n}", "nearest-neighbour distances and W2")
        rows += [evaluate.field_row(n, name, sol, curves, train_points, fresh, radius)
                 for name, sol in ((EXACT, exact), (NETWORK, net))]
        rows += [evaluate.data_row(n, name, pts, train_points, radius, w2)
                 for name, pts, w2 in ((HELDOUT, heldout, None), (FRESH, fresh2, w2_floor))]
        plot_data[n] = {
            "train": np.asarray(train_points), "heldout": np.asarray(heldout),
            "samples": {EXACT: np.asarray(exact.samples), NETWORK: np.asarray(net.samples)},
            "distances": {name: np.asarray(evaluate.nearest_distance(pts, train_points))
                          for name, pts in ((EXACT, exact.samples), (NETWORK, net.samples),
                                            (HELDOUT, heldout))},
            "curves": dict(curves), "grid": grid}
    if not write_results(workdir, rows):
        return rows
    print(evaluate.format_table(rows))
    if config.plot:
        from experiments.memorization import plots

        if pool.shape[1] == 2:
            plots.plot_samples(os.path.join(workdir, "samples.png"), plot_data)
        else:
            plots.plot_image_pairs(os.path.join(workdir, "samples.png"), plot_data)
        plots.plot_distances(os.path.join(workdir, "nn_distances.png"), plot_data, radius)
        plots.plot_loss_vs_t(os.path.join(workdir, "loss_vs_t.png"), plot_data)
        plots.plot_training(os.path.join(workdir, "loss.png"), writer.read(), method.loss_name)
    results_in(workdir)
    return rows
