"""
The errors a user can cause, and the exit code the command line gives each.

Every expected failure is one of these (or a subclass); ``sqs-pyro`` prints
one line ``sqs-pyro COMMAND: error: ...`` on stderr and exits with the code of
:data:`EXIT_CODES` (a traceback only with ``--debug``).

==== ==========================================================================
code meaning
==== ==========================================================================
0    success
1    an unexpected internal error (a bug: rerun with ``--debug`` and report it)
2    bad configuration or command line (:class:`ConfigError`, argparse errors)
3    a missing, unreadable, corrupted or untrusted input file
     (:class:`InputFileError`, ``CheckpointError``, ``CompressedFileError``)
4    the run directory is in use by another process (:class:`RunDirBusyError`)
5    the run directory holds another run's files, or ``--resume`` with a changed
     config (:class:`RunMismatchError`)
6    the loss or the parameters became NaN or infinite (``NonFiniteLossError``)
130  interrupted (Ctrl-C)
==== ==========================================================================

Example::

    >>> exit_code(ConfigError("[compress] lr = -1: must be > 0"))
    2
    >>> exit_code(RunDirBusyError("runs/x is in use"))
    4
"""

__all__ = [
    "EXIT_CODES",
    "ConfigError",
    "InputFileError",
    "RunDirBusyError",
    "RunMismatchError",
    "exit_code",
]


class ConfigError(ValueError):
    """A configuration value of the wrong type or out of range, naming the file, key, value and what is allowed."""

    exit_code = 2


class InputFileError(ValueError):
    """A file the run needs is missing, is a directory, or cannot be trusted."""

    exit_code = 3


class RunDirBusyError(RuntimeError):
    """Another live process holds the run directory's lock."""

    exit_code = 4


class RunMismatchError(ValueError):
    """A file in the run directory belongs to another run (other config or other base network)."""

    exit_code = 5


#: ``exit code -> meaning`` (the table of the module docstring).
EXIT_CODES = {
    0: "success",
    1: "unexpected internal error (rerun with --debug for the traceback)",
    2: "bad configuration or command line",
    3: "missing, unreadable, corrupted or untrusted input file",
    4: "run directory in use by another process",
    5: "run directory holds another run's files (or --resume with a changed config)",
    6: "loss or parameters became NaN or infinite",
    130: "interrupted",
}


def exit_code(error):
    """The exit code of an exception: its class's ``exit_code`` (the errors of this module, and
    :class:`~sqs_pyro.run.checkpoint.CheckpointError`, :class:`~sqs_pyro.export.CompressedFileError`,
    :class:`~sqs_pyro.run.trainer.NonFiniteLossError`), else by its builtin type; 1 for anything unexpected."""
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(error, KeyboardInterrupt):
        return 130
    if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                          UnicodeDecodeError)):
        return 3
    if isinstance(error, (ValueError, FileExistsError)):
        return 2
    return 1
