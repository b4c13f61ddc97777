"""What a training run tells its user at the end: the metrics, the summary line, a line for
each file written, and the command that continues an interrupted run."""

import json
import shlex
import statistics
import sys

from .files import atomic_write
from .progress import fmt_loss
from .settings import RUN_KEYS
from .versions import versions


def wrote(path, detail: str | None = None) -> None:
    """`wrote model.npz (epoch 10)` on stderr: every output a command writes gets one."""
    print(f"wrote {path}" + (f" ({detail})" if detail else ""), file=sys.stderr, flush=True)


def continue_command(prog: str, argv: list, resume: str) -> str:
    """The command line that was given (`prog`, then the words `argv`) with `--resume resume` in
    place of any --resume: every flag the user set (--data-dir, the outputs, ...) is kept, so the
    line works when copied (shell-quoted)."""
    words = [w for w in argv if not w.startswith("--resume=")]
    while "--resume" in words:
        i = words.index("--resume")
        del words[i:i + 2]
    return shlex.join([*prog.split(), *words, "--resume", resume])


def metrics(backend, cfg: dict, state, test: dict, history, *, engine: str, n_train: int, n_val: int, train_loss: float,
            stopped: str | None) -> dict:
    """Everything --metrics-json records about the run."""
    epoch_s = state.epoch_seconds
    last = history.rows[-1] if history.rows else {}
    return {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"], "train_loss": train_loss,
        "val_loss": last.get("val_loss"), "val_accuracy": last.get("val_accuracy"),
        "best_val_loss": history.best["val_loss"] if history.best["epoch"] else None,
        "best_epoch": history.best["epoch"], "stopped_early": stopped,
        "losses": state.losses, "history": history.rows, "epoch_seconds": epoch_s,
        "median_epoch_seconds": statistics.median(epoch_s) if epoch_s else None,
        "device": backend.device, "device_name": backend.device_name, "backend": backend.name, "engine": engine,
        "threads": cfg.get("threads"),   # CPU threads of the array library (None: not this process's, GPU or Dask)
        **{k: cfg[k] for k in (*RUN_KEYS, "epochs")},   # the run's settings, the optimiser's among them
        "completed_epochs": state.epoch, "steps": state.step, "classes": list(cfg["classes"]),
        "val_split": cfg["val_split"], "n_train": n_train, "n_val": n_val, "n_test": test["n"],
        "confusion": test["confusion"].tolist(), "versions": versions(),
    }


def summary_line(m: dict, test: dict, backend) -> str:
    val = (f" | val loss {fmt_loss(m['val_loss'])} | val accuracy {m['val_accuracy']:.2%}"
           if m["val_loss"] is not None else "")
    return (f"final train loss {fmt_loss(m['train_loss'])}{val} | test loss {fmt_loss(m['test_loss'])} | test accuracy "
            f"{m['test_accuracy']:.2%} ({test['correct']}/{test['n']}) | median "
            f"{m['median_epoch_seconds']:.3f} s/epoch | {backend.name} ({m['engine']}) on {backend.device_name}")


def write_metrics(path, m: dict) -> None:
    with atomic_write(path, "w") as f:
        json.dump(m, f, indent=1)


def write_loss_plot(path, m: dict, steps_per_epoch: int, backend) -> None:
    from .plots import classes_shown, plot_losses

    title = (f"{classes_shown(m['classes'])}: H={m['hidden']} {m['activation']}, lr {m['lr']}, "
             f"batch {m['batch_size']}, {m['dtype']}, {backend.name} on {backend.device}")
    plot_losses(path, m["losses"], steps_per_epoch, title, m["history"], m["test_accuracy"])
