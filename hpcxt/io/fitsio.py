"""Reading Chandra event files and images, writing FITS images with WCS.

Real files differ from the ideal: column names in either case, the sky WCS
on the x/y columns (TCTYPn/TCRPXn/TCRVLn/TCDLTn, as in every evt2 file) or
only as nominal pointing keywords, EXPOSURE missing or not matching the GTIs.
Every problem is reported as an :class:`~hpcxt.errors.InputError` that names
the file and the extension, column or keyword.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from ..errors import InputError
from .workdir import atomic_write

#: Chandra sky pixel, degrees (0.492 arcsec).
SKY_PIXEL_DEG = 0.492 / 3600.0


@dataclass(frozen=True)
class SkyFrame:
    """A Chandra sky-pixel frame: tangent-plane projection about (ra0, dec0).

    Sky pixel coordinates (x, y) are 1-based, as in evt2 files: the tangent
    point is at (crpix_x, crpix_y), usually (4096.5, 4096.5).
    """

    ra0: float
    dec0: float
    crpix_x: float = 4096.5
    crpix_y: float = 4096.5
    cdelt_x: float = -SKY_PIXEL_DEG
    cdelt_y: float = SKY_PIXEL_DEG

    def wcs(self) -> WCS:
        """Celestial WCS whose FITS (1-based) pixel coordinates are sky x, y."""
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crpix = [self.crpix_x, self.crpix_y]
        w.wcs.crval = [self.ra0, self.dec0]
        w.wcs.cdelt = [self.cdelt_x, self.cdelt_y]
        w.wcs.cunit = ["deg", "deg"]
        return w

    def to_radec(self, x, y):
        """Sky pixels -> (RA, Dec) in degrees."""
        ra, dec = self.wcs().all_pix2world(np.asarray(x, float), np.asarray(y, float), 1)
        return ra, dec

    def from_radec(self, ra, dec):
        """(RA, Dec) in degrees -> sky pixels."""
        x, y = self.wcs().all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 1)
        return x, y

    def same_as(self, other: "SkyFrame") -> bool:
        return (self.ra0, self.dec0, self.crpix_x, self.crpix_y, self.cdelt_x, self.cdelt_y) == (
            other.ra0, other.dec0, other.crpix_x, other.crpix_y, other.cdelt_x, other.cdelt_y)

    def reproject_to(self, other: "SkyFrame", x, y):
        """Sky pixels in this frame -> sky pixels in ``other`` (identity if equal)."""
        if self.same_as(other):
            return np.asarray(x, float), np.asarray(y, float)
        ra, dec = self.to_radec(x, y)
        return other.from_radec(ra, dec)

    def image_header(self, x0: float, y0: float, bin: int, shape) -> fits.Header:
        """WCS header of an image binned by ``bin`` whose pixel [0, 0] starts at (x0, y0).

        Holds the celestial WCS and, as CIAO writes them, the physical
        transform back to sky x, y (LTV/LTM and the ``P`` alternate WCS), so
        ds9 shows both.
        """
        ny, nx = shape
        h = fits.Header()
        h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
        h["CRPIX1"] = (self.crpix_x - x0) / bin + 0.5
        h["CRPIX2"] = (self.crpix_y - y0) / bin + 0.5
        h["CRVAL1"], h["CRVAL2"] = self.ra0, self.dec0
        h["CDELT1"], h["CDELT2"] = self.cdelt_x * bin, self.cdelt_y * bin
        h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
        h["RADESYS"], h["EQUINOX"] = "ICRS", 2000.0
        h["WCSNAMEP"] = "PHYSICAL"
        h["CTYPE1P"], h["CTYPE2P"] = "x", "y"
        h["CRPIX1P"], h["CRPIX2P"] = 0.5, 0.5
        h["CRVAL1P"], h["CRVAL2P"] = float(x0), float(y0)
        h["CDELT1P"], h["CDELT2P"] = float(bin), float(bin)
        h["LTM1_1"], h["LTM2_2"] = 1.0 / bin, 1.0 / bin
        h["LTV1"], h["LTV2"] = 0.5 - x0 / bin, 0.5 - y0 / bin
        return h


@dataclass
class EventFile:
    """Columns of an EVENTS table plus what prep needs from its headers.

    ``columns`` maps lower-case names to arrays: x, y (sky pixels), pi,
    energy (eV), and time (s), ccd_id when present.
    """

    path: Path
    columns: dict
    frame: SkyFrame
    exposure: float
    header: dict
    gti: dict = field(default_factory=dict)  # ccd_id (or -1 for all) -> (start, stop) arrays
    pi_range: tuple | None = None  # (TLMIN, TLMAX) of the PI column, when the header has them
    #: Where the rows are on disk, when they were not read (:func:`open_events`).
    table: "EventTable | None" = None

    def __len__(self) -> int:
        if self.table is not None and not self.columns:
            return self.table.n_rows
        return int(self.columns["x"].shape[0])

    def chunks(self, chunk_rows: int, stats: "ChunkStats | None" = None) -> Iterator[dict]:
        """The columns of consecutive row ranges of at most ``chunk_rows`` rows.

        From the file (:meth:`EventTable.read_chunks`) when the events were
        not read, else views of the columns in memory, so that both take the
        same path through prep. Each chunk is a dict like ``columns``.
        """
        if self.table is not None and not self.columns:
            yield from self.table.read_chunks(chunk_rows, stats)
            return
        n = len(self)
        for start in range(0, max(n, 1), chunk_rows):
            chunk = {k: v[start:start + chunk_rows] for k, v in self.columns.items()}
            if stats is not None:
                stats.record(chunk, 0)
            yield chunk


#: Bytes of a FITS block: every header and data unit fills whole blocks.
FITS_BLOCK = 2880
#: Exceptions astropy and numpy raise on a damaged file once it is open.
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError)


def _one_line(exc) -> str:
    """The first sentence of an exception's text, on one line (astropy appends advice)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def missing_hdu_hint(hdul) -> str:
    """Words to add when an expected extension is missing from a file of one HDU.

    A file cut exactly after its primary header is a valid FITS file, so
    only the shape of the file can suggest that it was truncated.
    """
    return "; the file ends after its primary header (truncated?)" if len(hdul) == 1 else ""


