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
- trains an MLP with I-CFM (rectified-flow path, independent pairs) on
  batches drawn with replacement from the N points, with orbax checkpoints
  (a rerun on the same workdir resumes or skips the training);
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
import optax
from tqdm import tqdm

from experiments._workdir import start_run, write_results
from experiments.toy2d.train import TARGETS  # the 2-D samplers, by name
from flowjax import losses, metrics, models, paths, sample, train
from flowjax import time as ftime

DATASETS = ("digits",)  # scikit-learn's 1,797 8x8 digits, 64-D in [-1, 1]
PATH = paths.RectifiedFlow()
T_CLIP = paths.T_CLIP  # as flowjax.analytic: sigma is floored at sigma(1 - T_CLIP) to stay finite
EXACT, NETWORK, HELDOUT, FRESH = ("exact empirical velocity", "network (I-CFM)",
                                  "held-out data", "fresh data")
RESULT_FIELDS = ("train_size", "sampler", "nfe", "train_loss", "heldout_loss", "nn_mean",
                 "nn_median", "copy_fraction", "w2")


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


def make_module(config):
    return models.MLP(hidden=tuple(config.hidden), time_dim=config.time_dim,
                      time_scale=config.time_scale)


def empirical_velocity(points, x, t):
    r"""The exact marginal velocity towards the empirical measure of `points [N, d]`, `[B, d]`.

    For the rectified-flow path :math:`x_t = t x_1 + (1 - t) x_0`, `x0 ~ N(0, I)`,

    .. math:: v(x, t) = \dot\alpha\, m + \dot\sigma\,\frac{x - \alpha m}{\sigma},\qquad
              m = \sum_k \operatorname{softmax}_k\Big(-\frac{\|x - \alpha y_k\|^2}
              {2\sigma^2}\Big) y_k,

    the posterior mean of the conditional velocity (Lipman et al. 2023, Thm. 1):
    :func:`flowjax.analytic.mixture_velocity` of `GaussianMixture.empirical(points)`
    (tested equal), without the per-component Cholesky factors that make that
    general form too slow for 64-D data.
    """
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])[:, None]
    a, da, ds = PATH.alpha(t), PATH.d_alpha(t), PATH.d_sigma_total(t)
    s = jnp.maximum(PATH.sigma_total(t), PATH.sigma_total(jnp.asarray(1.0 - T_CLIP, x.dtype)))
    diff = x[:, None, :] - a[:, :, None] * points[None]  # [B, N, d]
    weights = jax.nn.softmax(-jnp.sum(diff ** 2, -1) / (2 * s ** 2), axis=-1)
    m = weights @ points
    return da * m + ds * (x - a * m) / s


def exact_apply_fn(points, x, t, cond=None):
    """The exact empirical velocity as a model function (the training points are its params)."""
    del cond
    return empirical_velocity(points, x, t)


def _exact_velocity(points, x, t):
    return empirical_velocity(points, x, t)


def _network_fns(hidden, time_dim, time_scale):
    """The model function of an architecture (equal for equal architectures)."""
    module = models.MLP(hidden=hidden, time_dim=time_dim, time_scale=time_scale)
    return models.model_fn(module)


def _fns(config):
    return _network_fns(tuple(config.hidden), config.time_dim, float(config.time_scale))


def _optimizer(config):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.num_train_steps,
        end_value=0.1 * config.learning_rate)
    return optax.adam(schedule)


