"""Plots for the image experiment: sample grids per class and metrics against NFE."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _grid_image(images, labels, num_classes, per_class=10):
    """A `[rows * H, cols * W, C]` mosaic: row c holds the first samples of class c."""
    h, w, c = images.shape[1:]
    canvas = np.ones((num_classes * (h + 1), per_class * (w + 1), c), np.float32)
    for k in range(num_classes):
        chosen = images[labels == k][:per_class]
        for j, img in enumerate(chosen):
            canvas[k * (h + 1):k * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = (img + 1) / 2
    return np.clip(canvas, 0.0, 1.0)


def _save_grid(filename, mosaic, title):
    fig, ax = plt.subplots(figsize=(4, 4 * mosaic.shape[0] / mosaic.shape[1] + 0.4))
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray",
              interpolation="nearest", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)


def plot_grids(workdir, grids, num_classes, test_images, test_labels):
    """One PNG per (method, sampler, steps, guidance), one row per class, plus the held-out data.

    Samples were drawn class-balanced: sample `i` has label `i % num_classes`.
    """
    _save_grid(os.path.join(workdir, "samples_data.png"),
               _grid_image(test_images, test_labels, num_classes), "held-out data")
    for (method, sampler, steps, scale), xs in grids.items():
        labels = np.arange(len(xs)) % num_classes
        tag = f"{method}_{sampler}{'' if steps is None else steps}_w{scale:g}"
        _save_grid(os.path.join(workdir, f"samples_{tag}.png"),
                   _grid_image(np.asarray(xs), labels, num_classes),
                   f"{method} {sampler} {'' if steps is None else steps} guidance {scale:g}")


def plot_metrics_vs_nfe(filename, rows):
    """Conditional accuracy and FD / floor against NFE, a line per (method, sampler, guidance)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    conditional = rows[0]["accuracy"] is not None
    lines = {}
    for r in rows:
        lines.setdefault((r["method"], r["sampler"], r["guidance"]), []).append(r)
    for (method, sampler, scale), rs in lines.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in rs]
        label = f"{method} {sampler} w={scale:g}"
        marker = "s" if sampler == "dopri5" else "o"
        if conditional:
            axes[0].plot(nfe, [r["accuracy"] for r in rs], marker=marker, label=label)
        axes[1].plot(nfe, [r["fd_ratio"] for r in rs], marker=marker, label=label)
    axes[0].axhline(rows[0]["classifier_accuracy"], color="gray", ls="--", lw=1,
                    label="classifier on held-out data")
    axes[1].axhline(1.0, color="gray", ls="--", lw=1, label="noise floor")
    for ax, name in zip(axes, ("conditional accuracy", "FD / noise floor")):
        ax.set_xscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(name)
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)


def plot_guidance(filename, rows):
    """Conditional accuracy and FD / floor against the guidance scale w, a line per guidance kind.

    Classifier guidance rows have the sampler `cg-euler`; the others at the
    same step count are classifier-free guidance of the same model.
    """
    cg = [r for r in rows if r["sampler"] == "cg-euler"]
    if not cg:
        return
    steps = cg[0]["steps"]
    cfg = [r for r in rows if r["sampler"] == "euler" and r["steps"] == steps]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for kind, rs in (("classifier guidance", cg), ("classifier-free guidance", cfg)):
        for method in dict.fromkeys(r["method"] for r in rs):
            mine = sorted((r for r in rs if r["method"] == method), key=lambda r: r["guidance"])
            w = [r["guidance"] for r in mine]
            label = f"{method}: {kind}"
            axes[0].plot(w, [r["accuracy"] for r in mine], marker="o", label=label)
            axes[1].plot(w, [r["fd_ratio"] for r in mine], marker="o", label=label)
    axes[0].axhline(rows[0]["classifier_accuracy"], color="gray", ls="--", lw=1,
                    label="classifier on held-out data")
    axes[1].axhline(1.0, color="gray", ls="--", lw=1, label="noise floor")
    for ax, name in zip(axes, ("conditional accuracy", "FD / noise floor")):
        ax.set_xlabel(f"guidance scale w ({steps} Euler steps)")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)


def plot_losses(filename, records, methods):
    """The training loss of each method against the step, one panel per method.

    `records` are the metrics records (`metrics.jsonl`, tagged with the
    method's name); each panel's y axis is the method's `loss_name`.
    """
    fig, axes = plt.subplots(1, len(methods), squeeze=False, figsize=(3.6 * len(methods), 3.2))
    for i, (ax, method) in enumerate(zip(axes[0], methods)):
        rs = [r for r in records if r.get("method") == method.name and "phase" not in r
              and "loss" in r]
        ax.plot([r["step"] for r in rs], [r["loss"] for r in rs], color=f"C{i}",
                label=method.name)
        ax.set(xlabel="step", ylabel=method.loss_name, title=method.name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)
