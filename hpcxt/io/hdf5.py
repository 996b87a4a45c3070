"""Opening hpcxt's HDF5 files with one-line errors for missing, corrupt or old files."""

from __future__ import annotations

from pathlib import Path

import h5py

from ..errors import InputError

#: What h5py raises on a damaged file: a bad object header, a missing
#: attribute or dataset, a short read.
_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError)


def _detail(exc) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.replace("Unable to synchronously open file ", "").strip("()") or text


class CheckedFile(h5py.File):
    """An h5py.File whose ``with`` block turns a damaged file's errors into one InputError.

    The readers of bundle.h5, regions.h5 and results.h5 read attributes and
    datasets inside ``with f:``; whatever h5py raises there on a file that is
    truncated, partly overwritten or missing a member becomes "<file>: not a
    readable HDF5 <what>: damaged or incomplete (<h5py's words>)".
    InputErrors raised inside pass through unchanged.
    """

    _hpcxt_what = "file"

    def __exit__(self, exc_type, exc, tb):
        super().__exit__(exc_type, exc, tb)
        if exc_type is not None and issubclass(exc_type, _H5_ERRORS) \
                and not issubclass(exc_type, InputError):
            raise InputError(f"not a readable HDF5 {self._hpcxt_what}: damaged or incomplete "
                             f"({_detail(exc)})", path=self._hpcxt_path) from None
        return False


def open_checked(path, what: str, locking: bool = True) -> CheckedFile:
    """Open an HDF5 file read-only; a damaged file is an InputError now or in ``with``."""
    path = Path(path)
    try:
        f = CheckedFile(path, "r", locking=locking)
    except _H5_ERRORS as exc:
        detail = _detail(exc)
        kind = ("not an HDF5 file" if "signature not found" in detail
                else f"truncated or corrupt ({detail})")
        raise InputError(f"not a readable HDF5 {what}: {kind}", path=path) from None
    f._hpcxt_what, f._hpcxt_path = what, path
    return f


def open_versioned(path, what: str, hint: str, version: int, locking: bool = True) -> h5py.File:
    """Open an hpcxt HDF5 file read-only and check its ``format_version``.

    Parameters
    ----------
    path : path
        The file.
    what : str
        What it is, for messages ("bundle", "region table", "fit results").
    hint : str
        What makes it ("run 'hpcxt prep' first").
    version : int
        The format version this hpcxt reads.
    locking : bool
        HDF5 file locking; off for files another process may be writing.

    Returns
    -------
    CheckedFile
        Use it in a ``with`` block: errors of a damaged file become InputError.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found; {hint}", path=path)
    if path.is_dir():
        raise InputError(f"{what} is a folder, not a file", path=path)
    f = open_checked(path, what, locking=locking)
    try:
        found = int(f.attrs.get("format_version", -1))
    except BaseException as exc:
        f.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if found != version:
        f.close()
        raise InputError(f"{what} format {found}, this hpcxt reads {version}; {hint}",
                         path=path, field="format_version")
    return f
