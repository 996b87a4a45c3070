"""Opening hpcxt's HDF5 files with one-line errors for missing, corrupt or old files."""

from __future__ import annotations

from pathlib import Path

import h5py

from ..errors import InputError


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
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found; {hint}", path=path)
    try:
        f = h5py.File(path, "r", locking=locking)
    except OSError as exc:
        raise InputError(f"not a readable HDF5 {what} ({exc})", path=path) from None
    found = int(f.attrs.get("format_version", -1))
    if found != version:
        f.close()
        raise InputError(f"{what} format {found}, this hpcxt reads {version}; {hint}",
                         path=path, field="format_version")
    return f
