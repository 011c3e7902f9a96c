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


def plot_trajectories(filename, trajectories, num_paths: int = 300):
    """Adaptive-solver trajectories from source (black) to samples (blue)."""
    keys = list(trajectories)
    fig, axes = plt.subplots(1, len(keys), squeeze=False, figsize=(3.2 * len(keys), 3.2))
    for ax, key in zip(axes[0], keys):
        traj = trajectories[key][:, :num_paths]
        ax.plot(traj[:, :, 0], traj[:, :, 1], color="olive", alpha=0.15, lw=0.6)
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=2, color="black")
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=2, color="C0")
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def plot_losses(filename, records):
    """Training loss against step, one curve per (source, method)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    runs = {}
    for r in records:
        runs.setdefault((r.get("source"), r.get("method")), []).append((r["step"], r["loss"]))
    for (source, method), pts in sorted(runs.items()):
        pts = sorted(dict(pts).items())  # a resumed run may log a step twice
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{source}: {method}")
    ax.set_xlabel("step")
    ax.set_ylabel("CFM loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)
