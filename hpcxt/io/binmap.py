"""Reading users' bins (``fit.bins``): a FITS bin map or a ds9 region file.

Which kind a file is comes from its content (a FITS file starts with
``SIMPLE  =``), not its name. Every way a file can be unusable is a
one-line :class:`~hpcxt.errors.InputError` naming the file and ``fit.bins``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError

FIELD = "fit.bins"


def bins_kind(path) -> str:
    """``"map"`` for a FITS file, ``"regions"`` for anything else (a region file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise InputError(f"cannot read the bins file ({exc.strerror or exc})", path=path,
                         field=FIELD) from None
    return "map" if head == b"SIMPLE  =" else "regions"


def read_bin_map(path):
    """The first 2-D image of a FITS bin map and its celestial WCS.

    Returns
    -------
    values : ndarray (my, mx) float64
        Bin numbers, NaN kept (outside every bin).
    wcs : astropy.wcs.WCS
    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning
    from astropy.wcs import WCS

    from .fitsio import open_fits, reading

    path = Path(path)
    hdul = open_fits(path, "bin map")
    with hdul, reading(path, "bin map"):
        for hdu in hdul:
            if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.data is not None \
                    and hdu.data.ndim == 2:
                break
        else:
            raise InputError("bin map has no 2-D image HDU", path=path, field=FIELD)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(hdu.header, naxis=2)
        if not wcs.has_celestial:
            raise InputError("bin map has no celestial WCS (CTYPE1/CTYPE2 RA---/DEC--)",
                             path=path, field=FIELD)
        values = np.asarray(hdu.data, dtype=np.float64)
    return values, wcs
