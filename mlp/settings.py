"""The one table of a run's settings: name, kind, bounds, default and help. The flags
(`mlp.train`), the checkpoint reader (`checkpoint_meta`), the store and log readers and
`MLPClassifier` all check a value with `check(name, value)`, so what one accepts, all accept.

`run` settings define a run: a checkpoint keeps them, and `--resume` with another value is refused.
"""

import argparse
import math
import numbers
from dataclasses import dataclass

from .model import ACTIVATIONS, DTYPES, INITS
from .optimisers import SOLVERS

MAX_DIM = 1 << 31               # features, hidden units, image sizes
MAX_COUNT = 1 << 62             # epochs, steps, rows
MAX_SEED = (1 << 128) - 1       # what NumPy's generator takes, and a checkpoint keeps
MAX_LABEL = (1 << 31) - 1       # a class label (a whole number >= 0)
MAX_CLASSES = 1 << 16
MAX_THREADS = 1 << 16


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str                   # 'int', 'float', 'choice', 'bool' or 'classes'
    default: object
    help: str
    lo: float = -math.inf       # numbers: the bounds; lo_open / hi_open: the bound itself is excluded
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    words: tuple = ()           # words a number may be given as instead ('full', 'auto')
    run: bool = False

    @property
    def need(self) -> str:
        """What a value must be, as the messages say it."""
        if self.kind in ("choice", "bool"):
            return "one of " + ", ".join(map(str, self.choices or (True, False)))
        if self.kind == "classes":
            return f"a list of 2 to {MAX_CLASSES:,} different labels (whole numbers from 0 to {MAX_LABEL:,})"
        words = "".join(f"'{w}' or " for w in self.words if w is not None)
        if self.kind == "int":
            return f"{words}a whole number from {_shown(self.lo)} to {_shown(self.hi)}"
        low = f"{'>' if self.lo_open else '>='} {self.lo:g}"
        high = "" if self.hi == math.inf else f" and {'<' if self.hi_open else '<='} {self.hi:g}"
        return f"{words}a finite number {low}{high}"

    def check(self, value):
        """The value as the run keeps it, or ValueError(self.need)."""
        if (value is None or isinstance(value, str)) and (value in self.words or value in self.choices):
            return value
        if self.kind == "bool" and type(value).__name__ in ("bool", "bool_"):      # Python's or NumPy's
            return bool(value)
        if self.kind == "classes" and isinstance(value, (list, tuple)):
            labels = [_whole(v) for v in value]
            if 2 <= len(labels) <= MAX_CLASSES and None not in labels and len(set(labels)) == len(labels) \
                    and all(0 <= v <= MAX_LABEL for v in labels):
                return labels
        if self.kind == "int" and (v := _whole(value)) is not None and self.lo <= v <= self.hi:
            return v
        if self.kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
            v = float(value)
            if math.isfinite(v) and (v > self.lo if self.lo_open else v >= self.lo) \
                    and (v < self.hi if self.hi_open else v <= self.hi):
                return v
        raise ValueError(self.need)

    def parse(self, text: str):
        """A flag's text as its value (argparse's `type`): the word, the number, then check()."""
        word = text.strip().lower()
        if word in self.words:
            return word
        try:
            value = int(text) if self.kind == "int" else float(text) if self.kind == "float" else text
            return self.check(value)
        except (ValueError, OverflowError):
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise argparse.ArgumentTypeError(f"must be {self.need}, got {shown}") from None


def _shown(n: int) -> str:
    """1,000 as it is; 2**62 and 2**128 - 1 as such (a bound, not a count anyone types)."""
    for k in range(20, 130):
        if n in (1 << k, (1 << k) - 1):
            return f"2^{k}" + (" - 1" if n != 1 << k else "")
    return f"{n:,}"


