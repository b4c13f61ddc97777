"""`python -m mlp.train`: train the two-layer MLP on MNIST classes (default 3 vs 7; any 2 to 10).

The data goes to the device once; the run is mlp.loop's `Run` (as MLPClassifier's); the files
are written at the end, on Ctrl-C and every --checkpoint-every epochs.
"""

import os
import signal
import sys
import tempfile
import warnings
from pathlib import Path

from mlp import backends

from . import checkpoint, model, settings
from .cli import (EXIT_CLUSTER_LOST, Parser, add_classes_flag, add_data_flags, add_device_flags, classes_given,
                  dask_options, exit_code, positive_int, run, setting_flag)
from .data import MNIST_MEAN, MNIST_STD, data_paths, default_data_dir, load_dataset
from .errors import CheckpointError, ClusterLost, DivergedError, UserError
from .files import write_failure
from .history import EarlyStopped, History, holdout, resolve_val_split
from .batches import batching
from .loop import ENGINES, Interrupted, Run, StopOnSignals, TrainState, params_finite
from .plots import classes_shown, plot_format
from .progress import Progress, epoch_train_loss, fmt_loss
from .saver import Saver
from .rows import STORE_FILES, open_training_store, training_arrays
from .runlog import EpochLog
from .scoring import score
from .settings import DEFAULTS, OPTIMISER, RUN_KEYS, flag, optimiser_conflicts
from .summary import continue_command, metrics, summary_line, write_loss_plot, write_metrics, wrote


def build_parser() -> Parser:
    p = Parser(
        prog="python -m mlp.train",
        description="Train a two-layer MLP, written by hand, to tell MNIST digits apart (two, with label 1 = the "
                    "second class, or up to ten). Model settings left out are taken from --resume's checkpoint, "
                    "else from the defaults shown.",
        outputs=("--save", "--save-best", "--metrics-json", "--plot", "--log"), in_place=(("--save", "--resume"),),
        inputs={"--resume": lambda a: [a.resume], "--data-dir": lambda a: data_paths(a.data_dir or default_data_dir()),
                "--store": lambda a: [Path(a.store) / f for f in STORE_FILES] if a.store else []},
    )
    add_device_flags(p)
    add_data_flags(p)
    g = p.add_argument_group("model")
    add_classes_flag(g)
    for name, metavar in (("hidden", "H"), ("activation", None), ("init", None), ("epochs", "N"),
                          ("batch_size", "N|full"), ("seed", "S"), ("dtype", None)):
        setting_flag(g, name, **({"metavar": metavar} if metavar else {}))
    g.add_argument("--engine", choices=ENGINES, default="auto",
                   help="how steps run: eager = one model.train_step call per step from Python; compiled = "
                        "the epoch's steps as one device program, where the backend has one; auto = compiled "
                        "where available, else eager (default: auto)")
    o = p.add_argument_group("optimiser (docs/training.md#optimisers: the update rules)")
    for name in dict.fromkeys(("solver", "lr", *OPTIMISER)):   # --lr beside --solver: it is every solver's
        setting_flag(o, name)
    o = p.add_argument_group("output")
    o.add_argument("--save", metavar="PATH",
                   help="write a checkpoint (.npz) at the end, on Ctrl-C and every --checkpoint-every epochs")
    o.add_argument("--checkpoint-every", type=positive_int, metavar="K", help="also save every K epochs (needs --save)")
    o.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint up to --epochs in total")
    o.add_argument("--plot", metavar="PATH",
                   help="save the loss curve (every step, each epoch's mean, and validation with an accuracy panel "
                        "when there is a split); the format follows the suffix: .png, .jpg, .svg, .pdf, ...")
    o.add_argument("--metrics-json", metavar="PATH", help="write the final metrics and every step's loss as JSON")
    o.add_argument("--log", metavar="PATH", help="one row per epoch (epoch, step, train/val loss, val accuracy, "
                                                 "seconds), flushed as it goes: CSV, or JSON lines for .jsonl")
    o.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines; only the summary")
    v = p.add_argument_group("validation (held-out training rows; the test set is only used at the end)")
    setting_flag(v, "val_split", metavar="F")
    v.add_argument("--early-stop", type=positive_int, metavar="PATIENCE",
                   help="stop when the validation loss has not improved for PATIENCE epochs (needs --val-split)")
    v.add_argument("--save-best", metavar="PATH",
                   help="write a checkpoint whenever the validation loss reaches a new minimum (needs --val-split)")
    return p


