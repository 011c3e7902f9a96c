"""Plots for the toy2d experiment: sample grid, trajectories, loss curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_samples(filename, samples, x_test):
    """Grid: one row per (source, method), one column per solver, plus the test set.

    Methods with different solvers (Euler steps, flow-map jumps) share the
    grid; a solver a method lacks leaves its cell empty.
    """
    keys = list(samples)
    solvers = list(dict.fromkeys(s for key in keys for s in samples[key]))
    fig, axes = plt.subplots(len(keys), len(solvers) + 1, squeeze=False,
                             figsize=(2.2 * (len(solvers) + 1), 2.2 * len(keys)))
    lim = np.abs(x_test).max() * 1.4
    for i, key in enumerate(keys):
        for j, solver in enumerate(solvers + ["data"]):
            ax = axes[i, j]
            if i == 0:
                ax.set_title(solver, fontsize=9)
            if solver != "data" and solver not in samples[key]:
                ax.axis("off")
                continue
            pts = x_test if solver == "data" else samples[key][solver]
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5,
                       color="gray" if solver == "data" else "C0")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{key[0]}\n{key[1]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def plot_trajectories(filename, trajectories, num_paths: int = 200):
    """Adaptive-solver trajectories, coloured by time, from source points (black) to samples."""
    from matplotlib.collections import LineCollection

    keys = list(trajectories)
    fig, axes = plt.subplots(1, len(keys), squeeze=False, figsize=(3.4 * len(keys) + 0.8, 3.4))
    norm = plt.Normalize(0.0, 1.0)
    for ax, key in zip(axes[0], keys):
        traj = np.asarray(trajectories[key])[:, :num_paths]  # [T, N, 2]
        t = np.linspace(0.0, 1.0, traj.shape[0])
        segments = np.stack([traj[:-1], traj[1:]], axis=2).transpose(1, 0, 2, 3).reshape(-1, 2, 2)
        lines = LineCollection(segments, cmap="viridis", norm=norm, linewidths=0.8, alpha=0.7)
        lines.set_array(np.tile(0.5 * (t[:-1] + t[1:]), traj.shape[1]))
        ax.add_collection(lines)
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=4, color="black", label="source (t = 0)")
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=4, color="C3", label="sample (t = 1)")
        ax.autoscale()
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=7, loc="lower left", markerscale=2)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=list(axes[0]),
                 label="t", fraction=0.03, pad=0.02)
    fig.savefig(filename, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_losses(filename, records, loss_names=None):
    """Training loss against step, one curve per (source, method), labelled with its loss."""
    loss_names = loss_names or {}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    runs = {}
    for r in records:
        runs.setdefault((r.get("source"), r.get("method")), []).append((r["step"], r["loss"]))
    positive = True
    for (source, method), pts in sorted(runs.items()):
        pts = sorted(dict(pts).items())  # a resumed run may log a step twice
        positive &= all(p[1] > 0 for p in pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", ms=3,
                label=f"{source}: {method} ({loss_names.get(method, 'loss')})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (each method's own)")
    if positive:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)