def train_network(config, workdir, train_points, key, writer):
    """Trains the MLP with I-CFM on `train_points`, resuming from checkpoints; returns the state."""
    n, d = train_points.shape
    apply_fn = _fns(config)
    optimizer = _optimizer(config)
    init_key, state_key, data_key = jax.random.split(key, 3)
    params = jax.jit(make_module(config).init)(init_key, jnp.zeros((1, d)),
                                              jnp.zeros((1,)))["params"]
    state = train.create_train_state(state_key, params, optimizer)
    loss = functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=PATH)
    multi_step = train.make_multi_step(loss, optimizer, ema_decay=config.ema_decay)
    k, b = config.steps_per_call, config.batch_size

    @jax.jit
    def make_batches(call_key):
        k_idx, k_x0 = jax.random.split(call_key)
        idx = jax.random.randint(k_idx, (k, b), 0, n)
        return {"x0": jax.random.normal(k_x0, (k, b, d)), "x1": train_points[idx]}

    ckpt = train.Checkpointer(os.path.join(workdir, "checkpoints", f"n{n}"),
                              save_every=config.checkpoint_every, keep=config.keep_checkpoints)
    try:
        restored = ckpt.restore(state)
        if restored is not None:
            state = restored.state
        start = int(state.step)
        for step in tqdm(range(start, config.num_train_steps, k), desc=f"N={n}", leave=False,
                         dynamic_ncols=True):
            state, m = multi_step(state, make_batches(jax.random.fold_in(data_key, step)))
            writer.write(step + k, jax.tree.map(jnp.mean, m), train_size=n)
            ckpt.save(step + k, state, config=config,
                      force=step + k == config.num_train_steps)
    finally:
        ckpt.close()
    return state


class _AtTime(ftime.AbstractTimeSampler):
    """Every training time at `t`."""

    t: jax.Array

    def _draw(self, key, shape):
        return jnp.full(shape, self.t)


@functools.partial(jax.jit, static_argnames=("apply_fn", "repeats"))
def _loss_at_times(apply_fn, params, points, grid, key, repeats):
    def at(t):
        def once(k):
            return losses.cfm_loss(params, k, {"x1": points}, apply_fn=apply_fn, path=PATH,
                                   time_sampler=_AtTime(t))[0]

        return jnp.mean(jax.lax.map(once, jax.random.split(key, repeats)))

    return jax.lax.map(at, grid)


def loss_vs_t(apply_fn, params, points, key, config):
    """The CFM loss of a field on `points` at the midpoints `t_i` of `loss_bins` bins.

    Returns `(losses [bins], t [bins])`. The same source draws (from `key`)
    for every field and time, so differences are the fields', not Monte Carlo
    noise. The mean over the bins is the loss with t ~ U[0, 1] by the
    midpoint rule; it stays finite for the exact empirical field, whose error
    on held-out points grows like 1 / (1 - t).
    """
    bins = int(config.eval.loss_bins)
    grid = (jnp.arange(bins, dtype=points.dtype) + 0.5) / bins
    out = _loss_at_times(apply_fn, params, points, grid, key, int(config.eval.loss_repeats))
    return np.asarray(out), np.asarray(grid)


@jax.jit
def nearest_distance(points, train_points):
    """Distance of each of `points [M, d]` to its nearest row of `train_points [N, d]`."""
    d2 = jnp.sum((points[:, None, :] - train_points[None, :, :]) ** 2, -1)
    return jnp.sqrt(jnp.min(d2, axis=1))


def _distance_stats(dist, radius):
    dist = np.asarray(dist)
    return {"nn_mean": float(dist.mean()), "nn_median": float(np.median(dist)),
            "copy_fraction": float(np.mean(dist < radius))}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _draw_toy(target: str, n_pool: int, n_heldout: int, n_samples: int, seed):
    """Training pool, held-out, fresh and second fresh points, sources and keys (one compile)."""
    k_data, k_src, k_loss, k_train = jax.random.split(jax.random.PRNGKey(seed), 4)
    points = TARGETS[target](k_data, n_pool + n_heldout + 2 * n_samples)  # independent rows
    pool, heldout, fresh, fresh2 = jnp.split(
        points, np.cumsum([n_pool, n_heldout, n_samples]))
    return (pool, heldout, fresh, fresh2, jax.random.normal(k_src, (n_samples, 2)), k_loss,
            k_train)


def _draw_data(target: str, n_pool: int, n_heldout: int, n_samples: int, seed: int):
    """As `_draw_toy`, or disjoint random subsets of a finite data set (digits, in [-1, 1])."""
    if target not in DATASETS:
        return _draw_toy(target, n_pool, n_heldout, n_samples, seed)
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.float32) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    images = images[np.random.default_rng(seed).permutation(images.shape[0])]
    pool, heldout, fresh, fresh2, _ = np.split(
        images, np.cumsum([n_pool, n_heldout, n_samples, n_samples]))
    _, k_src, k_loss, k_train = jax.random.split(jax.random.PRNGKey(seed), 4)
    x0 = jax.random.normal(k_src, (n_samples, images.shape[1]))
    return (jnp.asarray(pool), jnp.asarray(heldout), jnp.asarray(fresh), jnp.asarray(fresh2),
            x0, k_loss, k_train)