# ----------------------------------------------------------------------------- settings


def resolve_config(args, ckpt) -> dict:
    """Flags given > the checkpoint's settings > DEFAULTS; a flag that contradicts the
    checkpoint is an error, since the run would no longer be the one saved."""
    cfg, given = {}, {k: getattr(args, k) for k in RUN_KEYS if getattr(args, k) is not None}
    if "classes" in given:
        given["classes"] = classes_given(given["classes"])
    for key in RUN_KEYS:
        if ckpt is None:
            cfg[key] = given.get(key, DEFAULTS[key])
            continue
        saved = ckpt.config[key]
        if key in given and given[key] != saved and given[key] != "all":   # 'all': checked once the data is read
            raise CheckpointError(f"{_given(key, given[key])} contradicts the checkpoint {args.resume}, which was "
                                  f"trained with {_given(key, saved)}; drop the flag to continue that run, "
                                  "or start a new one without --resume")
        cfg[key] = saved
    cfg["init"] = cfg["init"] or model.default_init(cfg["activation"])
    if why := optimiser_conflicts(cfg, [k for k in OPTIMISER if k in given]):
        raise UserError(why)
    cfg["epochs"] = args.epochs or (int(ckpt.meta.get("target_epochs", ckpt.epoch)) if ckpt else DEFAULTS["epochs"])
    cfg["val_split"] = resolve_val_split(args.val_split, ckpt, args.resume)
    if ckpt is not None and ckpt.epoch >= cfg["epochs"]:
        raise UserError(f"the checkpoint {args.resume} already holds {ckpt.epoch} epochs; "
                        f"ask for more with --epochs N (N > {ckpt.epoch})")
    if ckpt is not None and ckpt.config["input"] != "pixels":
        raise CheckpointError(f"the checkpoint {args.resume} was fitted by MLPClassifier on features as given, not "
                              "on images: continue it with MLPClassifier (warm_start or partial_fit)")
    return cfg


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _given(key: str, value) -> str:   # as its flag gives it: '--lr 0.1', '--classes 3 7', 'no --nesterov'
    return (flag(key) if value else f"no {flag(key)}") if isinstance(value, bool) else f"{flag(key)} {_show(value)}"


def describe(cfg: dict) -> str:
    """The run's model and optimiser in a few words, as the start line shows them."""
    opt = (f"adam (beta1 {cfg['beta1']}, beta2 {cfg['beta2']}, epsilon {cfg['epsilon']}), " if cfg["solver"] == "adam"
           else f"{'nesterov ' * cfg['nesterov']}momentum {cfg['momentum']}, " if cfg["momentum"] else "")
    return (f"{classes_shown(cfg['classes'])}; H={cfg['hidden']} {cfg['activation']} {cfg['init']} init, {opt}"
            f"lr {cfg['lr']}" + (f", alpha {cfg['alpha']}" if cfg["alpha"] else ""))


# ----------------------------------------------------------------------------- the run


