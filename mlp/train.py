"""`python -m mlp.train`: train the two-layer MLP on an MNIST class pair (default 3 vs 7).

The data goes to the device once; each step is `model.train_step`; the per-step losses
stay on the device and come back to the host once per epoch (for the progress line, the
divergence check and the metrics), so a full-batch epoch makes one small host round trip.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import warnings

import numpy as np

from mlp import backends

from . import checkpoint, model
from .checkpoint import RUN_KEYS, Checkpoint
from .cli import Parser, add_data_flags, add_device_flags, positive_float, positive_int, run
from .data import MNIST_MEAN, MNIST_STD, load_dataset
from .errors import CheckpointError, DivergedError, UserError
from .files import atomic_write, check_output_path
from .loop import ENGINES, Interrupted, StopOnSigint, TrainState, batching, fit, make_engine, params_finite
from .scaleout import dask_options, training_arrays
from .scoring import evaluate
from .versions import versions

#: what a plain `python -m mlp.train` does (measured in the README: >= 98.5% test accuracy)
DEFAULTS = {
    "hidden": 128,
    "activation": "relu",
    "init": "he",
    "lr": 0.1,
    "batch_size": 64,
    "seed": 0,
    "dtype": "float32",
    "classes": (3, 7),
    "epochs": 10,
}


def batch_size_arg(text: str):
    return "full" if text.strip().lower() == "full" else positive_int(text)


def build_parser() -> Parser:
    d = DEFAULTS
    p = Parser(
        prog="python -m mlp.train",
        description="Train a two-layer MLP, written by hand, to tell two MNIST digits apart "
                    "(label 1 = the second class). Model settings left out are taken from --resume's "
                    "checkpoint, else from the defaults shown.",
    )
    add_device_flags(p)
    add_data_flags(p)
    g = p.add_argument_group("model and optimiser")
    g.add_argument("--classes", nargs=2, type=int, metavar=("A", "B"),
                   help=f"the two digits; label 1 = B (default: {d['classes'][0]} {d['classes'][1]})")
    g.add_argument("--hidden", type=positive_int, metavar="H", help=f"hidden units (default: {d['hidden']})")
    g.add_argument("--activation", choices=model.ACTIVATIONS, help=f"hidden activation (default: {d['activation']})")
    g.add_argument("--init", choices=model.INITS,
                   help="weights: classic = 0.01*uniform[0,1) (the exercise's), normal = 0.01*N(0,1), "
                        f"he = He for relu / Xavier for tanh (default: {d['init']})")
    g.add_argument("--lr", type=positive_float, help=f"learning rate of plain gradient descent (default: {d['lr']})")
    g.add_argument("--epochs", type=positive_int,
                   help=f"total epochs of the run, counting those in --resume's checkpoint (default: {d['epochs']})")
    g.add_argument("--batch-size", type=batch_size_arg, metavar="N|full",
                   help=f"rows per step, or 'full' for the whole training set (default: {d['batch_size']})")
    g.add_argument("--seed", type=int, help=f"seed of the NumPy generator for init and shuffling (default: {d['seed']})")
    g.add_argument("--dtype", choices=backends.DTYPES, help=f"floating-point type (default: {d['dtype']})")
    g.add_argument("--engine", choices=ENGINES, default="auto",
                   help="how steps run: eager = one model.train_step call per step from Python; compiled = "
                        "the epoch's steps as one device program, where the backend has one; auto = compiled "
                        "where available, else eager (default: auto)")
    o = p.add_argument_group("output")
    o.add_argument("--save", metavar="PATH", help="write a checkpoint (.npz) at the end, on Ctrl-C and every --checkpoint-every epochs")
    o.add_argument("--checkpoint-every", type=positive_int, metavar="K", help="also save every K epochs (needs --save)")
    o.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint up to --epochs in total")
    o.add_argument("--plot", metavar="PATH", help="save the loss curve as PNG (every step, and each epoch's mean)")
    o.add_argument("--metrics-json", metavar="PATH", help="write the final metrics and every step's loss as JSON")
    o.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines; only the summary")
    return p


# ----------------------------------------------------------------------------- settings


def resolve_config(args, ckpt: Checkpoint | None) -> dict:
    """Flags given > the checkpoint's settings > DEFAULTS; a flag that contradicts the
    checkpoint is an error, since the run would no longer be the one saved."""
    cfg = {}
    for key in RUN_KEYS:
        given = getattr(args, key)
        if key == "classes" and given is not None:
            given = tuple(given)
        if ckpt is None:
            cfg[key] = DEFAULTS[key] if given is None else given
            continue
        saved = tuple(ckpt.config[key]) if key == "classes" else ckpt.config[key]
        if given is not None and given != saved:
            flag = "--" + key.replace("_", "-")
            raise CheckpointError(
                f"{flag} {_show(given)} contradicts the checkpoint {args.resume}, which was trained with "
                f"{flag} {_show(saved)}; drop the flag to continue that run, or start a new one without --resume"
            )
        cfg[key] = saved
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    elif ckpt is not None:
        cfg["epochs"] = int(ckpt.meta.get("target_epochs", ckpt.epoch))
    else:
        cfg["epochs"] = DEFAULTS["epochs"]
    return cfg


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


# ----------------------------------------------------------------------------- training


# ----------------------------------------------------------------------------- progress


def _bar_size() -> dict:
    """The terminal's size for tqdm: some terminals (and `script`) report 0 x 0, which
    makes tqdm hide its bar; shutil falls back to 100 x 24 there."""
    size = shutil.get_terminal_size((100, 24))
    return {"ncols": min(120, size.columns), "nrows": size.lines}


class Progress:
    """tqdm bars on a terminal: one per epoch over its steps, or a single bar over the
    epochs in full-batch mode. Elsewhere (a log file, CI), a plain line every few epochs."""

    def __init__(self, cfg, steps_per_epoch: int, start_epoch: int, *, enabled: bool):
        self.cfg, self.steps_per_epoch, self.enabled = cfg, steps_per_epoch, enabled
        self.epoch = start_epoch
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        self.every = max(1, cfg["epochs"] // 20)
        self.full_batch = steps_per_epoch == 1
        if self.tty and self.full_batch:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg["epochs"], initial=start_epoch, desc="epochs", unit="epoch",
                            file=sys.stderr, **_bar_size())

    def step(self, k: int = 1):
        if not self.tty or self.full_batch:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg['epochs']}",
                            unit="step", leave=True, file=sys.stderr, **_bar_size())
        self.bar.update(k)

    def epoch_end(self, state: TrainState):
        self.epoch = state.epoch
        loss = statistics.fmean(state.losses[-self.steps_per_epoch:])
        text = f"epoch {state.epoch}/{self.cfg['epochs']}  loss {loss:.4f}  {state.epoch_seconds[-1]:.3f} s"
        if self.tty:
            self.bar.set_description(f"epoch {state.epoch}/{self.cfg['epochs']}")
            self.bar.set_postfix_str(f"loss {loss:.4f}")
            if self.full_batch:
                self.bar.update(1)
            else:
                self.bar.close()
                self.bar = None
        elif self.enabled and (state.epoch % self.every == 0 or state.epoch == self.cfg["epochs"]):
            print(text, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------- main


def to_checkpoint(backend, cfg: dict, data_cfg: dict, state: TrainState) -> Checkpoint:
    return Checkpoint(
        params={k: backend.to_host(v) for k, v in state.params.items()},
        config={**{k: cfg[k] for k in RUN_KEYS}, **data_cfg},
        epoch=state.epoch,
        step=state.step,
        step_in_epoch=state.step_in_epoch,
        rng_state=state.epoch_rng_state if state.step_in_epoch else state.rng.bit_generator.state,
        losses=np.asarray(state.losses, dtype=np.float64),
        epoch_seconds=np.asarray(state.epoch_seconds, dtype=np.float64),
        partial_epoch_seconds=state.partial_epoch_seconds,
        meta={"saved_on": str(backend), "target_epochs": cfg["epochs"]},
    )


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    # everything that can be checked before any work is checked first: nothing is written yet
    for flag in ("save", "metrics_json", "plot"):
        if getattr(args, flag):
            check_output_path(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.checkpoint_every and not args.save:
        raise UserError("--checkpoint-every needs --save PATH to know where to write")
    ckpt = checkpoint.load(args.resume) if args.resume else None
    cfg = resolve_config(args, ckpt)
    if ckpt is not None and ckpt.epoch >= cfg["epochs"]:
        raise UserError(f"the checkpoint {args.resume} already holds {ckpt.epoch} epochs; "
                        f"ask for more with --epochs N (N > {ckpt.epoch})")
    backend = backends.resolve(args.device, args.backend, dask_options(args))
    data = load_dataset(args.data_dir, cfg["classes"], download=not args.no_download, quiet=args.quiet)
    X, y = training_arrays(backend, args, data, cfg["dtype"])  # to the device (or the Dask workers), once
    n, n_features = X.shape
    if ckpt is not None and ckpt.config["n_features"] != n_features:
        raise CheckpointError(f"the checkpoint {args.resume} was trained on {ckpt.config['n_features']} pixels "
                              f"per image, this data has {n_features}; use the data set it was trained on")
    if cfg["batch_size"] != "full" and cfg["batch_size"] > n:
        raise UserError(f"--batch-size {cfg['batch_size']} is larger than the {n:,} training rows; "
                        f"use at most {n} or 'full'")
    data_cfg = {"n_features": n_features, "image_shape": list(data.image_shape),
                "mean": MNIST_MEAN, "std": MNIST_STD, "n_train": n}

    dtype = cfg["dtype"]
    if ckpt is None:
        rng = np.random.default_rng(cfg["seed"])
        host_params = model.init_params(n_features, cfg["hidden"], rng, init=cfg["init"], activation=cfg["activation"])
        state = TrainState(params={k: backend.asarray(v, dtype) for k, v in host_params.items()}, rng=rng)
    else:
        rng = np.random.default_rng()
        rng.bit_generator.state = ckpt.rng_state
        state = TrainState(
            params={k: backend.asarray(v, dtype) for k, v in ckpt.params.items()}, rng=rng,
            epoch=ckpt.epoch, step=ckpt.step, step_in_epoch=ckpt.step_in_epoch,
            epoch_rng_state=ckpt.rng_state, losses=ckpt.losses.tolist(),
            epoch_seconds=ckpt.epoch_seconds.tolist(), partial_epoch_seconds=ckpt.partial_epoch_seconds,
        )
    _, steps_per_epoch = batching(n, cfg["batch_size"])
    if not args.quiet:
        where = f"resuming {args.resume} at epoch {ckpt.epoch}" + (
            f", step {ckpt.step_in_epoch} of {steps_per_epoch}" if ckpt.step_in_epoch else "") if ckpt else "training"
        print(f"{where}: {backend}; {n:,} rows of {n_features} features, classes {cfg['classes'][0]} vs "
              f"{cfg['classes'][1]}; H={cfg['hidden']} {cfg['activation']} {cfg['init']} init, lr {cfg['lr']}, "
              f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, {dtype}", file=sys.stderr, flush=True)

    saved = {"epoch": ckpt.epoch if ckpt else None, "path": args.resume}

    def write(state: TrainState):
        checkpoint.save(args.save, to_checkpoint(backend, cfg, data_cfg, state))
        saved.update(epoch=state.epoch, path=args.save)

    def save(state: TrainState):  # a checkpoint is only ever a good state
        if not params_finite(backend, state.params):
            raise DivergedError(f"the parameters became non-finite by epoch {state.epoch}, step {state.step}")
        write(state)

    def on_epoch_end(state: TrainState):
        if args.checkpoint_every and state.epoch % args.checkpoint_every == 0 and state.epoch < cfg["epochs"]:
            save(state)

    engine = make_engine(backend, args.engine, cfg, X, y)
    progress = Progress(cfg, steps_per_epoch, state.epoch, enabled=not args.quiet)
    try:
        with StopOnSigint() as stop, warnings.catch_warnings():
            # a diverging run overflows; that is reported below in one line, not as warnings
            warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero)", RuntimeWarning)
            fit(backend, cfg, X, y, state, engine=engine, progress=progress, on_epoch_end=on_epoch_end, stop=stop)
    except Interrupted:
        progress.close()
        where = f"epoch {state.epoch + (1 if state.step_in_epoch else 0)}, step {state.step}"
        if args.save:
            save(state)
            print(f"interrupted at {where}; checkpoint saved to {args.save}; continue with: "
                  f"python -m mlp.train --resume {args.save} --save {args.save}", file=sys.stderr)
        else:
            print(f"interrupted at {where}; nothing saved (give --save PATH to keep progress)", file=sys.stderr)
        return 130
    except DivergedError as exc:
        progress.close()
        kept = (f"the last good checkpoint is {saved['path']} (epoch {saved['epoch']})" if saved["path"]
                else "no checkpoint was written (use --save with --checkpoint-every to keep good states)")
        raise DivergedError(f"{exc}; the learning rate (--lr {cfg['lr']}) is probably too high for "
                            f"--init {cfg['init']} / --batch-size {cfg['batch_size']}: try a smaller --lr; {kept}") from None
    progress.close()
    if not params_finite(backend, state.params):
        raise DivergedError(f"the parameters became non-finite in the last step ({state.step}); "
                            f"try a smaller --lr than {cfg['lr']}")
    if args.save:
        write(state)  # just checked finite

    test = evaluate(backend, state.params, data.test.X, data.test.y, cfg["activation"])
    train_loss = statistics.fmean(state.losses[-steps_per_epoch:])
    epoch_s = state.epoch_seconds
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "train_loss": train_loss,
        "losses": state.losses,
        "epoch_seconds": epoch_s,
        "median_epoch_seconds": statistics.median(epoch_s) if epoch_s else None,
        "device": backend.device,
        "device_name": backend.device_name,
        "backend": backend.name,
        "dtype": dtype,
        "hidden": cfg["hidden"],
        "activation": cfg["activation"],
        "init": cfg["init"],
        "epochs": cfg["epochs"],
        "batch_size": cfg["batch_size"],
        "steps": state.step,
        "lr": cfg["lr"],
        "seed": cfg["seed"],
        "classes": list(cfg["classes"]),
        "n_train": n,
        "n_test": test["n"],
        "confusion": test["confusion"].tolist(),
        "versions": versions(),
    }
    print(f"final train loss {train_loss:.4f} | test loss {test['loss']:.4f} | test accuracy "
          f"{test['accuracy']:.2%} ({test['correct']}/{test['n']}) | median "
          f"{metrics['median_epoch_seconds']:.3f} s/epoch | {backend.name} on {backend.device_name}")
    if args.metrics_json:
        with atomic_write(args.metrics_json, "w") as f:
            json.dump(metrics, f, indent=1)
    if args.plot:
        from .plots import plot_losses

        plot_losses(args.plot, state.losses, steps_per_epoch,
                    f"MNIST {cfg['classes'][0]} vs {cfg['classes'][1]}: H={cfg['hidden']} {cfg['activation']}, "
                    f"lr {cfg['lr']}, batch {cfg['batch_size']}, {dtype}, {backend.name} on {backend.device}")
    return 0


main.prog = "mlp.train"


def cli() -> None:
    """Console-script entry point (mlp-train)."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
