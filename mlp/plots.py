"""Figures (matplotlib, headless), each written atomically in the format its file name asks
for (.png, .jpg, .svg, .pdf, ...: whatever matplotlib writes); another suffix is refused."""

import functools
import io
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import atomic_write


def plot_format(path, flag: str = "--plot") -> str:
    """The matplotlib format named by `path`'s suffix, once a small figure has been written in it:
    a UserError (before any work) for no suffix, an unknown one, or a format this installation
    cannot write (.pgf without its TeX program)."""
    plt = pyplot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        given = f"the suffix .{suffix} names no image format" if suffix else "no suffix to name the image format"
        raise UserError(f"{flag} {path}: {given}; end the name with one of "
                        f"{', '.join('.' + f for f in sorted(formats))} (e.g. .png)")
    tex = plt.rcParams["pgf.texsystem"] if suffix == "pgf" else None
    if tex and shutil.which(tex) is None:
        raise UserError(f"{flag} {path}: a .pgf figure needs {tex}, which is not installed; "
                        "use .pdf or .svg (or install a TeX system)")
    problem = _cannot_write(suffix)
    if problem:
        raise UserError(f"{flag} {path}: matplotlib cannot write .{suffix} here ({problem}); use .png, .pdf or .svg")
    return suffix


@functools.lru_cache(maxsize=None)
def _cannot_write(suffix: str) -> str | None:
    """Why a small figure with text cannot be written as `suffix`, or None when it can."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.subplots().set_title("x")
    try:
        fig.savefig(io.BytesIO(), format=suffix)
    except Exception as exc:   # noqa: BLE001 - whatever the format's writer lacks, said now, not after the run
        return str(exc)[:120] or type(exc).__name__
    return None


def pyplot():
    """matplotlib.pyplot, drawing with Agg: figures are only ever written to files, so $MPLBACKEND (which
    names a backend for windows, and makes `import matplotlib` fail when it names none) is unset while
    matplotlib is imported, then put back."""
    given = os.environ.pop("MPLBACKEND", None)
    try:
        import matplotlib.pyplot as plt
    finally:
        if given is not None:
            os.environ["MPLBACKEND"] = given
    plt.switch_backend("Agg")
    return plt


def save_figure(fig, path, dpi: int = 120) -> None:
    """Write `fig` atomically in the format of `path`'s suffix, then close it."""
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format=plot_format(path), dpi=dpi, bbox_inches="tight")
    finally:
        pyplot().close(fig)


def plot_losses(path, losses, steps_per_epoch: int, title: str, rows=(), test_accuracy=None) -> None:
    """The loss of every step, and the mean loss of each epoch drawn at the epoch's last step.

    With validation figures in `rows` (one dict per epoch: step, val_loss, val_accuracy) the
    validation loss is drawn beside them, and a second panel shows the validation accuracy
    per epoch (and the test accuracy reached at the end, as a dashed line)."""
    losses = np.asarray(losses, dtype=np.float64)
    val = [r for r in rows if r.get("val_loss") is not None]
    fig, axes = pyplot().subplots(1, 2 if val else 1, figsize=(11 if val else 7, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.6, alpha=0.5, color="tab:blue", label="training loss per step")
    n_epochs = len(losses) // steps_per_epoch
    if n_epochs:
        per_epoch = losses[: n_epochs * steps_per_epoch].reshape(n_epochs, steps_per_epoch).mean(axis=1)
        ax.plot(np.arange(1, n_epochs + 1) * steps_per_epoch, per_epoch, "o-" if n_epochs <= 50 else "-", ms=3,
                color="tab:red", label="training loss, mean per epoch")
    ax.set(yscale="log", xlabel="step", ylabel="cross-entropy")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "s-" if len(val) <= 50 else "-", ms=3,
                color="tab:green", label="validation loss")
        acc = axes[0, 1]
        acc.plot([r["epoch"] for r in val], [100 * r["val_accuracy"] for r in val], "s-", ms=3,
                 color="tab:green", label="validation accuracy")
        if test_accuracy is not None:
            acc.axhline(100 * test_accuracy, ls="--", color="black", lw=1,
                        label=f"test accuracy at the end ({test_accuracy:.2%})")
        acc.set(xlabel="epoch", ylabel="accuracy (%)")
    for a in axes.flat:
        a.grid(True, which="both", alpha=0.3)   # minor lines: the log scale's (a linear axis has none)
        a.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def classes_shown(classes) -> str:
    """How the commands and figures name a run's classes: 'classes 3 vs 7', '10 classes 0-9', '3 classes 5 1 8'."""
    if len(classes) == 2:
        return f"classes {classes[0]} vs {classes[1]}"
    run = list(classes) == list(range(classes[0], classes[0] + len(classes)))
    return f"{len(classes)} classes " + (f"{classes[0]}-{classes[-1]}" if run else " ".join(map(str, classes)))