def load_rows(args, cfg: dict, ckpt):
    """The data set (its classes resolved: 'all' becomes the list), and the host rows to train on
    and to validate on ((X, y) pairs; val is None without a split). A resumed run's rows are
    normalised with its checkpoint's mean and std."""
    if (args.early_stop or args.save_best) and not cfg["val_split"]:
        raise UserError(f"{'--early-stop' if args.early_stop else '--save-best'} watches the validation loss, so it "
                        "needs --val-split F (e.g. 0.1): held-out training rows, never the test set")
    norm = {"mean": ckpt.config["mean"], "std": ckpt.config["std"]} if ckpt else {"mean": MNIST_MEAN, "std": MNIST_STD}
    every = args.classes == ["all"] and not args.store      # every label of the data (with --store: the store's)
    data = load_dataset(args.data_dir, "all" if every else cfg["classes"], download=not args.no_download,
                        quiet=args.quiet, **norm)
    if ckpt is not None and every and list(data.classes) != cfg["classes"]:
        raise CheckpointError(f"--classes all is {_show(data.classes)} in this data, but the checkpoint {args.resume} "
                              f"was trained on {_show(cfg['classes'])}; resume on the data it was trained on")
    try:   # labels a checkpoint can keep ('all' takes the data's)
        cfg["classes"] = settings.check("classes", list(data.classes))
    except ValueError as exc:
        raise UserError(f"--classes all: the labels of {data.data_dir} ({_show(data.classes)[:60]}) must be {exc}; "
                        "choose some with --classes") from None
    X, y = data.train.X, data.train.y
    if ckpt is not None and ckpt.config["n_features"] != X.shape[1]:
        raise CheckpointError(f"the checkpoint {args.resume} was trained on {ckpt.config['n_features']} pixels "
                              f"per image, this data has {X.shape[1]}; use the data set it was trained on")
    val = None
    if cfg["val_split"]:
        rows, held = holdout(X.shape[0], cfg["val_split"], cfg["seed"])
        (X, y), val = (X[rows], y[rows]), (X[held], y[held])
    if cfg["batch_size"] != "full" and cfg["batch_size"] > X.shape[0]:
        raise UserError(f"--batch-size {cfg['batch_size']} is larger than the {X.shape[0]:,} training rows; "
                        f"use at most {X.shape[0]} or 'full'")
    return data, (X, y), val, norm


def announce(args, cfg, backend, engine, n: int, n_val: int, n_features: int, ckpt, steps_per_epoch: int) -> None:
    if args.quiet:
        return
    if backend.picked:   # --backend auto (the default) on a GPU: which backend, which engine, and why
        print(f"backend auto -> {backend.name} ({engine.name}): {backend.picked}", file=sys.stderr, flush=True)
    where = f"resuming {args.resume} at epoch {ckpt.epoch}" + (
        f", step {ckpt.step_in_epoch} of {steps_per_epoch}" if ckpt.step_in_epoch else "") if ckpt else "training"
    val = f" (+ {n_val:,} held out for validation)" if n_val else ""
    print(f"{where}: {backend}; {n:,} rows{val} of {n_features} features, {describe(cfg)}, "
          f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, {cfg['dtype']}"
          + ("" if cfg["threads"] is None else f", {cfg['threads']} thread{'s' * (cfg['threads'] > 1)}"),
          file=sys.stderr, flush=True)


def watch(args, backend, cfg: dict, val, save: "Saver", log: EpochLog | None, ckpt) -> History:
    """Validation (its rows to the device, once), the --log file, early stopping, --save-best;
    a resumed run continues from the best validation loss its checkpoint records."""
    if val is not None:
        val = backend.asarray(val[0], cfg["dtype"]), backend.asarray(val[1].reshape(-1, 1), cfg["dtype"])
    history = History(backend, cfg["activation"], val, patience=args.early_stop, log=log,
                      save_best=(lambda state: save(args.save_best, state)) if args.save_best else None,
                      carried=ckpt.meta.get("validation") if ckpt is not None and val is not None else None)
    save.validation = history.carried
    return history


def interrupted(args, argv: list, state: TrainState, save: Saver, signum: int) -> int:
    """After Ctrl-C, SIGTERM or SIGHUP between two steps: save, say how to continue, 128 + signum."""
    where = f"epoch {state.epoch + (1 if state.step_in_epoch else 0)}, step {state.step}"
    by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    kept = "nothing saved (give --save PATH to keep progress)"
    if args.save:
        save(args.save, state)
        again = continue_command("python -m mlp.train", argv, args.save)
        kept = f"checkpoint saved to {args.save}; continue with: {again}"
    print(f"interrupted{by} at {where}; {kept}", file=sys.stderr)
    return exit_code(signum)


