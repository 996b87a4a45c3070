"""Response matrices in OGIP's compressed form (pure numpy).

An RMF row (one energy bin) is stored as groups of contiguous non-zero
channels; hpcxt writes and hands to Sherpa one group per row, spanning the
row's non-zero range.
"""

from __future__ import annotations

import numpy as np


def nonzero_ranges(matrix: np.ndarray):
    """Each row's non-zero channel range.

    Parameters
    ----------
    matrix : ndarray, shape (n_energy, n_channel)

    Returns
    -------
    has : ndarray, shape (n_energy,), bool
        The row has a non-zero element.
    first, stop : ndarray, shape (n_energy,), int64
        Its first non-zero column and one past its last (0, 0 where none).
    """
    nonzero = np.asarray(matrix) != 0
    has = nonzero.any(axis=1)
    first = np.where(has, np.argmax(nonzero, axis=1), 0)
    stop = np.where(has, matrix.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0)
    return has, first.astype(np.int64), stop.astype(np.int64)


def compress_rmf(matrix: np.ndarray, offset: int = 1):
    """Dense RMF to Sherpa's grouped form, one group per energy row.

    Parameters
    ----------
    matrix : ndarray, shape (n_energy, n_channel)
        Redistribution probabilities.
    offset : int
        Channel number of column 0.

    Returns
    -------
    n_grp, f_chan, n_chan : ndarray, shape (n_energy,), int64
        Groups per row (0 or 1), first channel and channel count of each
        row's non-zero range (rows without a group are left out of
        ``f_chan``/``n_chan``, as OGIP does).
    values : ndarray, shape (sum(n_chan),), float64
        The matrix elements of those ranges, row after row.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    has, first, stop = nonzero_ranges(matrix)
    n_grp = has.astype(np.int64)
    f_chan = first[has] + offset
    n_chan = stop[has] - first[has]
    values = (np.concatenate([matrix[i, first[i]:stop[i]] for i in np.flatnonzero(has)])
              if has.any() else np.zeros(0))
    return n_grp, f_chan, n_chan, values
