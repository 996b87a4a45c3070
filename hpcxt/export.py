"""The fitted regions as a table and as a ds9 region file.

Kernels: the region table (:class:`hpcxt.io.regions_table.RegionTable`),
the fit result columns (``FitResults.columns``, declared in
:data:`hpcxt.schema.COLUMNS`) and the image WCS in; an
:class:`astropy.table.Table`, region-file text or a printable report out.
No file I/O: :mod:`hpcxt.stages.export` and :mod:`hpcxt.stages.maps`
read the inputs and write the files.

The table has ClusterPyXT's columns (``region``, ``T``, ``T_err_+``,
``T_err_-``, ``Norm``, ``Norm_err_+``, ``Norm_err_-``, ``reduced_x2``,
``obs_id``; errors as positive distances from the best fit), then the
region's position and size, then every result column of the schema (a
per-observation column becomes one column per obsid, ``counts_1001``),
then the status as text and each observation's exposure time and share of
the circle. A new result column in the schema reaches the table with no
edit here.
"""

from __future__ import annotations

import re

import numpy as np

from .schema import COLUMNS, Status

#: ``status`` code -> the word the table and the region file use.
STATUS_TEXT = {int(Status.PENDING): "pending", int(Status.OK): "ok",
               int(Status.FAILED): "failed"}

#: ds9 colour of a region by status.
STATUS_COLOR = {int(Status.PENDING): "yellow", int(Status.OK): "green",
                int(Status.FAILED): "red"}

#: Region-table columns per observation that the table carries: name ->
#: (RegionTable attribute, unit, description).
REGION_OBS_COLUMNS = {
    "exposure_time": ("exposure_time", "s",
                      "effective exposure time of the circle in this observation"),
    "fraction": ("fraction", "",
                 "share of the circle's mapped pixels inside this observation's field"),
    "used": ("used", "", "observation used in the fit (fraction >= fit.min_obs_fraction)"),
}


def status_text(status) -> np.ndarray:
    """``status`` codes as words (pending, ok, failed)."""
    return np.array([STATUS_TEXT.get(int(s), f"status {int(s)}") for s in np.asarray(status)],
                    dtype=str)


