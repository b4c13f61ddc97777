"""What a training run shows while it runs: on a terminal, one progress bar for the whole run
(its steps, or its epochs in full batch) with an ETA; and a line per epoch (training loss, and
validation loss and accuracy when there is a split) every `every` epochs (every epoch for runs
of up to 20) and for the last one, above the bar if there is one. Notes go the same way.
"""

import shutil
import statistics
import sys


def fmt_loss(value) -> str:
    """A loss with four significant digits: 0.06171, 4.123e-05 (never 0.0000)."""
    return "n/a" if value is None else f"{value:.4g}"


class Progress:
    """The run's bar and epoch lines. `fit` calls `step(k)` after every k steps and
    `epoch_end(state)`; the command calls `epoch_line(state, row)` once the epoch's figures
    (validation included) are known, and `note(text)` for anything else worth a line."""

    def __init__(self, epochs: int, steps_per_epoch: int, state, *, enabled: bool):
        self.epochs, self.steps_per_epoch, self.enabled = epochs, steps_per_epoch, enabled
        self.every = max(1, epochs // 20)
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            # some terminals (and `script`) say 0 x 0, which makes tqdm hide its bar: shutil says 100 x 24 there
            size = shutil.get_terminal_size((100, 24))
            self.bar = tqdm(total=epochs * steps_per_epoch, initial=state.step, unit="epoch" if steps_per_epoch == 1
                            else "step", desc=f"epoch {min(state.epoch + 1, epochs)}/{epochs}", file=sys.stderr,
                            dynamic_ncols=False, ncols=min(120, size.columns), nrows=size.lines)

    def step(self, k: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def epoch_end(self, state) -> None:
        if self.bar is not None:
            self.bar.set_description(f"epoch {min(state.epoch + 1, self.epochs)}/{self.epochs}")

    def epoch_line(self, state, row: dict) -> None:
        """Show the epoch's figures: on the bar always, as a line every `every` epochs."""
        figures = [f"loss {fmt_loss(row['train_loss'])}"]
        if row.get("val_loss") is not None:
            figures += [f"val loss {fmt_loss(row['val_loss'])}", f"val acc {row['val_accuracy']:.2%}"]
        if self.bar is not None:
            self.bar.set_postfix_str(", ".join(figures))
        if state.epoch % self.every == 0 or state.epoch == self.epochs:
            self.note(f"epoch {state.epoch}/{self.epochs}  {'  '.join(figures)}  {state.epoch_seconds[-1]:.3f} s")

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def epoch_train_loss(state, steps_per_epoch: int) -> float:
    """The mean loss of the last complete epoch's steps."""
    return statistics.fmean(state.losses[-steps_per_epoch:])