def _whole(value):
    """An int from an int-like value (not a bool, not a float), else None."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def _f(name, default, help, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False, run=True):
    return Setting(name, "float", default, help, lo, hi, lo_open, hi_open, run=run)


SETTINGS = {s.name: s for s in (
    Setting("hidden", "int", 128, "hidden units", 1, MAX_DIM, run=True),
    Setting("activation", "choice", "relu", "hidden activation", choices=ACTIVATIONS, run=True),
    Setting("init", "choice", None, "initial weights: classic = 0.01*uniform[0,1) (the exercise's), normal = "
            "0.01*N(0,1), he = N(0, 2/fan_in), xavier = N(0, 2/(fan_in+fan_out))",
            choices=INITS, words=(None,), run=True),
    _f("lr", 0.1, "learning rate, of every solver", lo=0, lo_open=True, hi_open=True),
    Setting("batch_size", "int", 64, "rows per step, or 'full' for every training row", 1, MAX_COUNT,
            words=("full",), run=True),
    Setting("seed", "int", 0, "seed of the NumPy generator for init and shuffling", 0, MAX_SEED, run=True),
    Setting("dtype", "choice", "float32", "floating-point type", choices=DTYPES, run=True),
    Setting("classes", "classes", [3, 7], "the classes, in label order (label 1 = the second of two)", run=True),
    Setting("solver", "choice", "sgd", "sgd (with --momentum) or adam", choices=SOLVERS, run=True),
    _f("momentum", 0.0, "sgd: momentum mu of v <- mu v - lr g (0: plain gradient descent)", 0, 1, hi_open=True),
    Setting("nesterov", "bool", False, "sgd: Nesterov's momentum (needs --momentum > 0)", run=True),
    _f("alpha", 0.0, "L2 penalty, scikit-learn's alpha: 0.5 alpha sum(W^2) / batch added to the loss", 0),
    _f("beta1", 0.9, "adam: decay of the first moment", 0, 1, hi_open=True),
    _f("beta2", 0.999, "adam: decay of the second moment", 0, 1, hi_open=True),
    _f("epsilon", 1e-8, "adam: added to sqrt(v^)", 0, lo_open=True, hi_open=True),
    Setting("epochs", "int", 10, "total epochs of the run, counting those of --resume's checkpoint", 1, MAX_COUNT),
    Setting("threads", "int", "auto", "CPU threads of the array library: auto = 1 for small steps, more for "
            "large ones, up to the cores this process may use; never from the load", 1, MAX_THREADS, words=("auto",)),
    _f("val_split", 0.0, "hold out this fraction of the training rows for validation", 0, 1, hi_open=True, run=False),
)}

#: the settings that define a run (kept in checkpoints; a resume must not contradict them)
RUN_KEYS = tuple(name for name, s in SETTINGS.items() if s.run)
#: the optimiser's settings, and the solver each of them applies to (None: every solver)
OPTIMISER = {"solver": None, "momentum": "sgd", "nesterov": "sgd", "alpha": None, "beta1": "adam", "beta2": "adam",
             "epsilon": "adam"}
DEFAULTS = {name: s.default for name, s in SETTINGS.items()}


def check(name: str, value):
    """SETTINGS[name].check(value): the value, or ValueError saying what it must be."""
    return SETTINGS[name].check(value)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def optimiser_conflicts(cfg: dict, given) -> str | None:
    """Why one of the optimiser settings `given` (names set explicitly) would do nothing with the
    others of `cfg`, and the fix, as a sentence naming its flag; None when each does something."""
    for name in given:
        solver = OPTIMISER.get(name)
        if solver is not None and solver != cfg["solver"]:
            return (f"{flag(name)} applies to --solver {solver} only, and this run's solver is {cfg['solver']}: "
                    f"drop {flag(name)}, or train with --solver {solver}")
    if "nesterov" in given and cfg["nesterov"] and not cfg["momentum"]:
        return "--nesterov is a kind of momentum, and this run's --momentum is 0: add --momentum M (e.g. 0.9)"
    return None
