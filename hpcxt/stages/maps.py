"""The maps stage: fit results and region table in, FITS maps, region file and PNGs out.

Writes to ``<workdir>/maps/``:

* one FITS image per map of :data:`hpcxt.maps.MAPS` (painted by region)
  and per image of :data:`hpcxt.maps.IMAGES` (``flux``, ``flux_bkgsub``),
  each with the image WCS, ``BUNIT``, what the map is (COMMENT cards,
  ``MAPVALUE``) and how the fit was made (model, statistic, error level,
  z, nH, abundance: :func:`hpcxt.export.provenance_cards`);
* ``coverage.fits``: the :class:`hpcxt.maps.Coverage` code of every pixel
  (``COVERn`` cards say what code n means), so the blank pixels of the
  maps are told apart;
* ``regions.reg``: the regions' circles for ds9 (fk5 or physical);
* PNG quick-looks and ``summary.json`` (regions mapped and dropped,
  pixels per coverage code).
"""

from __future__ import annotations

import logging
import textwrap
import time

import numpy as np

from ..bins import assign_bins
from ..errors import InputError
from ..export import ds9_regions, provenance_cards
from ..io.bundle import read_bundle
from ..io.checkpoint import fit_inputs, read_results
from ..io.fitsio import write_image
from ..io.regions_table import read_regions
from ..io.workdir import StageRecord, WorkDir, fingerprint, write_text_atomic
from ..maps import (IMAGES, MAPS, Coverage, assign_pixels, count_coverage, coverage_map,
                    flux_image, paint, region_values, select_regions, written_maps)

log = logging.getLogger("hpcxt.maps")

#: Region-file coordinate systems (``hpcxt maps --coords``).
REGION_COORDS = ("fk5", "physical")


def load_fit(cfg, res=None):
    """The fit results (``res`` if already read) and the region table they were made for.

    Returns
    -------
    (WorkDir, FitResults, RegionTable)

    Raises
    ------
    InputError
        A missing file, or results made for another region table.
    """
    wd = WorkDir.of(cfg)
    res = read_results(wd.results) if res is None else res
    table = read_regions(wd.regions)
    if res.region_table_hash != table.content_hash():
        raise InputError("was made for another region table; re-run 'hpcxt fit'",
                         path=wd.results, field="region_table_hash")
    return wd, res, table


def _comment_cards(text: str) -> list[tuple]:
    return [("COMMENT", line, None) for line in textwrap.wrap(text, 70)]


def _map_cards(name: str, spec, provenance: list[tuple], bins: str = "acb") -> list[tuple]:
    cards = [("HDUNAME", name.upper(), None),
             ("MAPTITLE", spec.title, None),
             ("MAPVALUE", spec.value_of, "one value per region circle or image pixel")]
    cards += provenance
    cards += _comment_cards(spec.detail)
    if spec.value_of == "region circle" and bins != "acb":
        cards += _comment_cards(
            "Regions are user-supplied bins (BINS): every pixel of a bin shows its bin's "
            "value, over the bin's pixels instead of a circle. NaN pixels: the code in "
            "coverage.fits says why.")
    elif spec.value_of == "region circle":
        cards += _comment_cards(
            "Each pixel shows the region whose block (BLOCK x BLOCK image pixels around "
            "the fitted pixel) holds it; edge strips the blocks miss show the nearest "
            "region. NaN pixels: the code in coverage.fits says why.")
    return cards


def _write(path, data, header, bunit, cards) -> None:
    h = header.copy()
    for key, value, comment in cards:
        if key == "COMMENT":
            h.add_comment(value)
        else:
            h[key] = (value, comment) if comment else value
    write_image(path, data, h, bunit)