def _data_bytes(header) -> int:
    """Size of an HDU's data as its header declares it (FITS 4.0, eq. 2), bytes."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= int(header.get(f"NAXIS{i}", 0))
    return abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (
        int(header.get("PCOUNT", 0)) + n)


def _check_complete(hdul, path: Path, size: int) -> None:
    """Refuse a file that ends before the data its headers declare, or inside a header.

    astropy opens such files and fails later, deep inside a column read
    ("cannot reshape array"), or drops a trailing half header silently. Only
    the padding of the last block may be missing: the data are whole then,
    and cfitsio reads such files too.
    """
    end = 0
    for i, hdu in enumerate(hdul):
        info = hdul.fileinfo(i)
        need = info["datLoc"] + _data_bytes(hdu.header)
        if need > size:
            raise InputError(f"truncated or corrupt FITS file: HDU {i + 1} "
                             f"({hdu.name or 'no name'}) declares data up to byte {need:,} but "
                             f"the file has {size:,} bytes", path=path)
        end = info["datLoc"] + info["datSpan"]
    if size > end:
        with open(path, "rb") as f:
            f.seek(end)
            tail = f.read(8)
        if tail.startswith(b"XTENSION"):
            raise InputError(f"truncated or corrupt FITS file: it ends inside the header of HDU "
                             f"{len(hdul) + 1} (byte {size:,}, no END card)", path=path)


@contextlib.contextmanager
def reading(path, what: str = "FITS file"):
    """Turn any failure of astropy or numpy while reading ``path`` into one InputError.

    The structure of the file is checked when it is opened; this catches
    what is left (a header value of the wrong type, a malformed TFORM).
    InputErrors raised inside pass through unchanged.
    """
    try:
        yield
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(f"truncated or corrupt {what} ({_one_line(exc)})", path=path) from None


def open_fits(path, what: str = "FITS file") -> fits.HDUList:
    """Open a FITS file, turning every way it can fail into an InputError.

    Every header is read and the file is checked to hold all the data its
    headers declare, so a file cut short anywhere (inside a header, inside
    the data, at a block boundary) is "truncated or corrupt" here rather
    than a missing extension or a crash later.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found", path=path)
    if path.is_dir():
        raise InputError(f"{what} is a folder, not a file", path=path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            start = f.read(9)
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.strerror})", path=path) from None
    if size == 0:
        raise InputError(f"{what} is empty (0 bytes)", path=path)
    if not start.startswith(b"SIMPLE  ="[:min(9, size)]):
        raise InputError("not a readable FITS file: it does not start with SIMPLE (is it the "
                         "right file?)", path=path)
    hdul = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            hdul = fits.open(path, memmap=False)
            hdul.verify("silentfix")
            if len(hdul) == 0:
                raise OSError("no HDUs")
            _check_complete(hdul, path, size)
    except InputError:
        hdul.close()
        raise
    except _READ_ERRORS as exc:
        if hdul is not None:
            hdul.close()
        raise InputError(f"truncated or corrupt FITS file ({_one_line(exc)})",
                         path=path) from None
    return hdul