def region_sky(table, wcs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RA, Dec (degrees, the WCS's frame) and radius (arcsec) of every region.

    Parameters
    ----------
    table : RegionTable
        ``row``, ``col`` (0-based image pixels) and ``radius`` (image pixels).
    wcs : astropy.wcs.WCS
        Celestial WCS of the image grid.
    """
    from astropy.wcs.utils import proj_plane_pixel_scales

    ra, dec = wcs.celestial.pixel_to_world_values(np.asarray(table.col, float),
                                                  np.asarray(table.row, float))
    scale_deg = float(np.mean(proj_plane_pixel_scales(wcs.celestial)))
    return (np.asarray(ra, float), np.asarray(dec, float),
            np.asarray(table.radius, float) * scale_deg * 3600.0)


def _error_distance(bound, best, upper: bool) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.asarray(bound, float) - best if upper else best - np.asarray(bound, float)


def results_table(table, columns: dict, obsids, wcs, meta: dict | None = None):
    """One row per region: ClusterPyXT's columns, position, every result column.

    Parameters
    ----------
    table : RegionTable
        The regions (row i is region id i).
    columns : dict
        Result columns by name (``FitResults.columns``), one row per region.
    obsids : list of str
        Observation ids, in the order of the per-observation columns.
    wcs : astropy.wcs.WCS
        Celestial WCS of the image grid.
    meta : dict, optional
        Table metadata (FITS header cards: keys of at most 8 characters).

    Returns
    -------
    astropy.table.Table
        Columns carry unit and description.
    """
    from astropy.table import Column, Table

    n = len(table)
    kT = np.asarray(columns["kT"], float)
    norm = np.asarray(columns["norm"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        reduced = np.asarray(columns["stat"], float) / np.asarray(columns["dof"], float)
    used = np.asarray(table.used, bool).reshape(n, len(obsids))
    ra, dec, radius_arcsec = region_sky(table, wcs)
    t = Table(meta=dict(meta or {}))

    def add(name, values, unit="", description=""):
        t[name] = Column(values, unit=unit or None, description=description)

    # ClusterPyXT's columns (its spectral fits CSV), errors as distances
    add("region", np.asarray(table.region_id, np.int64), "", "region number (ClusterPyXT)")
    add("T", kT, "keV", "best-fit temperature (ClusterPyXT)")
    add("T_err_+", _error_distance(columns["kT_hi"], kT, True), "keV", "kT_hi - kT")
    add("T_err_-", _error_distance(columns["kT_lo"], kT, False), "keV", "kT - kT_lo")
    add("Norm", norm, "cm**-5", "XSPEC normalisation of the circle (ClusterPyXT)")
    add("Norm_err_+", _error_distance(columns["norm_hi"], norm, True), "cm**-5",
        "norm_hi - norm")
    add("Norm_err_-", _error_distance(columns["norm_lo"], norm, False), "cm**-5",
        "norm - norm_lo")
    add("reduced_x2", reduced, "", "fit statistic / degrees of freedom")
    add("obs_id", np.array([",".join(o for o, u in zip(obsids, row) if u) for row in used],
                           dtype=str), "", "observations fitted jointly")
    # where the region is
    add("region_id", np.asarray(table.region_id, np.int64), "", "region id (row-major)")
    add("ra", ra, "deg", "right ascension of the circle's centre")
    add("dec", dec, "deg", "declination of the circle's centre")
    add("x", np.asarray(table.x, float), "pix", "sky x of the centre, sky pixels")
    add("y", np.asarray(table.y, float), "pix", "sky y of the centre, sky pixels")
    add("row", np.asarray(table.row, np.int64), "", "image row of the fitted pixel (0-based)")
    add("col", np.asarray(table.col, np.int64), "", "image column of the fitted pixel (0-based)")
    add("radius_arcsec", radius_arcsec, "arcsec", "circle radius")
    add("radius_sky", np.asarray(table.radius_sky, float), "pix", "circle radius, sky pixels")
    add("radius_image", np.asarray(table.radius, float), "pix", "circle radius, image pixels")
    # every result column of the schema
    for c in COLUMNS:
        values = columns[c.name]
        if c.per_obs:
            values = np.asarray(values).reshape(n, len(obsids))
            for j, obsid in enumerate(obsids):
                add(f"{c.name}_{obsid}", values[:, j], c.unit,
                    f"{c.description}, observation {obsid}")
        elif c.is_text:
            add(c.name, np.array([str(v) for v in values], dtype=str), c.unit, c.description)
        else:
            add(c.name, np.asarray(values), c.unit, c.description)
    add("status_text", status_text(columns["status"]), "", "status: pending, ok or failed")
    for name, (attr, unit, description) in REGION_OBS_COLUMNS.items():
        values = np.asarray(getattr(table, attr)).reshape(n, len(obsids))
        for j, obsid in enumerate(obsids):
            add(f"{name}_{obsid}", values[:, j], unit, f"{description} {obsid}")
    return t


# --------------------------------------------------------------------------
# ds9 region files


def sexagesimal(values, decimals: int, sign: bool = False, wrap: int | None = None
                ) -> list[str]:
    """``dd:mm:ss.sss`` of each value (hours or degrees), rounded once, no 60s.

    ``wrap`` (24 for right ascension in hours) folds the leading field.
    ``Angle.to_string`` does the same at ~0.3 ms a value; this is vectorised.
    """
    values = np.atleast_1d(np.asarray(values, dtype=float))
    scale = 10 ** decimals
    ticks = np.rint(np.abs(values) * 3600.0 * scale).astype(np.int64)
    whole, frac = np.divmod(ticks, scale)
    d, rest = np.divmod(whole, 3600)
    if wrap is not None:
        d = d % wrap
    m, sec = np.divmod(rest, 60)
    signs = np.where((values < 0) & (ticks > 0), "-", "+" if sign else "")
    return [f"{g}{a:02d}:{b:02d}:{c:02d}.{f:0{decimals}d}"
            for g, a, b, c, f in zip(signs, d, m, sec, frac)]


def _format_kT(kT: float, status: int) -> str:
    if np.isfinite(kT):
        return f"{kT:.2f} keV"
    return STATUS_TEXT.get(int(status), "no fit")


def ds9_regions(table, status, kT, wcs, coords: str = "fk5",
                header: tuple[str, ...] = ()) -> str:
    """The regions' circles as ds9 region-file text, through astropy ``regions``.

    Every circle is tagged with its region id (``tag={12}``) and labelled
    with its id and kT (``text={12: 6.31 keV}``, or the status when there is
    no kT); green when fitted, red when failed, yellow when pending.

    Parameters
    ----------
    table : RegionTable
    status, kT : ndarray (n,)
        Result columns (kT in keV).
    wcs : astropy.wcs.WCS
        Celestial WCS of the image grid (ICRS).
    coords : {"fk5", "physical"}
        ``fk5``: centres in sexagesimal FK5 (J2000), radii in arcsec.
        ``physical``: sky pixels (CIAO's physical x, y), radii in sky
        pixels; valid on event files and on every image hpcxt writes.
    header : tuple of str
        Comment lines written after the format line (without ``#``; no
        semicolons: ds9 and ``regions`` split lines there).

    Returns
    -------
    str
    """
    from astropy.coordinates import FK5, SkyCoord
    from regions import CirclePixelRegion, PixCoord, RegionMeta, Regions, RegionVisual

    if coords not in ("fk5", "physical"):
        raise ValueError(f"coords must be fk5 or physical, not {coords!r}")
    n = len(table)
    status = np.asarray(status)
    kT = np.asarray(kT, float)
    ids = np.asarray(table.region_id, np.int64)
    # regions builds the file (frame, shapes, labels, tags, colours) from
    # circles in sky pixels: it writes them 1-based in its "image" frame, so
    # x - 1 comes out as sky x. Per-region SkyCoord objects would cost ~2 ms
    # a region (minutes for 1e5 regions) and regions writes no sexagesimal,
    # so fk5 centres are formatted here, all at once, and put in place.
    shapes = [CirclePixelRegion(
        PixCoord(float(table.x[i]) - 1.0, float(table.y[i]) - 1.0), float(table.radius_sky[i]),
        meta=RegionMeta({"text": f"{ids[i]}: {_format_kT(kT[i], status[i])}",
                         "tag": [str(ids[i])]}),
        visual=RegionVisual({"color": STATUS_COLOR.get(int(status[i]), "white")}))
        for i in range(n)]
    text = Regions(shapes).serialize(format="ds9", precision=6) if n else (
        "# Region file format: DS9 astropy/regions\n")
    lines = text.splitlines()
    frame = "physical"
    if coords == "fk5":
        frame = "fk5"
        ra, dec, radius_arcsec = region_sky(table, wcs)
        radesys = str(getattr(wcs.wcs, "radesys", "") or "ICRS").lower()
        centres = SkyCoord(ra, dec, unit="deg", frame=radesys).transform_to(
            FK5(equinox="J2000"))
        ra_text = sexagesimal(centres.ra.deg / 15.0, 4, wrap=24)
        dec_text = sexagesimal(centres.dec.deg, 3, sign=True)
        at = [k for k, line in enumerate(lines) if line.startswith("circle(")]
        for k, a, d, r in zip(at, ra_text, dec_text, radius_arcsec, strict=True):
            shape = f'circle({a},{d},{r:.4f}")'
            lines[k] = re.sub(r"^circle\([^)]*\)", lambda _: shape, lines[k])
    lines = [frame if line == "image" else line for line in lines]
    lines[1:1] = [f"# {h.replace(';', ',')}" for h in header]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# one region, for people


def _fmt(value, unit: str = "") -> str:
    if isinstance(value, (float, np.floating)):
        text = "nan" if not np.isfinite(value) else f"{value:.6g}"
    elif isinstance(value, (bool, np.bool_)):
        text = "yes" if value else "no"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def region_report(t, region_id: int, obsids) -> str:
    """Every number of one region of :func:`results_table`, as aligned text.

    The fit's columns are listed from the schema: a column with ``_lo`` and
    ``_hi`` partners is printed with its bounds on one line, a
    per-observation column in the table of observations.
    """
    from astropy.coordinates import Angle

    row = t[int(region_id)]

    def unit(name):
        u = t[name].unit
        return "" if u is None else u.to_string(format="fits")

    out = [f"region {int(row['region_id'])}: {row['status_text']}"
           + (f" ({row['reason']})" if str(row["reason"]) else "")]
    ra = Angle(float(row["ra"]), unit="deg").to_string(unit="hourangle", sep=":", precision=3)
    dec = Angle(float(row["dec"]), unit="deg").to_string(unit="deg", sep=":", precision=2,
                                                         alwayssign=True)
    out += [f"  {'ra, dec':<24} {ra} {dec} ({float(row['ra']):.6f} {float(row['dec']):.6f} deg)",
            f"  {'sky x, y':<24} {_fmt(row['x'])} {_fmt(row['y'])} sky pixels",
            f"  {'image row, col':<24} {int(row['row'])} {int(row['col'])}",
            f"  {'radius':<24} {_fmt(row['radius_arcsec'], 'arcsec')} = "
            f"{_fmt(row['radius_sky'])} sky pixels = {_fmt(row['radius_image'])} image pixels"]
    names = {c.name for c in COLUMNS}
    bounds = {f"{c.name}_{side}" for c in COLUMNS for side in ("lo", "hi")
              if {f"{c.name}_lo", f"{c.name}_hi"} <= names}
    for c in COLUMNS:
        if c.per_obs or c.is_text or c.name in bounds or c.name == "status":
            continue
        if f"{c.name}_lo" in bounds:
            label = f"{c.name} (lo, hi)"
            values = "   ".join(_fmt(row[n], unit(n))
                                for n in (c.name, f"{c.name}_lo", f"{c.name}_hi"))
        else:
            label, values = c.name, _fmt(row[c.name], unit(c.name))
        out.append(f"  {label:<24} {values}")
    out.append(f"  {'statistic / dof':<24} {_fmt(row['reduced_x2'])}")
    per_obs = [c.name for c in COLUMNS if c.per_obs] + list(REGION_OBS_COLUMNS)
    out.append(f"  {'observation':<12}" + "".join(f"{n:>15}" for n in per_obs))
    for o in obsids:
        cells = "".join(f"{_fmt(row[f'{n}_{o}']):>15}" for n in per_obs)
        out.append(f"  {o:<12}{cells}")
    return "\n".join(out)


# --------------------------------------------------------------------------
# what the results were made with


def provenance_cards(fit_inputs: dict, table, cluster_name: str) -> list[tuple]:
    """FITS cards (key, value, comment) that say how the results were made.

    Parameters
    ----------
    fit_inputs : dict
        ``{"cluster": {...}, "fit": {...}}`` as stored in results.h5
        (:func:`hpcxt.io.checkpoint.fit_inputs`).
    table : RegionTable
        For the resolution, block size and target S/N.
    cluster_name : str
    """
    cluster = fit_inputs.get("cluster", {})
    fit = fit_inputs.get("fit", {})
    band = fit.get("energy_range") or [float("nan"), float("nan")]
    table_name = (cluster.get("abundance_table") or fit.get("abundance_table")
                  or "XSPEC default")
    free_ab = "abundance" in (fit.get("free") or ())
    return [
        ("OBJECT", str(cluster_name), "cluster"),
        ("MODEL", str(fit.get("model", "")),
         "fitted model (nH, z frozen; abundance free)" if free_ab
         else "fitted model (nH, abundance, z frozen)"),
        ("STATISTC", str(fit.get("statistic", "")), "fit statistic"),
        ("ERRMETH", str(fit.get("errors", "")), "error method on kT"),
        ("ERRSIGMA", float(fit.get("error_sigma", float("nan"))), "error level, sigma"),
        ("FITELO", float(band[0]), "fitted band, lower edge, keV"),
        ("FITEHI", float(band[1]), "fitted band, upper edge, keV"),
        ("REDSHIFT", float(cluster.get("redshift", float("nan"))), "z, frozen"),
        ("NH", float(cluster.get("nh", float("nan"))), "Galactic nH, 1e22 cm**-2, frozen"),
        ("ABUND", float(cluster.get("abundance", float("nan"))),
         "abundance, solar: start of the free fit" if free_ab else "abundance, solar, frozen"),
        ("ABUNDTBL", str(table_name), "solar abundance table"),
        ("RESOLUT", str(table.resolution), "fit resolution"),
        ("BLOCK", int(table.step), "image pixels per region block side"),
        ("TARGETSN", float(table.target_sn), "S/N each region's circle reaches"),
        ("BINS", str(getattr(table, "bins", "acb")), "regions: acb circles or user bins"),
        ("ORIGIN", "hpcxt", ""),
    ]