def _refuse_without_fit(res, wd) -> None:
    """Raise InputError when results.h5 holds no successful fit (nothing to map)."""
    if res.n_ok == 0:
        top = res.failure_summary(1)
        why = f"; most common failure: {top[0][1]}" if top else ""
        raise InputError(f"holds no successful fit ({res.n_failed} failed, {res.n_pending} "
                         f"pending{why}): no maps written; see 'hpcxt status'",
                         path=wd.results, field="status")


def _write_fitted_maps(wd, maps, values, owner, coverage, header, provenance, table) -> dict:
    """Paint each fitted map by region and write its FITS file; return the images.

    Parameters
    ----------
    maps : sequence of str
        Names in :data:`hpcxt.maps.MAPS` to write.
    values : dict of str to ndarray (n_regions,)
        Each map's value per region, in the map's unit.
    owner, coverage : ndarray (ny, nx)
        Region of each image pixel and its :class:`Coverage` code.

    Returns
    -------
    dict of str to ndarray (ny, nx) float64
    """
    images = {}
    for name in maps:
        spec = MAPS[name]
        images[name] = paint(values[name], owner, coverage)
        _write(wd.map_file(name), images[name].astype(np.float32), header, spec.bunit,
               _map_cards(name, spec, provenance, table.bins))
    return images


def _write_flux_images(wd, flux, header, bundle, threshold: float, cluster: str) -> None:
    """Write the flux images (:data:`hpcxt.maps.IMAGES`) with their band and threshold."""
    band = [("IMGELO", float(bundle.energy_band[0]), "image band, lower edge, keV"),
            ("IMGEHI", float(bundle.energy_band[1]), "image band, upper edge, keV"),
            ("EXPTHRSH", threshold, "fraction of the peak exposure left out")]
    for name, spec in IMAGES.items():
        _write(wd.map_file(name), flux[name].astype(np.float32), header, spec.bunit,
               _map_cards(name, spec, band + [("OBJECT", cluster, "cluster")]))


def _write_coverage(wd, coverage, header, provenance) -> None:
    """Write ``coverage.fits``, with a COVERn card saying what each code means."""
    legend = [(f"COVER{int(c)}", f"{c.name.lower()}: {c.meaning}", None) for c in Coverage]
    _write(wd.map_file("coverage"), coverage, header, "",
           [("HDUNAME", "COVERAGE", None),
            ("MAPTITLE", "what each pixel of the maps shows", None)] + legend + provenance
           + _comment_cards("Codes 0 and 1 carry a value in the maps; every other code is "
                            "a NaN pixel, and the code says why (COVERn cards)."))


def _write_region_file(wd, table, res, sel, kT, bundle, coords: str, cluster: str) -> None:
    """Write ``regions.reg``: each region's circle, id and kT (keV) for ds9."""
    write_text_atomic(wd.region_file, ds9_regions(
        table, res.status, np.where(sel.keep, kT, np.nan), bundle.grid.wcs(), coords,
        header=((f"hpcxt regions of {cluster}: the circle each spectrum was "
                 "extracted from") if not table.has_bin_map else
                (f"hpcxt regions of {cluster}: user bins ({table.bins}), drawn as "
                 "circles of the same area at their centres (not their shapes)"),
                "text = region id and kT, tag = region id, colour = status "
                "(green ok, red failed, yellow pending)")), fsync=False)


def _log_summary(summary: dict, sel, n_regions: int, seconds: float, outdir) -> None:
    """Log the regions mapped and dropped, the median kT (keV) and the blank pixels."""
    pixels = summary["coverage_pixels"]
    dropped = ", ".join(f"{k} {v}" for k, v in sel.dropped.items() if v) or "none"
    blank = ", ".join(f"{k} {v}" for k, v in pixels.items()
                      if v and not Coverage[k.upper()].has_value) or "none"
    log.info("maps: %d of %d regions mapped (dropped: %s), median kT %.2f keV, %.1f s -> %s",
             summary["mapped_regions"], n_regions, dropped,
             summary["median_kT_keV"] or float("nan"), seconds, outdir)
    log.info("maps: %d pixels with a value (%d filled at the edges); blank pixels: %s",
             pixels["mapped"] + pixels["filled"], pixels["filled"], blank)