def _find_table(hdul, path, names, required_cols):
    for hdu in hdul[1:]:
        if (hdu.name or "").upper() in names and isinstance(hdu, fits.BinTableHDU):
            return hdu
    for hdu in hdul[1:]:
        if isinstance(hdu, fits.BinTableHDU):
            cols = {c.lower() for c in hdu.columns.names}
            if set(required_cols) <= cols:
                return hdu
    raise InputError(f"no {'/'.join(sorted(names))} table extension{missing_hdu_hint(hdul)}",
                     path=path,
                     field=sorted(names)[0])


def _column_frame(hdu, path, colmap) -> SkyFrame | None:
    h = hdu.header
    nums = {}
    for i, name in enumerate(hdu.columns.names, start=1):
        nums[name.lower()] = i
    ix, iy = nums["x"], nums["y"]
    keys = [f"TCRVL{ix}", f"TCRVL{iy}"]
    if all(k in h for k in keys):
        try:
            return SkyFrame(ra0=float(h[f"TCRVL{ix}"]), dec0=float(h[f"TCRVL{iy}"]),
                            crpix_x=float(h.get(f"TCRPX{ix}", 4096.5)),
                            crpix_y=float(h.get(f"TCRPX{iy}", 4096.5)),
                            cdelt_x=float(h.get(f"TCDLT{ix}", -SKY_PIXEL_DEG)),
                            cdelt_y=float(h.get(f"TCDLT{iy}", SKY_PIXEL_DEG)))
        except (TypeError, ValueError):
            raise InputError("sky WCS keywords on the x/y columns are not numbers",
                             path=path, field=f"TCRVL{ix}") from None
    return None


def _header_frame(headers) -> SkyFrame | None:
    for h in headers:
        if "RA_NOM" in h and "DEC_NOM" in h:
            return SkyFrame(ra0=float(h["RA_NOM"]), dec0=float(h["DEC_NOM"]))
    return None


#: Why a column is required, for the message when it is missing.
_WHY_REQUIRED = {
    "energy": "; hpcxt filters events by energy as CIAO does, and PI alone does not give "
              "it: use the level-2 event file that chandra_repro writes",
}


def event_columns_required(need_time: bool = True) -> list[str]:
    """Columns every event file must have (lower case)."""
    return ["x", "y", "pi", "energy"] + (["time"] if need_time else [])


def _column_limits(hdu, name: str) -> tuple[int, int] | None:
    """(TLMIN, TLMAX) of column ``name`` of a table HDU, or None when not both given."""
    index = hdu.columns.names.index(name) + 1
    lo, hi = hdu.header.get(f"TLMIN{index}"), hdu.header.get(f"TLMAX{index}")
    if lo is None or hi is None:
        return None
    return int(lo), int(hi)


def _events_table(hdul, path, need_time: bool):
    """The EVENTS table, its column names (lower case -> as written) and its sky frame."""
    hdu = _find_table(hdul, path, {"EVENTS"}, ("x", "y"))
    names = {n.lower(): n for n in hdu.columns.names}
    for col in event_columns_required(need_time):
        if col not in names:
            raise InputError(f"EVENTS table has no '{col}' column (has: "
                             f"{', '.join(sorted(names))}){_WHY_REQUIRED.get(col, '')}",
                             path=path, field=col)
    frame = _column_frame(hdu, path, names) or _header_frame([hdu.header, hdul[0].header])
    if frame is None:
        raise InputError("no sky WCS: neither TCRVLn keywords on the x/y columns "
                         "nor RA_NOM/DEC_NOM in the header", path=path, field="TCRVL")
    return hdu, names, frame


#: numpy storage of each FITS binary-table format letter (FITS 4.0, table 18), big-endian.
_TFORM_DTYPES = {"L": "i1", "X": "u1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8",
                 "A": "S1", "E": ">f4", "D": ">f8", "C": ">c8", "M": ">c16"}
_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCM])")

#: dtype of each event column as prep holds it (lower-case names; others are not read).
EVENT_DTYPES = {"x": np.float64, "y": np.float64, "pi": np.int32, "energy": np.float32,
                "time": np.float64, "ccd_id": np.int16}