def cluster_lost(args, argv: list, cfg, state: TrainState, save: Saver, exc) -> int:
    """The Dask cluster failed: save the last completed step (host data) to --save or a rescue file; exit 5."""
    path = args.save or os.path.join(tempfile.gettempdir(), f"mlp-rescue-{os.getpid()}.npz")
    try:
        save(path, state)                 # checked finite first: on CPU workers without the cluster
    except ClusterLost:                   # on GPU workers the check needs the cluster: saved unchecked
        save(path, state, check=False)
    more = "" if state.epoch >= cfg["epochs"] else "; once the cluster is back, continue with: " + continue_command(
        "python -m mlp.train", argv + ([] if args.save else ["--save", path]), path)
    print(f"mlp.train: cluster lost at epoch {state.epoch + bool(state.step_in_epoch)}, step {state.step}: {exc}; "
          f"the run as of step {state.step} was saved to {path}{more}", file=sys.stderr)
    return EXIT_CLUSTER_LOST


def diverged(exc, cfg, save: Saver) -> DivergedError:
    kept = (f"the last good checkpoint is {save.last['path']} (epoch {save.last['epoch']})" if save.last["path"]
            else "no checkpoint was written (use --save with --checkpoint-every to keep good states)")
    return DivergedError(f"{exc}; the learning rate (--lr {cfg['lr']}) is probably too high for "
                         f"--init {cfg['init']} / --batch-size {cfg['batch_size']}: try a smaller --lr; {kept}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().checked(argv)     # every output checked and locked: a second run writing one is refused
    if args.checkpoint_every and not args.save:
        raise UserError("--checkpoint-every needs --save PATH to know where to write")
    if args.plot:
        plot_format(args.plot)
    ckpt = checkpoint.load(args.resume) if args.resume else None
    cfg = resolve_config(args, ckpt)
    log = EpochLog(args.log, keep_until=ckpt.epoch if ckpt else 0) if args.log else None  # a resumed log: checked now
    cluster = dask_options(args)
    store = open_training_store(args.store, cfg["classes"]) if args.store and cluster else None   # checked now
    if store:   # its classes are the run's (--classes all: the store's)
        cfg["classes"] = store[2]["classes"]
    backend = backends.resolve(args.device, args.backend, cluster)
    data, rows, val, norm = load_rows(args, cfg, ckpt)
    X, y, data_fingerprint = training_arrays(backend, data, rows, cfg["dtype"], store=store)  # to the device, once
    (n, n_features), n_val = X.shape, 0 if val is None else len(val[1])
    steps_per_epoch = batching(n, cfg["batch_size"])[1]
    if note := ckpt and checkpoint.check_same_data(ckpt, args.resume, n, data_fingerprint, steps_per_epoch):
        print(f"note: {note}", file=sys.stderr)   # the data was checked as far as the checkpoint allows
    data_cfg = {"n_features": n_features, "image_shape": list(data.image_shape), "input": "pixels", **norm,
                "n_train": n, "val_split": cfg["val_split"], "data_fingerprint": data_fingerprint}
    state = TrainState.fresh(backend, cfg, n_features) if ckpt is None else TrainState.from_checkpoint(backend, ckpt)
    # the thread pools sized for the run (put back after), the engine (a backend without the one asked for: refused)
    with Run(backend, cfg, X, y, state=state, engine=args.engine, threads=args.threads) as run:
        cfg["threads"] = run.threads
        announce(args, cfg, backend, run.engine, n, n_val, n_features, ckpt, steps_per_epoch)
        save = Saver(run, data_cfg, ckpt, args.resume)
        return train(args, argv, cfg, run, save, history_of=lambda: watch(args, backend, cfg, val, save, log, ckpt),
                     data=data, n=n, n_val=n_val, steps_per_epoch=steps_per_epoch)


def train(args, argv, cfg, run: Run, save: Saver, *, history_of, data, n, n_val, steps_per_epoch) -> int:
    """The epochs, then the test set and the outputs; a stop (Ctrl-C, SIGTERM, SIGHUP), a lost
    cluster or a diverging run each end as docs/errors.md says."""
    backend, state = run.backend, run.state
    progress = Progress(cfg["epochs"], steps_per_epoch, state, enabled=not args.quiet)
    history = history_of()   # checks are done: from here on, files are written

    def on_epoch_end(state: TrainState):
        progress.epoch_line(state, history.epoch_end(state, epoch_train_loss(state, steps_per_epoch)))
        if args.checkpoint_every and state.epoch % args.checkpoint_every == 0 and state.epoch < cfg["epochs"]:
            save(args.save, state)
            progress.note(f"wrote {args.save} (epoch {state.epoch})")
        history.stop_if_stalled(state, cfg["epochs"])

    stopped = None
    try:
        with StopOnSignals() as stop, warnings.catch_warnings():
            # a diverging run overflows; that is reported below in one line, not as warnings
            warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero)", RuntimeWarning)
            run.fit(cfg["epochs"], progress=progress, on_epoch_end=on_epoch_end, stop=stop)
    except EarlyStopped as exc:
        stopped = str(exc)
    except Interrupted:
        progress.close()
        return interrupted(args, argv, state, save, stop.signum)
    except ClusterLost as exc:
        progress.close()
        return cluster_lost(args, argv, cfg, state, save, exc)
    except DivergedError as exc:
        progress.close()
        raise diverged(exc, cfg, save) from None
    finally:
        progress.close()
        history.close()
        run.close_engine()   # CUDA graphs' memory, before the test set is scored
    try:   # the test set is scored on the cluster too: losing it then loses nothing trained
        if not params_finite(backend, state.params):
            raise DivergedError(f"the parameters became non-finite in the last step ({state.step}); "
                                f"try a smaller --lr than {cfg['lr']}")
        finish(args, cfg, backend, state, history, data, n, n_val, steps_per_epoch, stopped, save)
    except ClusterLost as exc:
        return cluster_lost(args, argv, cfg, state, save, exc)
    return 0