def run_maps(cfg, coords: str = "fk5") -> dict:
    """Write ``<workdir>/maps/`` (see the module docstring); return a summary dict.

    Parameters
    ----------
    cfg : Config
    coords : {"fk5", "physical"}
        Coordinates of ``regions.reg``.
    """
    if coords not in REGION_COORDS:
        raise InputError(f"--coords must be one of {', '.join(REGION_COORDS)}, not {coords!r}",
                         field="coords")
    t0 = time.perf_counter()
    wd = WorkDir.of(cfg)
    outdir = wd.maps
    res = read_results(wd.results)
    _refuse_without_fit(res, wd)
    fp = fingerprint({"results": [res.config_hash, res.region_table_hash, res.updated,
                                  res.n_final], "maps": cfg.maps.to_dict(),
                      "cluster": cfg.cluster.to_dict(), "coords": coords})
    record = StageRecord(wd.maps_summary)
    maps = written_maps(((res.fit_inputs or {}).get("fit") or {}).get("free") or ())
    outputs = [wd.map_file(n) for n in (*maps, *IMAGES, "coverage")] + [wd.region_file]
    if record.is_done("fingerprint", fp, *outputs):
        log.info("maps: up to date (%s)", outdir)
        return record.done
    wd, res, table = load_fit(cfg, res)
    bundle = read_bundle(wd.bundle, load_events=False)
    if not res.complete:
        log.warning("maps: the fit is not finished: %d of %d regions pending stay blank",
                    res.n_pending, len(res))
    kT = np.asarray(res.kT, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (np.asarray(res.kT_hi, float) - np.asarray(res.kT_lo, float)) / 2.0 / kT
    sel = select_regions(res.status, kT, frac, cfg.maps.drop_failed, cfg.maps.max_frac_error)
    threshold = float(cfg.maps.expmap_threshold)
    flux = {"flux": flux_image(bundle.counts, bundle.exposure, bundle.mask, threshold),
            "flux_bkgsub": flux_image(bundle.counts, bundle.exposure, bundle.mask, threshold,
                                      background=bundle.background)}
    values = region_values(res, table, bundle, sel, sb=flux["flux_bkgsub"])
    if table.has_bin_map:
        owner, how = assign_bins(table.bin_map, bundle.mask)
    else:
        owner, how = assign_pixels(table.row, table.col, table.step, bundle.mask)
    coverage = coverage_map(owner, how, sel.codes)
    provenance = provenance_cards(res.fit_inputs or fit_inputs(cfg), table, cfg.cluster.name)
    header = bundle.grid.header()
    images = _write_fitted_maps(wd, maps, values, owner, coverage, header, provenance, table)
    _write_flux_images(wd, flux, header, bundle, threshold, cfg.cluster.name)
    images.update((name, flux[name]) for name in IMAGES)
    _write_coverage(wd, coverage, header, provenance)
    _write_region_file(wd, table, res, sel, kT, bundle, coords, cfg.cluster.name)
    pixels = count_coverage(coverage)
    summary = {
        "regions": len(table),
        "mapped_regions": int(sel.keep.sum()),
        "dropped": sel.dropped,
        "coverage_pixels": pixels,
        "median_kT_keV": float(np.nanmedian(values["temperature"])) if sel.keep.any() else None,
        "files": sorted([f"{n}.fits" for n in (*maps, *IMAGES, "coverage")]
                        + [wd.region_file.name]),
        "region_coords": coords,
    }
    if cfg.maps.png and sel.keep.any():
        from ..plots import write_quicklooks
        summary["png"] = write_quicklooks(outdir, images, bundle, cfg.cluster.name)
    record.done = summary
    record.mark("fingerprint", fp)
    _log_summary(summary, sel, len(table), time.perf_counter() - t0, outdir)
    return summary