@dataclass
class ChunkStats:
    """What a chunked read of event files held: the seam tests and benchmarks watch.

    Passed in by the caller; the reader records every chunk it hands out.
    ``max_live_chunks`` is the most chunks whose column arrays were alive at
    once (1: one chunk in memory at a time), found with weak references, so
    it counts what the consumer really kept, not what it meant to.
    """

    chunks: int = 0
    rows: int = 0
    max_chunk_rows: int = 0
    #: Largest memory of one chunk, bytes: its raw rows as read plus its columns.
    max_chunk_bytes: int = 0
    max_live_chunks: int = 0
    _live: list = field(default_factory=list, repr=False)

    def record(self, columns: dict, raw_bytes: int) -> None:
        self._live = [refs for refs in self._live if any(r() is not None for r in refs)]
        arrays = list(columns.values())
        self._live.append([weakref.ref(a) for a in arrays])
        n = int(arrays[0].shape[0]) if arrays else 0
        self.chunks += 1
        self.rows += n
        self.max_chunk_rows = max(self.max_chunk_rows, n)
        self.max_chunk_bytes = max(self.max_chunk_bytes,
                                   raw_bytes + sum(int(a.nbytes) for a in arrays))
        self.max_live_chunks = max(self.max_live_chunks, len(self._live))


