"""The prep bundle's data in memory: image grid, responses, observations.

Plain containers of numpy arrays (no HDF5): :mod:`hpcxt.io.bundle` reads
and writes them, the kernels compute on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageGrid:
    """The image pixel grid on the sky.

    Image pixel ``[row, col]`` covers sky x in ``[x0 + col*bin, x0 + (col+1)*bin)``
    and sky y in ``[y0 + row*bin, y0 + (row+1)*bin)`` (sky pixels).
    """

    shape: tuple[int, int]
    x0: float
    y0: float
    bin: int
    wcs_header: str = ""

    def pixel_to_sky(self, row, col):
        """Sky x, y (sky pixels) of image pixel centres; row, col 0-based."""
        x = self.x0 + (np.asarray(col, dtype=float) + 0.5) * self.bin
        y = self.y0 + (np.asarray(row, dtype=float) + 0.5) * self.bin
        return x, y

    def sky_to_pixel(self, x, y):
        """Fractional 0-based (row, col) of sky positions; floor() gives the pixel."""
        col = (np.asarray(x, dtype=float) - self.x0) / self.bin
        row = (np.asarray(y, dtype=float) - self.y0) / self.bin
        return row, col

    def header(self):
        """FITS header (astropy.io.fits.Header) with the celestial WCS and the physical (sky) transform."""
        # astropy is imported here, not with the module: it costs every fit
        # worker, which never needs a WCS, about 27 MB.
        from astropy.io import fits

        if self.wcs_header:
            return fits.Header.fromstring(self.wcs_header, sep="\n")
        return fits.Header()

    def wcs(self):
        """The image's astropy.wcs.WCS."""
        from astropy.wcs import WCS

        return WCS(self.header())


@dataclass
class Response:
    """ARF and RMF as arrays (keV, cm**2); rmf_matrix is dense (n_energy, n_channel)."""

    arf_energ_lo: np.ndarray
    arf_energ_hi: np.ndarray
    specresp: np.ndarray
    rmf_energ_lo: np.ndarray
    rmf_energ_hi: np.ndarray
    rmf_matrix: np.ndarray
    e_min: np.ndarray
    e_max: np.ndarray
    offset: int = 1


@dataclass
class ObsData:
    """One observation's cleaned data on the bundle's grid."""

    obsid: str
    exposure: float
    bkg_exposure: float
    bkg_scale: float
    events: dict
    bkg_events: dict | None
    exposure_map: np.ndarray
    fov: np.ndarray
    response: Response
    source_file: str = ""
    background_file: str = ""


@dataclass
class Bundle:
    grid: ImageGrid
    counts: np.ndarray
    background: np.ndarray
    exposure: np.ndarray
    mask: np.ndarray
    observations: list = field(default_factory=list)
    config_hash: str = ""
    energy_band: tuple = (0.7, 8.0)
    has_background: bool = True

    @property
    def obsids(self) -> list[str]:
        return [o.obsid for o in self.observations]