def _probability(p: float) -> str:
    """0.03, 0.51; 3.2e-04 near 0 and 0.9987 near 1, where two decimals would say 0.00 or 1.00."""
    return f"{p:.1e}" if p < 0.01 else f"{p:.4f}" if p > 0.99 else f"{p:.2f}"


def _grid(n: int, cols: int = 8, size=(1.9, 2.0)):
    """A figure of at least one panel, n panels in rows of `cols`, every axis off."""
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = pyplot().subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False,
                                  layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _image(row, image_shape):
    """One input row as an image: its own shape, or a strip for 1-D inputs."""
    return np.reshape(row, image_shape if len(image_shape) == 2 else (1, -1))


def plot_misclassified(path, X, digits, probs, predicted, wrong, image_shape, classes, *, max_shown: int = 64) -> None:
    """A grid of misclassified images, each titled "true 7, predicted 3, P(3)=0.97" (the probability
    of the class predicted)."""
    shown = wrong[:max_shown]
    fig, axes = _grid(len(shown))
    for ax, i in zip(axes.flat, shown):
        ax.imshow(_image(X[i], image_shape), cmap="gray")
        label = classes[predicted[i]]
        ax.set_title(f"true {digits[i]}, predicted {label},\nP({label})={_probability(probs[i, predicted[i]])}",
                     fontsize=7)
    if not len(shown):
        axes[0, 0].text(0.5, 0.5, "no misclassified digits", ha="center", va="center")
    fig.suptitle(f"{len(wrong)} misclassified ({classes_shown(classes)}), {len(shown)} shown", fontsize=9)
    save_figure(fig, path)


def plot_confusion(path, m: np.ndarray, classes, title: str) -> None:
    """The confusion matrix as an image: a row per true class, coloured by the share of that class
    predicted as each column, with the counts written in (up to 30 classes)."""
    K = len(classes)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    side = min(20.0, 2.0 + 0.55 * K)
    fig, ax = pyplot().subplots(figsize=(side + 1.5, side))
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set(xticks=range(K), xticklabels=classes, yticks=range(K), yticklabels=classes, xlabel="predicted class",
           ylabel="true class")
    if K <= 30:
        for (i, j), count in np.ndenumerate(m):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_weights(path, w1: np.ndarray, image_shape, title: str, *, max_shown: int = 256) -> int:
    """Each hidden unit's input weights (a column of w1) as an image: red pixels raise the unit's
    input, blue ones lower it (each unit on its own symmetric scale). Returns how many were drawn."""
    shown = min(w1.shape[1], max_shown)
    fig, axes = _grid(shown, cols=16, size=(1.0, 1.0))
    for ax, j in zip(axes.flat, range(shown)):
        scale = float(np.abs(w1[:, j]).max()) or 1.0
        ax.imshow(_image(w1[:, j], image_shape), cmap="bwr", vmin=-scale, vmax=scale)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    return shown