@dataclass(frozen=True)
class EventTable:
    """Where an EVENTS table's rows lie in its file, to read them a row range at a time.

    The rows are read as raw bytes (``numpy.fromfile`` of a structured
    big-endian dtype built from TFORMn), then only prep's columns are
    converted, so a chunk costs ``chunk_rows`` times (row bytes + 34 bytes).
    """

    path: Path
    data_offset: int  # bytes from the start of the file to the first row
    n_rows: int
    row_dtype: np.dtype
    #: lower-case name -> (name as written, TSCAL, TZERO) of the columns prep reads
    columns: tuple

    @classmethod
    def of(cls, hdul, index: int, names: dict, path: Path) -> "EventTable | None":
        """The layout of HDU ``index``, or None when it cannot be read by rows (then read whole)."""
        hdu = hdul[index]
        h = hdu.header
        fields = []
        for i, name in enumerate(hdu.columns.names, start=1):
            m = _TFORM.match(str(h.get(f"TFORM{i}", "")))
            if m is None:  # variable-length (P, Q) or malformed: let astropy read it
                return None
            repeat = int(m.group(1) or 1)
            code = m.group(2)
            if code == "X":
                fields.append((f"c{i}", "u1", ((repeat + 7) // 8,)))
            elif code == "A":
                fields.append((f"c{i}", f"S{repeat}"))
            else:
                base = _TFORM_DTYPES[code]
                fields.append((f"c{i}", base, (repeat,)) if repeat != 1 else (f"c{i}", base))
        row_dtype = np.dtype(fields)
        if row_dtype.itemsize != int(h["NAXIS1"]):
            return None
        index_of = {n.lower(): i for i, n in enumerate(hdu.columns.names, start=1)}
        cols = []
        for low in EVENT_DTYPES:
            if low in names:
                i = index_of[low]
                if row_dtype[f"c{i}"].shape:  # a vector column where prep needs a scalar
                    return None
                cols.append((low, f"c{i}", h.get(f"TSCAL{i}"), h.get(f"TZERO{i}")))
        return cls(path=path, data_offset=int(hdul.fileinfo(index)["datLoc"]),
                   n_rows=int(h["NAXIS2"]), row_dtype=row_dtype, columns=tuple(cols))

    def read_chunks(self, chunk_rows: int, stats: ChunkStats | None = None) -> Iterator[dict]:
        """Columns (dtypes of :data:`EVENT_DTYPES`) of row ranges of at most ``chunk_rows`` rows.

        Only one chunk's raw rows are held at a time; a chunk with a
        non-finite x, y or energy raises the InputError of :func:`read_events`.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, not {chunk_rows}")
        with open(self.path, "rb") as f:
            for start in range(0, max(self.n_rows, 1), chunk_rows):
                n = min(chunk_rows, self.n_rows - start)
                f.seek(self.data_offset + start * self.row_dtype.itemsize)
                raw = np.fromfile(f, dtype=self.row_dtype, count=n)
                if raw.shape[0] != n:
                    raise InputError(f"truncated or corrupt events file: rows {start + raw.shape[0]:,}"
                                     f"-{start + n:,} are missing", path=self.path)
                chunk = {}
                for low, raw_name, scale, zero in self.columns:
                    values = raw[raw_name]
                    if scale is not None or zero is not None:
                        values = values * float(scale if scale is not None else 1.0) + \
                            float(zero if zero is not None else 0.0)
                    chunk[low] = np.asarray(values, dtype=EVENT_DTYPES[low])
                raw_bytes = int(raw.nbytes)
                del raw, values
                _check_finite(chunk, self.path, start)
                if stats is not None:
                    stats.record(chunk, raw_bytes)
                yield chunk
                del chunk


def _check_finite(cols: dict, path: Path, first_row: int | None = None) -> None:
    for col in ("x", "y", "energy"):
        if cols[col].size and not np.all(np.isfinite(cols[col])):
            bad = int(np.count_nonzero(~np.isfinite(cols[col])))
            where = "" if first_row is None else \
                f" (in rows {first_row + 1:,}-{first_row + cols[col].size:,})"
            raise InputError(f"{bad} events have non-finite '{col}'{where}", path=path, field=col)


def read_events_header(path, role: str = "events", need_time: bool = True) -> EventFile:
    """The columns' names and limits and the sky frame of an event file, without its events.

    Cheap (headers only): prep checks every input against the others with it
    before any stage starts. ``columns`` is empty; ``pi_range`` and ``frame``
    are set. Raises the same InputErrors as :func:`read_events` for the
    file's structure and its required columns.
    """
    path = Path(path)
    hdul = open_fits(path, f"{role} file")
    with hdul, reading(path, f"{role} file"):
        hdu, names, frame = _events_table(hdul, path, need_time)
        return EventFile(path=path, columns={}, frame=frame, exposure=0.0, header={},
                         pi_range=_column_limits(hdu, names["pi"]))


def read_events(path, role: str = "events", need_time: bool = True) -> EventFile:
    """Read a Chandra level-2 (or blank-sky) event file.

    Parameters
    ----------
    path : path
        FITS event file with an EVENTS extension.
    role : str
        Config field the file came from, for error messages.
    need_time : bool
        Require a ``time`` column (source events; blank-sky files may lack it).

    Returns
    -------
    EventFile
        x, y in sky pixels (float64), pi (int32), energy in eV (float32),
        time in s (float64) and ccd_id (int16) when present; ``pi_range``
        from TLMIN/TLMAX of the PI column.

    Raises
    ------
    InputError
        Missing, truncated or corrupt file, no EVENTS table, a required
        column missing (x, y, pi, energy, and time for source events), no
        sky WCS, no positive EXPOSURE.
    """
    return _event_file(path, role, need_time, whole=True)


def open_events(path, role: str = "events", need_time: bool = True) -> EventFile:
    """An event file's headers, GTIs and row layout, for reading its events in chunks.

    Like :func:`read_events`, but ``columns`` stays empty and ``table``
    says where the rows are: :meth:`EventFile.chunks` reads them a row
    range at a time, so memory does not grow with the file. A table whose
    rows cannot be read by range (variable-length columns) is read whole.
    Raises the same InputErrors as :func:`read_events` (non-finite values
    when their chunk is read).
    """
    return _event_file(path, role, need_time, whole=False)


def _event_file(path, role: str, need_time: bool, whole: bool) -> EventFile:
    path = Path(path)
    hdul = open_fits(path, f"{role} file")
    with hdul, reading(path, f"{role} file"):
        hdu, names, frame = _events_table(hdul, path, need_time)
        table = None
        if not whole:
            index = next(i for i, h in enumerate(hdul) if h is hdu)
            table = EventTable.of(hdul, index, names, path)
        cols = {}
        if table is None:
            data = hdu.data
            for low, dtype in EVENT_DTYPES.items():
                if low in names:
                    cols[low] = np.asarray(data[names[low]], dtype=dtype)
            del data
            _check_finite(cols, path)
        h = hdu.header
        exposure = None
        for key in ("EXPOSURE", "LIVETIME", "ONTIME"):
            if key in h:
                try:
                    exposure = float(h[key])
                except (TypeError, ValueError):
                    raise InputError(f"{key} is not a number", path=path, field=key) from None
                break
        if exposure is None or not exposure > 0:
            raise InputError("EVENTS header has no positive EXPOSURE (or LIVETIME/ONTIME)",
                             path=path, field="EXPOSURE")
        header = {k: h[k] for k in ("OBS_ID", "OBJECT", "EXPOSURE", "LIVETIME", "ONTIME",
                                    "TSTART", "TSTOP", "DETNAM", "INSTRUME", "TELESCOP")
                  if k in h}
        gti = {}
        for g in hdul[1:]:
            if (g.name or "").upper() == "GTI" and isinstance(g, fits.BinTableHDU):
                gnames = {n.lower(): n for n in g.columns.names}
                if "start" not in gnames or "stop" not in gnames:
                    raise InputError("GTI table needs START and STOP columns", path=path,
                                     field="GTI")
                ccd = int(g.header.get("CCD_ID", -1))
                start = np.asarray(g.data[gnames["start"]], float)
                stop = np.asarray(g.data[gnames["stop"]], float)
                if ccd in gti:  # several GTI tables for one chip: union
                    start = np.concatenate([gti[ccd][0], start])
                    stop = np.concatenate([gti[ccd][1], stop])
                order = np.argsort(start)
                gti[ccd] = (start[order], stop[order])
        pi_range = _column_limits(hdu, names["pi"])
    return EventFile(path=path, columns=cols, frame=frame, exposure=exposure,
                     header=header, gti=gti, pi_range=pi_range, table=table)


@dataclass
class ImageFile:
    data: np.ndarray
    wcs: WCS
    header: fits.Header


def read_image(path, role: str = "exposure_map") -> ImageFile:
    """Read the first 2-D image of a FITS file and its celestial WCS."""
    path = Path(path)
    hdul = open_fits(path, f"{role} file")
    with hdul, reading(path, f"{role} file"):
        for hdu in hdul:
            if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.data is not None \
                    and hdu.data.ndim == 2:
                break
        else:
            raise InputError("no 2-D image HDU", path=path, field="PRIMARY")
        h = hdu.header.copy()
        if "CTYPE1" not in h or "CRVAL1" not in h or "RA" not in str(h.get("CTYPE1", "")).upper():
            raise InputError("image has no celestial WCS (CTYPE1/CRVAL1)", path=path,
                             field="CTYPE1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(h, naxis=2)
        data = np.asarray(hdu.data, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        data = np.where(np.isfinite(data), data, 0.0)
    return ImageFile(data=data, wcs=wcs, header=h)


def ascii_text(text) -> str:
    """Printable-ASCII form of ``text`` for a FITS header (FITS 4.0 allows nothing else).

    Accents are dropped ("Münch" -> "Munch"), other non-ASCII characters
    become "?", control characters (tabs, new lines) spaces.
    """
    text = str(text)
    plain = "".join(c for c in unicodedata.normalize("NFKD", text)
                    if not unicodedata.combining(c))
    return "".join(c if " " <= c <= "~" else (" " if c.isspace() or ord(c) < 32 else "?")
                   for c in plain)


def set_header_text(header: fits.Header, key: str, value, comment: str | None = None) -> None:
    """``header[key] = (value, comment)`` with text made ASCII-safe; the original is kept.

    Every FITS writer of hpcxt sets user text through this (astropy refuses
    a non-ASCII value, and ds9 and CIAO could not read one). When the value
    had to change, a COMMENT card holds the original as percent-escaped
    UTF-8 (``M%C3%BCnch``), which ``urllib.parse.unquote`` turns back.
    """
    if comment is not None:
        comment = ascii_text(comment)
    if not isinstance(value, str):
        header[key] = value if comment is None else (value, comment)
        return
    safe = ascii_text(value)
    if key == "COMMENT":
        header.add_comment(safe)
    elif key == "HISTORY":
        header.add_history(safe)
    else:
        header[key] = safe if comment is None else (safe, comment)
    if safe != value:
        header.add_comment(f"{key} in UTF-8, percent-escaped: {quote(value, safe=' ')}")


def write_image(path, data, header: fits.Header, bunit: str = "", extra: dict | None = None,
                overwrite: bool = True) -> Path:
    """Write a 2-D image with its WCS atomically (temporary file, then rename).

    ``extra`` maps header keys to values or (value, comment); text is made
    ASCII-safe by :func:`set_header_text`.
    """
    path = Path(path)
    h = header.copy()
    if bunit:
        set_header_text(h, "BUNIT", bunit)
    for k, v in (extra or {}).items():
        value, comment = v if isinstance(v, tuple) else (v, None)
        set_header_text(h, k, value, comment)
    with atomic_write(path, fsync=False) as tmp:
        fits.PrimaryHDU(data=np.asarray(data), header=h).writeto(tmp)
    return path