def train_and_evaluate(config, workdir: str):
    """Runs the experiment for every training-set size; returns the result rows."""
    validate_config(config)
    writer = start_run(config, workdir)
    sizes = sorted(int(n) for n in config.train_sizes)
    m = int(config.eval.num_samples)
    pool, heldout, fresh, fresh2, x0, k_loss, k_train = _draw_data(
        config.target, sizes[-1], int(config.num_heldout), m, config.seed)
    w2_floor = metrics.w2(np.asarray(fresh2), np.asarray(fresh))
    apply_fn = _fns(config)
    radius = float(config.eval.copy_radius)

    rows, plot_data = [], {}
    for n in sizes:
        train_points = pool[:n]
        state = train_network(config, workdir, train_points, jax.random.fold_in(k_train, n),
                              writer)
        params = state.ema_params if config.eval.use_ema else state.params
        tolerances = sample.Adaptive(config.eval.rtol, config.eval.atol)
        exact = sample.solve_ode(jax.tree_util.Partial(_exact_velocity, train_points), x0,
                                 adaptive=tolerances)
        net = sample.solve_ode(sample.ModelVelocity(apply_fn, params), x0, adaptive=tolerances)
        curves = {}
        for name, fn, p in ((EXACT, exact_apply_fn, train_points), (NETWORK, apply_fn, params)):
            for split, pts in (("train", train_points), ("heldout", heldout[:n])):
                curves[(name, split)], grid = loss_vs_t(fn, p, pts, k_loss, config)
        for name, sol in ((EXACT, exact), (NETWORK, net)):
            rows.append({"train_size": n, "sampler": name, "nfe": int(sol.nfe),
                         "train_loss": float(curves[(name, "train")].mean()),
                         "heldout_loss": float(curves[(name, "heldout")].mean()),
                         **_distance_stats(nearest_distance(sol.samples, train_points), radius),
                         "w2": metrics.w2(np.asarray(sol.samples), np.asarray(fresh))})
        for name, pts, w2 in ((HELDOUT, heldout, None), (FRESH, fresh2, w2_floor)):
            rows.append({"train_size": n, "sampler": name, "nfe": None, "train_loss": None,
                         "heldout_loss": None,
                         **_distance_stats(nearest_distance(pts, train_points), radius),
                         "w2": w2})
        plot_data[n] = {
            "train": np.asarray(train_points), "heldout": np.asarray(heldout),
            "samples": {EXACT: np.asarray(exact.samples), NETWORK: np.asarray(net.samples)},
            "distances": {name: np.asarray(nearest_distance(pts, train_points)) for name, pts in
                          ((EXACT, exact.samples), (NETWORK, net.samples), (HELDOUT, heldout))},
            "curves": {k: v for k, v in curves.items()}, "grid": grid}
    if not write_results(workdir, rows):
        return rows
    print(format_table(rows))
    if config.plot:
        from experiments.memorization import plots

        if pool.shape[1] == 2:
            plots.plot_samples(os.path.join(workdir, "samples.png"), plot_data)
        else:
            plots.plot_image_pairs(os.path.join(workdir, "samples.png"), plot_data)
        plots.plot_distances(os.path.join(workdir, "nn_distances.png"), plot_data, radius)
        plots.plot_loss_vs_t(os.path.join(workdir, "loss_vs_t.png"), plot_data)
        plots.plot_training(os.path.join(workdir, "loss.png"), writer.read())
    return rows


def format_table(rows) -> str:
    """The results as a Markdown table."""
    head = ("| N | sampler | NFE | train CFM loss | held-out CFM loss | mean NN dist. to train "
            "| median | copies | W2 to fresh data |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]

    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        lines.append(f"| {r['train_size']} | {r['sampler']} | {cell(r['nfe'], 'd')} | "
                     f"{cell(r['train_loss'], '.3f')} | {cell(r['heldout_loss'], '.3f')} | "
                     f"{r['nn_mean']:.3g} | {r['nn_median']:.3g} | "
                     f"{100 * r['copy_fraction']:.1f}% | {cell(r['w2'], '.3f')} |")
    return "\n".join(lines)
