"""Errors that are the user's to fix: the CLIs print their one-line message and exit.

    exit 2  UserError (bad flag, missing or corrupt file, impossible device, ...)
    exit 3  DivergedError (the loss or the parameters stopped being finite)
    exit 4  out of memory (CPU or GPU), with the size asked for and what to reduce
    exit 130  interrupted with Ctrl-C (a checkpoint is saved first when --save is given)
"""

from mlp.backends import BackendError


class UserError(Exception):
    """Something the user can fix; the message says what and how, in one line."""


class DataError(UserError):
    """A data file that is missing, corrupt, truncated or does not match its partner."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or does not fit the flags given."""


class DivergedError(Exception):
    """Training produced a non-finite loss or non-finite parameters."""


USER_ERRORS = (UserError, BackendError)
