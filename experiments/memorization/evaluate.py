"""The memorization experiment's measurements: CFM loss against t, nearest-neighbour distances.

Both fields are scored the same way: the CFM loss on training and held-out
points at the midpoints of `config.eval.loss_bins` bins of t (the same
source draws for every field and time), the distance of every sample to its
nearest training point and the fraction of copies (closer than
`config.eval.copy_radius`), and the exact W2 of the samples to fresh data.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.memorization.methods import PATH
from flowjax import losses, metrics
from flowjax import time as ftime

EXACT, NETWORK, HELDOUT, FRESH = ("exact empirical velocity", "network (I-CFM)",
                                  "held-out data", "fresh data")
RESULT_FIELDS = ("train_size", "sampler", "nfe", "train_loss", "heldout_loss", "nn_mean",
                 "nn_median", "copy_fraction", "w2")


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


def distance_stats(dist, radius):
    dist = np.asarray(dist)
    return {"nn_mean": float(dist.mean()), "nn_median": float(np.median(dist)),
            "copy_fraction": float(np.mean(dist < radius))}


def field_row(n, name, sol, curves, train_points, fresh, radius):
    """The row of one field's samples (`sol`) at training-set size `n`."""
    return {"train_size": n, "sampler": name, "nfe": int(sol.nfe),
            "train_loss": float(curves[(name, "train")].mean()),
            "heldout_loss": float(curves[(name, "heldout")].mean()),
            **distance_stats(nearest_distance(sol.samples, train_points), radius),
            "w2": metrics.w2(np.asarray(sol.samples), np.asarray(fresh))}


def data_row(n, name, points, train_points, radius, w2):
    """The row of data points (held-out or fresh): distances only, no loss or NFE."""
    return {"train_size": n, "sampler": name, "nfe": None, "train_loss": None,
            "heldout_loss": None, **distance_stats(nearest_distance(points, train_points), radius),
            "w2": w2}


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
