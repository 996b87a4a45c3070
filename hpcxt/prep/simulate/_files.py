"""Chandra-format files: level-2 event files (streamed), images with CIAO's WCS, DS9 regions.

Event files are written a chunk of rows at a time, so an observation of
tens of millions of events never has to be in memory at once: the EVENTS
header goes out with ``NAXIS2 = 0``, the rows follow, and the header is
rewritten in place (same length) once they are counted. The bytes are the
ones astropy would write for the whole table, and the file appears under
its name only when complete (:func:`~hpcxt.io.workdir.atomic_write`).
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

import numpy as np
from astropy.io import fits

from ...io.fitsio import SkyFrame, write_image
from ...io.workdir import atomic_write
from ..response import ACIS_CHANNELS
from ._acis import CHIP_PIXELS, DTCOR, IMAGE_BIN, MJDREF

#: FITS blocks are 2880 bytes; binary-table data is padded with zeros.
_BLOCK = 2880
#: The EVENTS table: column, FITS format, unit.
EVENT_COLUMNS = (
    ("time", "D", "s"), ("ccd_id", "I", ""), ("node_id", "I", ""), ("chipx", "I", "pixel"),
    ("chipy", "I", "pixel"), ("x", "E", "pixel"), ("y", "E", "pixel"), ("energy", "E", "eV"),
    ("pi", "J", "chan"), ("grade", "I", ""), ("status", "32X", ""),
)
_LIMITS = {"ccd_id": (0, 9), "node_id": (0, 3), "chipx": (1, CHIP_PIXELS),
           "chipy": (1, CHIP_PIXELS), "x": (0.5, 8192.5), "y": (0.5, 8192.5),
           "energy": (0.0, 1.0e6), "pi": (1, ACIS_CHANNELS), "grade": (0, 255)}
_GTI_COLUMNS = (("START", "D", "s"), ("STOP", "D", "s"))
#: Numpy type of each FITS binary-table format letter (big-endian, as stored).
_FITS_TYPES = {"D": ">f8", "E": ">f4", "J": ">i4", "I": ">i2"}


def _date(t: float) -> str:
    return (datetime(1998, 1, 1) + timedelta(seconds=float(t))).strftime("%Y-%m-%dT%H:%M:%S")


def table_rows(columns, arrays: dict) -> np.ndarray:
    """Rows of a binary table as stored in the file (big-endian; bit columns packed)."""
    fields = []
    for name, fmt, _ in columns:
        if fmt.endswith("X"):
            fields.append((name, "u1", (int(fmt[:-1]) + 7) // 8))
        else:
            fields.append((name, _FITS_TYPES[fmt]))
    n = len(arrays[columns[0][0]])
    rows = np.empty(n, dtype=np.dtype(fields))
    for name, fmt, _ in columns:
        a = np.asarray(arrays[name])
        rows[name] = np.packbits(a, axis=1) if fmt.endswith("X") else a
    return rows


def _padding(nbytes: int, fill: bytes) -> bytes:
    return fill * (-nbytes % _BLOCK)


def _table_header(columns, name: str, nrows: int) -> fits.Header:
    cols = [fits.Column(name=c, format=fmt, unit=unit or None) for c, fmt, unit in columns]
    return fits.BinTableHDU.from_columns(cols, nrows=nrows, name=name).header


def _table_hdu_bytes(header: fits.Header, rows: np.ndarray) -> bytes:
    data = rows.tobytes()
    return header.tostring().encode("ascii") + data + _padding(len(data), b"\0")


def observation_keys(h: fits.Header, ptg, obj: str, tstart: float, tstop: float,
                     exposure: float, ontime: float) -> None:
    """The keywords CIAO puts in every header of an event file."""
    s = ptg.spec
    h["TELESCOP"] = ("CHANDRA", "mission")
    h["INSTRUME"] = ("ACIS", "instrument")
    h["DETNAM"] = ("ACIS-0123", "chips")
    h["OBS_ID"] = (s.obsid, "observation id")
    h["OBJECT"] = (obj, "source name")
    h["DATAMODE"] = ("VFAINT", "telemetry mode")
    h["READMODE"] = ("TIMED", "")
    h["CREATOR"] = ("hpcxt.prep.simulate", "synthetic data")
    h["DATE"] = ("2024-01-01T00:00:00", "fixed, so files are reproducible")
    h["DATE-OBS"] = (_date(tstart), "TT")
    h["DATE-END"] = (_date(tstop), "TT")
    h["MJDREF"] = (MJDREF, "MJD of time 0 (TT)")
    h["TIMESYS"] = ("TT", "")
    h["TIMEREF"] = ("LOCAL", "")
    h["TIMEUNIT"] = ("s", "")
    h["TIMEZERO"] = (0.0, "")
    h["TSTART"] = (tstart, "s")
    h["TSTOP"] = (tstop, "s")
    h["ONTIME"] = (ontime, "s")
    h["LIVETIME"] = (exposure, "s")
    h["EXPOSURE"] = (exposure, "s")
    h["DTCOR"] = (DTCOR, "dead-time correction")
    h["RA_NOM"] = (ptg.ra_nom, "tangent point, deg")
    h["DEC_NOM"] = (ptg.dec_nom, "tangent point, deg")
    h["ROLL_NOM"] = (s.roll_deg, "deg")
    h["RA_PNT"] = (ptg.ra_pnt, "aim point, deg")
    h["DEC_PNT"] = (ptg.dec_pnt, "aim point, deg")
    h["ROLL_PNT"] = (s.roll_deg, "deg")
    h["EQUINOX"] = (2000.0, "")
    h["RADECSYS"] = ("ICRS", "")


def _events_header(ptg, keys: tuple) -> fits.Header:
    """EVENTS header, 0 rows: limits, the sky WCS of the x/y columns, the observation."""
    tstart, tstop = keys[1], keys[2]
    h = _table_header(EVENT_COLUMNS, "EVENTS", 0)
    names = [c[0] for c in EVENT_COLUMNS]
    for i, name in enumerate(names, start=1):
        if name in _LIMITS:
            h[f"TLMIN{i}"], h[f"TLMAX{i}"] = _LIMITS[name]
        if name == "time":
            h[f"TLMIN{i}"], h[f"TLMAX{i}"] = tstart, tstop
    f = ptg.frame
    for i, ctype, crpix, crval, cdelt in (
            (1 + names.index("x"), "RA---TAN", f.crpix_x, f.ra0, f.cdelt_x),
            (1 + names.index("y"), "DEC--TAN", f.crpix_y, f.dec0, f.cdelt_y)):
        h[f"TCTYP{i}"] = ctype
        h[f"TCRPX{i}"] = crpix
        h[f"TCRVL{i}"] = crval
        h[f"TCDLT{i}"] = cdelt
        h[f"TCUNI{i}"] = "deg"
    h["HDUCLASS"] = ("OGIP", "")
    h["HDUCLAS1"] = ("EVENTS", "")
    h["HDUCLAS2"] = ("ALL", "")
    h["HDUNAME"] = ("EVENTS", "")
    observation_keys(h, ptg, *keys)
    return h


def _gti_hdu_bytes(ccd, tstart: float, tstop: float) -> bytes:
    """One GTI extension: the whole observation, for chip ``ccd`` (None: all chips)."""
    h = _table_header(_GTI_COLUMNS, "GTI", 1)
    if ccd is not None:
        h["CCD_ID"] = (int(ccd), "chip")
    h["HDUCLASS"] = "OGIP"
    h["HDUCLAS1"] = "GTI"
    h["HDUCLAS2"] = "STANDARD"
    h["HDUNAME"] = "GTI" if ccd is None else f"GTI{int(ccd)}"
    rows = table_rows(_GTI_COLUMNS, {"START": [tstart], "STOP": [tstop]})
    return _table_hdu_bytes(h, rows)


class _RowStream:
    """Where :func:`event_file` callers write their chunks of events."""

    def __init__(self, file):
        self._file = file
        self.rows = 0
        self.nbytes = 0

    def write(self, events: dict) -> None:
        """Append events (a dict of the :data:`EVENT_COLUMNS` arrays), in time order."""
        data = table_rows(EVENT_COLUMNS, events)
        self._file.write(data.tobytes())
        self.rows += data.size
        self.nbytes += data.nbytes


@contextlib.contextmanager
def event_file(path, ptg, obj: str, tstart: float, tstop: float, exposure: float,
               ontime: float, gti_ccds):
    """Write a level-2 event file chunk by chunk; yields an object with ``write(events)``.

    Parameters
    ----------
    path : path
        The file; it appears only when the ``with`` block ends without error.
    ptg : Pointing
        Its sky frame and observation.
    obj : str
        OBJECT keyword.
    tstart, tstop, exposure, ontime : float
        Seconds: the time range (also the GTIs), the livetime, the on time.
    gti_ccds : sequence
        One GTI extension per chip id (``None``: one GTI for all chips).
    """
    keys = (obj, tstart, tstop, exposure, ontime)
    primary = fits.PrimaryHDU()
    observation_keys(primary.header, ptg, *keys)
    header = _events_header(ptg, keys)
    with atomic_write(path, fsync=False) as tmp, open(tmp, "wb") as f:
        f.write(primary.header.tostring().encode("ascii"))
        at = f.tell()
        f.write(header.tostring().encode("ascii"))
        stream = _RowStream(f)
        yield stream
        f.write(_padding(stream.nbytes, b"\0"))
        header["NAXIS2"] = stream.rows
        f.seek(at)
        f.write(header.tostring().encode("ascii"))
        f.seek(0, 2)
        for k in gti_ccds:
            f.write(_gti_hdu_bytes(k, tstart, tstop))


def image_header(frame: SkyFrame, x0: float, y0: float, shape) -> fits.Header:
    """Celestial WCS plus CIAO's physical transform for an image binned by IMAGE_BIN
    whose pixel [0, 0] starts at sky pixel (x0, y0)."""
    h = frame.image_header(x0, y0, IMAGE_BIN, shape)
    # CIAO also names the physical axes' WCS type, and lists LTV before LTM.
    h.insert("CTYPE1P", ("WCSTY1P", "PHYSICAL"))
    h.insert("CTYPE1P", ("WCSTY2P", "PHYSICAL"))
    for key in ("LTM1_1", "LTM2_2"):
        h[key] = h.pop(key)
    return h


def write_fits_image(path, data, frame: SkyFrame, x0: float, y0: float, bunit: str,
                     extra: dict):
    """A 2-D image on the bin-IMAGE_BIN grid from (x0, y0) of ``frame``, BUNIT always set."""
    header = image_header(frame, x0, y0, np.shape(data))
    return write_image(path, data, header, extra={"BUNIT": bunit, **extra})


def region_text(shapes: list) -> str:
    """A DS9 region file (fk5) holding ``shapes``."""
    head = ("# Region file format: DS9 version 4.1\n"
            'global color=green dashlist=8 3 width=1 font="helvetica 10 normal roman" '
            "select=1 highlite=1 dash=0 fixed=0 edit=1 move=1 delete=1 include=1 source=1\n"
            "fk5\n")
    return head + "".join(s + "\n" for s in shapes)
