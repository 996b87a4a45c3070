"""ACIS-I-like responses, and OGIP ARF/RMF files: write ours, read anyone's.

Without CALDB (no network, no CIAO) the simulator and the tests need a
response that behaves like Chandra ACIS-I's. :func:`acis_i_response` builds
one from a handful of published numbers, with these approximations:

* **Effective area** (ARF): a log-log interpolation through anchor points
  that follow the shape of a recent-cycle ACIS-I on-axis ARF: about
  10 cm**2 at 0.3 keV and 50 cm**2 at 0.5 keV (the optical-blocking filter
  and the molecular contamination on it), a peak of about 550 cm**2 near
  1.5 keV, the Si K edge of the CCDs at 1.839 keV and a mild dip from the
  iridium M edges of the mirror near 2.1-2.5 keV, then a fall to about
  130 cm**2 at 7 keV and 12 cm**2 at 11 keV (mirror reflectivity and the
  depletion depth). ``contamination`` scales the optical depth of the
  contaminant, so observations of different years get different
  low-energy areas. No off-axis or per-chip differences: vignetting is
  left to the exposure map.
* **Redistribution** (RMF): one Gaussian per input energy, centred on the
  input energy, with FWHM ``0.07 + 0.03 E`` keV (100 eV at 1 keV, 250 eV
  at 6 keV, as front-illuminated ACIS chips at the aim point). No
  low-energy shoulder, no escape peaks, no charge-transfer-inefficiency
  degradation across the chip. Probabilities below 1e-7 are dropped, so
  each row has one contiguous non-zero range, and every row sums to at
  most 1.
* **Channels**: 1024 PI channels, 14.6 eV wide; channel ``i`` (1-based)
  covers ``[(i-1)*14.6, i*14.6)`` eV, as ACIS PI.
* **Energy grid**: 0.3-11 keV in 10 eV bins (1070 bins), the grid of CIAO's
  ``mkacisrmf``/``mkarf`` for ACIS.

:func:`write_arf` and :func:`write_rmf` write OGIP files (CAL/GEN/92-002)
that Sherpa, XSPEC and CIAO read. :func:`read_response` reads ours and real
CIAO ones (several channel groups per row, variable-length or fixed
columns, channel numbering from 0 or 1, column names in any case) into the
dense :class:`~hpcxt.io.bundle.Response` the bundle stores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.special import ndtr

from ..errors import InputError
from ..data import Response
from ..io.fitsio import missing_hdu_hint, open_fits, reading, set_header_text
from ..rmf import nonzero_ranges

#: Anchor points of the ACIS-I effective area, (keV, cm**2); interpolated in
#: log-log. Pairs of close energies make the edges.
_AREA_ANCHORS = np.array([
    (0.30, 10.0), (0.40, 25.0), (0.50, 50.0), (0.60, 92.0), (0.70, 145.0),
    (0.80, 205.0), (1.00, 330.0), (1.20, 440.0), (1.50, 550.0), (1.70, 545.0),
    (1.838, 535.0), (1.840, 470.0), (2.00, 460.0), (2.10, 440.0), (2.30, 395.0),
    (2.60, 390.0), (3.00, 375.0), (4.00, 330.0), (5.00, 265.0), (6.00, 195.0),
    (7.00, 130.0), (8.00, 80.0), (9.00, 45.0), (10.0, 24.0), (11.0, 12.0),
])

#: Smallest redistribution probability kept in a matrix row.
MATRIX_THRESHOLD = 1e-7
#: ACIS PI channels: how many, and the width of one, keV (14.6 eV).
ACIS_CHANNELS = 1024
ACIS_CHANNEL_WIDTH_KEV = 0.0146


def effective_area(energy_keV, contamination: float = 1.0) -> np.ndarray:
    """ACIS-I-like on-axis effective area.

    Parameters
    ----------
    energy_keV : array_like
        Photon energies, keV (0.3-11 keV; clipped to that range outside).
    contamination : float
        Optical depth of the contaminant on the filter relative to the
        anchor curve (1 = the curve itself; 1.2 = 20 % more contaminant).

    Returns
    -------
    numpy.ndarray
        Effective area, cm**2, same shape as ``energy_keV``.
    """
    e = np.clip(np.asarray(energy_keV, dtype=float), _AREA_ANCHORS[0, 0], _AREA_ANCHORS[-1, 0])
    area = np.exp(np.interp(np.log(e), np.log(_AREA_ANCHORS[:, 0]), np.log(_AREA_ANCHORS[:, 1])))
    # The contaminant's optical depth falls steeply with energy (about 0.5 at
    # 0.5 keV in the anchor curve); only the change from the curve is applied.
    tau = 0.5 * (e / 0.5) ** -2.6
    return area * np.exp(-(contamination - 1.0) * tau)


def fwhm_keV(energy_keV) -> np.ndarray:
    """FWHM of the ACIS-I redistribution, keV, at photon energy ``energy_keV`` (keV)."""
    return 0.07 + 0.03 * np.asarray(energy_keV, dtype=float)


def acis_i_response(n_channels: int = ACIS_CHANNELS,
                    channel_width_keV: float = ACIS_CHANNEL_WIDTH_KEV,
                    e_lo: float = 0.3, e_hi: float = 11.0, n_energy: int = 1070,
                    contamination: float = 1.0) -> Response:
    """An ACIS-I-like ARF and RMF on one energy grid.

    Parameters
    ----------
    n_channels : int
        PI channels (1024 for ACIS).
    channel_width_keV : float
        Width of a PI channel, keV; channel ``i`` (1-based) covers
        ``[(i-1)*w, i*w)``.
    e_lo, e_hi : float
        Energy range of the response, keV.
    n_energy : int
        Number of energy bins (equal widths) between ``e_lo`` and ``e_hi``.
    contamination : float
        Relative optical depth of the low-energy contaminant, see
        :func:`effective_area`.

    Returns
    -------
    Response
        ``arf_energ_lo/hi`` and ``rmf_energ_lo/hi`` (n_energy,) keV,
        ``specresp`` (n_energy,) cm**2, ``rmf_matrix`` (n_energy, n_channels)
        float32 with rows summing to at most 1, ``e_min/e_max``
        (n_channels,) keV, ``offset`` 1.
    """
    if n_channels < 1 or n_energy < 1 or not 0 < e_lo < e_hi or channel_width_keV <= 0:
        raise ValueError("need n_channels, n_energy >= 1, 0 < e_lo < e_hi and a positive width")
    edges = np.linspace(e_lo, e_hi, n_energy + 1)
    energ_lo, energ_hi = edges[:-1], edges[1:]
    e_mid = 0.5 * (energ_lo + energ_hi)
    ch_edges = np.arange(n_channels + 1) * channel_width_keV
    sigma = fwhm_keV(e_mid) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    cdf = ndtr((ch_edges[None, :] - e_mid[:, None]) / sigma[:, None])
    matrix = np.diff(cdf, axis=1)
    matrix[matrix < MATRIX_THRESHOLD] = 0.0
    # float32 rounding can lift a row's sum a few 1e-8 above 1; the 1e-6
    # shortfall keeps every row a probability (sum <= 1) after the cast.
    matrix *= (1.0 - 1e-6) / np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
    return Response(
        arf_energ_lo=energ_lo.copy(), arf_energ_hi=energ_hi.copy(),
        specresp=effective_area(e_mid, contamination),
        rmf_energ_lo=energ_lo.copy(), rmf_energ_hi=energ_hi.copy(),
        rmf_matrix=matrix.astype(np.float32),
        e_min=ch_edges[:-1].copy(), e_max=ch_edges[1:].copy(), offset=1)


def fold(response: Response, photon_flux) -> np.ndarray:
    """Counts per second in each channel of a photon spectrum seen through ``response``.

    Parameters
    ----------
    response : Response
        ARF and RMF on the same energy grid.
    photon_flux : array_like, shape (n_energy,)
        Photons cm**-2 s**-1 in each energy bin.

    Returns
    -------
    numpy.ndarray, shape (n_channel,)
        Counts s**-1 per channel (float64).
    """
    flux = np.asarray(photon_flux, dtype=float)
    return (flux * response.specresp) @ response.rmf_matrix.astype(np.float64)


# --------------------------------------------------------------------------
# writing


def _common_keys(header: fits.Header, obsid=None) -> None:
    header["TELESCOP"] = ("CHANDRA", "mission")
    header["INSTRUME"] = ("ACIS", "instrument")
    header["DETNAM"] = ("ACIS-0123", "ACIS-I chips")
    header["FILTER"] = ("NONE", "filter")
    if obsid is not None:
        set_header_text(header, "OBS_ID", str(obsid), "observation id")


def write_arf(path, response: Response, obsid=None) -> Path:
    """Write the ARF of ``response`` as an OGIP SPECRESP file.

    Parameters
    ----------
    path : path
        Output file, overwritten.
    response : Response
        Its ``arf_energ_lo/hi`` (keV) and ``specresp`` (cm**2) are written.
    obsid : str, optional
        Written as OBS_ID.

    Returns
    -------
    Path
    """
    path = Path(path)
    cols = [
        fits.Column("ENERG_LO", "E", unit="keV", array=np.asarray(response.arf_energ_lo)),
        fits.Column("ENERG_HI", "E", unit="keV", array=np.asarray(response.arf_energ_hi)),
        fits.Column("SPECRESP", "E", unit="cm**2", array=np.asarray(response.specresp)),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name="SPECRESP")
    h = hdu.header
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("RESPONSE", "dataset relates to spectral response")
    h["HDUCLAS2"] = ("SPECRESP", "dataset is an ancillary response")
    h["HDUVERS"] = ("1.1.0", "version of the format")
    _common_keys(h, obsid)
    primary = fits.PrimaryHDU()
    _common_keys(primary.header, obsid)
    primary.header["CREATOR"] = "hpcxt.prep.response"
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([primary, hdu]).writeto(path, overwrite=True)
    return path


def _compress_rows(matrix: np.ndarray, offset: int):
    """One channel group per row: (n_grp, f_chan, n_chan, values) over the non-zero range."""
    has, first, stop = nonzero_ranges(matrix)
    n_grp = has.astype(np.int16)
    f_chan = np.where(has, first + offset, 0).astype(np.int32)
    n_chan = (stop - first).astype(np.int32)
    values = np.empty(matrix.shape[0], dtype=object)
    for i in range(matrix.shape[0]):
        values[i] = np.asarray(matrix[i, first[i]:stop[i]], dtype=np.float32)
    return n_grp, f_chan, n_chan, values


def write_rmf(path, response: Response, obsid=None) -> Path:
    """Write the RMF of ``response`` as an OGIP RSP_MATRIX file (MATRIX + EBOUNDS).

    Each matrix row is stored as one channel group over its non-zero range
    (``N_GRP`` 1, scalar ``F_CHAN``/``N_CHAN``, variable-length ``MATRIX``);
    channels are numbered from ``response.offset`` (``TLMIN`` of F_CHAN).

    Parameters
    ----------
    path : path
        Output file, overwritten.
    response : Response
        Its ``rmf_*``, ``e_min``, ``e_max`` and ``offset`` are written.
    obsid : str, optional
        Written as OBS_ID.

    Returns
    -------
    Path
    """
    path = Path(path)
    matrix = np.asarray(response.rmf_matrix)
    n_chan_total = matrix.shape[1]
    offset = int(response.offset)
    n_grp, f_chan, n_chan, values = _compress_rows(matrix, offset)
    cols = [
        fits.Column("ENERG_LO", "E", unit="keV", array=np.asarray(response.rmf_energ_lo)),
        fits.Column("ENERG_HI", "E", unit="keV", array=np.asarray(response.rmf_energ_hi)),
        fits.Column("N_GRP", "I", array=n_grp),
        fits.Column("F_CHAN", "J", array=f_chan),
        fits.Column("N_CHAN", "J", array=n_chan),
        fits.Column("MATRIX", "PE()", array=values),
    ]
    mhdu = fits.BinTableHDU.from_columns(cols, name="MATRIX")
    h = mhdu.header
    h["TLMIN4"] = (offset, "first channel number")
    h["TLMAX4"] = (offset + n_chan_total - 1, "last channel number")
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("RESPONSE", "dataset relates to spectral response")
    h["HDUCLAS2"] = ("RSP_MATRIX", "dataset is a spectral response matrix")
    h["HDUCLAS3"] = ("REDIST", "photon redistribution matrix only")
    h["HDUVERS"] = ("1.3.0", "version of the format")
    h["DETCHANS"] = (n_chan_total, "number of PI channels")
    h["CHANTYPE"] = ("PI", "channel type")
    h["LO_THRES"] = (MATRIX_THRESHOLD, "smallest probability kept")
    _common_keys(h, obsid)

    channels = np.arange(offset, offset + n_chan_total, dtype=np.int32)
    ecols = [
        fits.Column("CHANNEL", "J", array=channels),
        fits.Column("E_MIN", "E", unit="keV", array=np.asarray(response.e_min)),
        fits.Column("E_MAX", "E", unit="keV", array=np.asarray(response.e_max)),
    ]
    ehdu = fits.BinTableHDU.from_columns(ecols, name="EBOUNDS")
    h = ehdu.header
    h["TLMIN1"] = (offset, "first channel number")
    h["TLMAX1"] = (offset + n_chan_total - 1, "last channel number")
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("RESPONSE", "dataset relates to spectral response")
    h["HDUCLAS2"] = ("EBOUNDS", "nominal energies of PI channels")
    h["HDUVERS"] = ("1.2.0", "version of the format")
    h["DETCHANS"] = (n_chan_total, "number of PI channels")
    h["CHANTYPE"] = ("PI", "channel type")
    _common_keys(h, obsid)

    primary = fits.PrimaryHDU()
    _common_keys(primary.header, obsid)
    primary.header["CREATOR"] = "hpcxt.prep.response"
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([primary, mhdu, ehdu]).writeto(path, overwrite=True)
    return path


# --------------------------------------------------------------------------
# reading


def _open(path, what: str) -> fits.HDUList:
    return open_fits(path, f"{what} file")


def _find_hdu(hdul, path, names: tuple, hduclas2: tuple, what: str):
    """First table whose EXTNAME is in ``names`` or whose HDUCLAS2 is in ``hduclas2``."""
    for hdu in hdul[1:]:
        if not isinstance(hdu, fits.BinTableHDU):
            continue
        if (hdu.name or "").upper() in names:
            return hdu
    for hdu in hdul[1:]:
        if not isinstance(hdu, fits.BinTableHDU):
            continue
        if str(hdu.header.get("HDUCLAS2", "")).strip().upper() in hduclas2:
            return hdu
    raise InputError(f"no {names[0]} extension (the {what}){missing_hdu_hint(hdul)}", path=path,
                     field=names[0])


def _column(hdu, path, name: str, required: bool = True):
    """Column ``name`` (any case) of a table HDU, with its 1-based index."""
    for i, col in enumerate(hdu.columns.names, start=1):
        if col.upper() == name:
            return hdu.data[col], i
    if not required:
        return None, None
    have = ", ".join(hdu.columns.names)
    raise InputError(f"extension {hdu.name} has no column {name} (has: {have})",
                     path=path, field=name)


def _energy_keV(hdu, index: int, values) -> np.ndarray:
    """Column values in keV (a few files give energies in eV)."""
    unit = str(hdu.header.get(f"TUNIT{index}", "keV")).strip().lower()
    out = np.asarray(values, dtype=np.float64)
    return out / 1000.0 if unit == "ev" else out


def _as_row(value) -> np.ndarray:
    """A cell of a fixed, variable-length or scalar column as a 1-D array."""
    return np.atleast_1d(np.asarray(value))


def _read_arf(path) -> tuple:
    path = Path(path)
    with _open(path, "ARF") as hdul, reading(path, "ARF file"):
        hdu = _find_hdu(hdul, path, ("SPECRESP",), ("SPECRESP",), "effective area")
        lo, ilo = _column(hdu, path, "ENERG_LO")
        hi, ihi = _column(hdu, path, "ENERG_HI")
        area, _ = _column(hdu, path, "SPECRESP")
        lo, hi = _energy_keV(hdu, ilo, lo), _energy_keV(hdu, ihi, hi)
        area = np.asarray(area, dtype=np.float64)
    if lo.size == 0 or not np.all(np.isfinite(area)):
        raise InputError("SPECRESP is empty or not finite", path=path, field="SPECRESP")
    return lo, hi, area


def _read_rmf(path) -> tuple:
    path = Path(path)
    with _open(path, "RMF") as hdul, reading(path, "RMF file"):
        mhdu = _find_hdu(hdul, path, ("MATRIX", "SPECRESP MATRIX"), ("RSP_MATRIX",),
                         "redistribution matrix")
        ehdu = _find_hdu(hdul, path, ("EBOUNDS",), ("EBOUNDS",), "channel energies")
        lo, ilo = _column(mhdu, path, "ENERG_LO")
        hi, ihi = _column(mhdu, path, "ENERG_HI")
        n_grp, _ = _column(mhdu, path, "N_GRP")
        f_chan, i_fchan = _column(mhdu, path, "F_CHAN")
        n_chan, _ = _column(mhdu, path, "N_CHAN")
        values, _ = _column(mhdu, path, "MATRIX")
        channel, i_chan = _column(ehdu, path, "CHANNEL")
        e_min, i_emin = _column(ehdu, path, "E_MIN")
        e_max, i_emax = _column(ehdu, path, "E_MAX")

        channel = np.asarray(channel, dtype=np.int64)
        order = np.argsort(channel)
        e_min = _energy_keV(ehdu, i_emin, e_min)[order]
        e_max = _energy_keV(ehdu, i_emax, e_max)[order]
        n_channels = int(mhdu.header.get("DETCHANS", channel.size))
        if n_channels != channel.size:
            raise InputError(f"DETCHANS is {n_channels} but EBOUNDS has {channel.size} channels",
                             path=path, field="DETCHANS")
        # The first channel number: TLMIN of F_CHAN, as OGIP says; files
        # without it number channels as their EBOUNDS do.
        tlmin = mhdu.header.get(f"TLMIN{i_fchan}")
        if tlmin is None:
            tlmin = ehdu.header.get(f"TLMIN{i_chan}")
        offset = int(tlmin) if tlmin is not None else (int(channel.min()) if channel.size else 1)

        lo, hi = _energy_keV(mhdu, ilo, lo), _energy_keV(mhdu, ihi, hi)
        n_rows = lo.size
        dense = np.zeros((n_rows, n_channels), dtype=np.float32)
        n_grp = np.asarray(n_grp, dtype=np.int64)
        for i in range(n_rows):
            ngrp = int(n_grp[i])
            if ngrp <= 0:
                continue
            fc = _as_row(f_chan[i]).astype(np.int64)
            nc = _as_row(n_chan[i]).astype(np.int64)
            row = _as_row(values[i]).astype(np.float32)
            if fc.size < ngrp or nc.size < ngrp:
                raise InputError(f"MATRIX row {i + 1} has N_GRP {ngrp} but {fc.size} F_CHAN "
                                 "entries", path=path, field="F_CHAN")
            pos = 0
            for g in range(ngrp):
                start = int(fc[g]) - offset
                count = int(nc[g])
                if start < 0 or start + count > n_channels or pos + count > row.size:
                    raise InputError(f"MATRIX row {i + 1} group {g + 1} (F_CHAN {fc[g]}, "
                                     f"N_CHAN {count}) is outside the {n_channels} channels "
                                     f"or its MATRIX values", path=path, field="MATRIX")
                dense[i, start:start + count] = row[pos:pos + count]
                pos += count
    return lo, hi, dense, e_min, e_max, offset


def read_response(arf_path, rmf_path) -> Response:
    """Read an OGIP ARF and RMF into a dense :class:`~hpcxt.io.bundle.Response`.

    Parameters
    ----------
    arf_path : path
        ARF with a SPECRESP extension (ENERG_LO, ENERG_HI keV; SPECRESP cm**2).
    rmf_path : path
        RMF with a MATRIX (or SPECRESP MATRIX) extension and EBOUNDS. Rows
        may hold several channel groups (F_CHAN/N_CHAN as scalars, fixed or
        variable-length arrays); the first channel number is TLMIN of
        F_CHAN (0 or 1), else the lowest EBOUNDS CHANNEL.

    Returns
    -------
    Response
        Energies in keV (float64), area in cm**2, dense matrix
        (n_energy, n_channel) float32; ``offset`` is the first channel
        number.

    Raises
    ------
    InputError
        A file is missing, not FITS, or lacks an extension or column; the
        message names the file and the extension or column.
    """
    arf_lo, arf_hi, area = _read_arf(arf_path)
    rmf_lo, rmf_hi, matrix, e_min, e_max, offset = _read_rmf(rmf_path)
    if arf_lo.size != rmf_lo.size or not np.allclose(arf_lo, rmf_lo, rtol=1e-5, atol=1e-7):
        raise InputError(f"energy grid of the ARF ({arf_lo.size} bins) differs from the "
                         f"RMF's {Path(rmf_path)} ({rmf_lo.size} bins)", path=arf_path,
                         field="ENERG_LO")
    return Response(arf_energ_lo=arf_lo, arf_energ_hi=arf_hi, specresp=area,
                    rmf_energ_lo=rmf_lo, rmf_energ_hi=rmf_hi, rmf_matrix=matrix,
                    e_min=e_min, e_max=e_max, offset=offset)