def finish(args, cfg, backend, state, history, data, n, n_val, steps_per_epoch, stopped, save) -> None:
    """After training: the test set (for the first time), the summary, and the outputs."""
    if stopped:
        print(stopped, file=sys.stderr)
    written, failed = [], []   # a line for each output written, or one line for those that failed
    if args.save:
        save(args.save, state, check=False)  # just checked finite
        written.append((args.save, f"epoch {state.epoch}"))
    if args.save_best and history.best["written"]:
        written.append((args.save_best, f"epoch {history.best['epoch']}, validation loss "
                                        f"{fmt_loss(history.best['val_loss'])}"))
    log = history.log
    if log is not None and log.error is not None:
        failed.append(f"--log: {write_failure(log.error, args.log)} (it stops at epoch "
                      f"{log.rows[-1]['epoch'] if log.rows else 0})")
    elif log is not None and log.rows:
        written.append((args.log, f"{len(log.rows)} epochs"))
    test = score(backend, state.params, data.test.X, data.test.y, cfg["activation"])
    m = metrics(backend, cfg, state, test, history, engine=save.run.engine.name, n_train=n, n_val=n_val,
                train_loss=epoch_train_loss(state, steps_per_epoch), stopped=stopped)
    print(summary_line(m, test, backend))
    for name, path, write in (("--metrics-json", args.metrics_json, lambda: write_metrics(args.metrics_json, m)),
                              ("--plot", args.plot, lambda: write_loss_plot(args.plot, m, steps_per_epoch, backend))):
        try:
            if path:
                write()
                written.append((path, None))
        except (OSError, ValueError, RuntimeError) as exc:   # never costs the model: it is saved by now
            why = write_failure(exc) if isinstance(exc, OSError) else f"cannot write {path} ({exc})"
            failed.append(f"{name}: {why}")
    if failed:
        kept = ", ".join(f"{p}" + (f" ({d})" if d else "") for p, d in written) or "nothing else was asked for"
        raise UserError(f"{'; '.join(failed)}; written: {kept}")
    for path, detail in written:
        wrote(path, detail)


main.prog = "mlp.train"


def cli() -> None:   # the mlp-train console script
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
