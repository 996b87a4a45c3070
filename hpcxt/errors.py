"""Exceptions that the command line turns into one-line errors.

Every problem with what a user gave us (a config typo, a missing or corrupt
file, a wrong column, an empty crop) is raised as :class:`InputError`, which
names the file and the field. ``hpcxt`` prints it as one line starting
``hpcxt: error:`` and exits with status 2, without a traceback unless
``--debug`` is given.
"""

from __future__ import annotations

EXIT_INPUT_ERROR = 2
#: Exit status of ``hpcxt fit`` when a scheduler signal (SIGTERM/SIGUSR1)
#: made it checkpoint and stop before every region had a final status.
EXIT_CHECKPOINTED = 85


class HpcxtError(Exception):
    """Base class of the errors hpcxt reports without a traceback."""

    exit_status = 1


class InputError(HpcxtError):
    """Bad input: names the file and the field (column, key, extension).

    Parameters
    ----------
    message : str
        What is wrong, in the user's words.
    path : str or os.PathLike, optional
        The file the problem is in.
    field : str, optional
        The config key path (``observations[1].arf``), FITS column or
        extension, or HDF5 dataset concerned.
    """

    exit_status = EXIT_INPUT_ERROR

    def __init__(self, message: str, path=None, field: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.field:
            where.append(self.field)
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigError(InputError):
    """One or more problems in a config file, all reported at once."""

    def __init__(self, path, problems: list[str]):
        self.problems = list(problems)
        text = "; ".join(self.problems)
        super().__init__(text, path=path)


class ModelUnavailable(HpcxtError):
    """A spectral model cannot be evaluated here (no XSPEC, no AtomDB)."""

    exit_status = EXIT_INPUT_ERROR
