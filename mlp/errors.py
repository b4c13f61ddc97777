"""The project's errors, at the bottom of the house: every module may import this one, and it imports
none of ours. The commands print each as one line and exit with its code (mlp.cli.run; docs/errors.md):
2 UserError, 3 DivergedError, 4 out of memory, 5 ClusterLost, 128 + N the signal N (Signalled)."""

import signal


class UserError(Exception):
    """Something the user can fix; the message says what and how, in one line."""


class DataError(UserError):
    """A data file that is missing, corrupt, truncated or does not match its partner."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or does not fit the flags given."""


class BackendError(UserError):
    """A device or backend the user asked for that cannot be had (missing library, no GPU)."""


class ClusterLost(Exception):
    """The Dask cluster failed while the run was under way: the scheduler gone or silent, no
    running worker for --scheduler-timeout, workers dying, the scheduler unable to read the tasks.
    The run's state is that of the last completed step (exit 5; mlp.train saves it first)."""


class StepStopped(Exception):
    """An engine gave up the step under way because a stop was requested (Ctrl-C, SIGTERM); the
    state is that of the last completed step (mlp.loop.fit turns it into Interrupted)."""


class DivergedError(Exception):
    """Training produced a non-finite loss or non-finite parameters."""


#: the signals mlp.cli turned into Signalled, in order. Python prints and drops an exception raised
#: inside a gc callback or a __del__, so a Signalled raised there would be lost: the training loop
#: (mlp.loop.StopOnSignals) and the command's exit (mlp.cli.run) read this list instead.
RECEIVED_SIGNALS: list = []


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP (or a second Ctrl-C) stops the command at once: it unwinds like
    Ctrl-C, so temporary files are removed, and exits with 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
