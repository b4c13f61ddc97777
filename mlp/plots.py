"""Figures (matplotlib, headless), each written atomically as PNG."""

from __future__ import annotations

import numpy as np

from .files import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    plt = _pyplot()
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_losses(path, losses, steps_per_epoch: int, title: str) -> None:
    """The loss of every step, and the mean loss of each epoch drawn at the epoch's last step."""
    plt = _pyplot()
    losses = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=0.6, alpha=0.5, color="tab:blue", label="loss per step")
    n_epochs = len(losses) // steps_per_epoch
    if n_epochs:
        per_epoch = losses[: n_epochs * steps_per_epoch].reshape(n_epochs, steps_per_epoch).mean(axis=1)
        ends = np.arange(1, n_epochs + 1) * steps_per_epoch
        ax.plot(ends, per_epoch, "o-" if n_epochs <= 50 else "-", ms=3, color="tab:red", label="mean per epoch")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("binary cross-entropy")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_misclassified(path, X, digits, probs, wrong, image_shape, classes, *, max_shown: int = 64) -> None:
    """A grid of misclassified images, each titled with its true digit and P(classes[1])."""
    plt = _pyplot()
    shown = wrong[:max_shown]
    cols = max(1, min(8, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        ax.imshow(X[i].reshape(image_shape), cmap="gray")
        ax.set_title(f"{digits[i]}: p({classes[1]})={probs[i]:.2f}", fontsize=7)
    if not len(shown):
        axes[0, 0].text(0.5, 0.5, "no misclassified digits", ha="center", va="center")
    fig.suptitle(f"{len(wrong)} misclassified ({classes[0]} vs {classes[1]}), {len(shown)} shown", fontsize=9)
    _save(fig, path)
