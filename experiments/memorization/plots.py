"""Plots for the memorization experiment: samples, nearest-neighbour distances, loss against t."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_samples(filename, plot_data):
    """One row per training-set size: the training set, each field's samples, held-out data."""
    sizes = list(plot_data)
    names = list(plot_data[sizes[0]]["samples"])
    fig, axes = plt.subplots(len(sizes), len(names) + 1, squeeze=False,
                             figsize=(3.2 * (len(names) + 1), 3.2 * len(sizes)))
    for i, n in enumerate(sizes):
        d = plot_data[n]
        lim = np.abs(d["heldout"]).max() * 1.2
        panels = [(name, d["samples"][name]) for name in names] + [("held-out data",
                                                                   d["heldout"])]
        for j, (name, pts) in enumerate(panels):
            ax = axes[i, j]
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color="C0" if j < len(names)
                       else "gray")
            ax.scatter(d["train"][:, 0], d["train"][:, 1], s=10, marker="x", color="C3",
                       lw=0.8, label="training points")
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[])
            ax.set_title(f"N={n}: {name}", fontsize=9)
        axes[i, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def plot_image_pairs(filename, plot_data, num: int = 10):
    """Image data: samples of each field and held-out images over their nearest training images."""
    sizes = list(plot_data)
    names = list(plot_data[sizes[0]]["samples"]) + ["held-out data"]
    side = int(round(plot_data[sizes[0]]["train"].shape[1] ** 0.5))
    rows = len(sizes) * len(names) * 2
    fig, axes = plt.subplots(rows, num, figsize=(0.9 * num, 0.95 * rows), squeeze=False)
    r = 0
    for n in sizes:
        d = plot_data[n]
        train = d["train"]
        for name in names:
            pts = d["heldout"] if name == "held-out data" else d["samples"][name]
            pts = pts[:num]
            nearest = train[np.argmin(((pts[:, None] - train[None]) ** 2).sum(-1), axis=1)]
            pairs = ((r, pts, f"N={n}\n{name}"), (r + 1, nearest, "nearest\ntrain"))
            for row, imgs, label in pairs:
                for j in range(num):
                    ax = axes[row, j]
                    ax.imshow(np.clip(imgs[j].reshape(side, side), -1, 1), cmap="gray_r",
                              vmin=-1, vmax=1)
                    ax.set_xticks([])
                    ax.set_yticks([])
                axes[row, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
            r += 2
    fig.tight_layout(h_pad=0.1, w_pad=0.1)
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def plot_distances(filename, plot_data, radius):
    """Histograms (log distance) of the nearest-training-point distances, as fractions."""
    sizes = list(plot_data)
    fig, axes = plt.subplots(1, len(sizes), squeeze=False, figsize=(5 * len(sizes), 3.6))
    for ax, n in zip(axes[0], sizes):
        dists = plot_data[n]["distances"]
        low = max(min(float(v.min()) for v in dists.values()), 1e-7)
        high = max(float(v.max()) for v in dists.values())
        bins = np.logspace(np.log10(low), np.log10(high), 60)
        for i, (name, v) in enumerate(dists.items()):
            ax.hist(np.maximum(v, low), bins=bins, alpha=0.5, color=f"C{i}", label=name,
                    weights=np.full(v.shape, 1.0 / v.size))
        ax.axvline(radius, color="k", ls=":", lw=1, label="copy radius")
        ax.set(xscale="log", xlabel="distance to the nearest training point",
               ylabel="fraction of points", title=f"N = {n}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def plot_loss_vs_t(filename, plot_data):
    """CFM loss against t on training and held-out points, for both fields."""
    sizes = list(plot_data)
    fig, axes = plt.subplots(1, len(sizes), squeeze=False, figsize=(5 * len(sizes), 3.6))
    for ax, n in zip(axes[0], sizes):
        d = plot_data[n]
        for i, ((name, split), curve) in enumerate(d["curves"].items()):
            ax.plot(d["grid"], curve, color=f"C{i // 2}", ls="-" if split == "train" else "--",
                    label=f"{name}, {split}")
        ax.set(yscale="log", xlabel="t", ylabel="CFM loss", title=f"N = {n}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def plot_training(filename, records, loss_name="CFM loss"):
    """Training loss (`loss_name` on the y axis) against step, one curve per training-set size."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for n in sorted({r["train_size"] for r in records if "train_size" in r}):
        rs = [r for r in records if r.get("train_size") == n]
        ax.plot([r["step"] for r in rs], [r["loss"] for r in rs], label=f"N = {n}")
    ax.set(xlabel="step", ylabel=f"training {loss_name} (mean per log interval)", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)
