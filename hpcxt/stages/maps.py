"""The maps stage: fit results and region table in, FITS maps and PNGs out."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..errors import InputError
from ..io.bundle import read_bundle
from ..io.checkpoint import read_results
from ..io.fitsio import write_image
from ..io.regions_table import read_regions
from ..io.workdir import StageRecord, WorkDir, fingerprint
from ..maps import MAPS, paint_blocks, region_values, select_regions

log = logging.getLogger("hpcxt.maps")


def run_maps(cfg) -> dict:
    """Write ``<workdir>/maps/*.fits`` (and PNGs); return a summary dict."""

    t0 = time.perf_counter()
    wd = WorkDir.of(cfg)
    outdir = wd.maps
    results_path = wd.results
    res = read_results(results_path)
    if res.n_ok == 0:
        top = res.failure_summary(1)
        why = f"; most common failure: {top[0][1]}" if top else ""
        raise InputError(f"holds no successful fit ({res.n_failed} failed, {res.n_pending} "
                         f"pending{why}): no maps written; see 'hpcxt status'",
                         path=results_path, field="status")
    fp = fingerprint({"results": [res.config_hash, res.region_table_hash, res.updated,
                                  res.n_final], "maps": cfg.maps.to_dict(),
                      "cluster": cfg.cluster.to_dict()})
    record = StageRecord(wd.maps_summary)
    if record.is_done("fingerprint", fp, *(wd.map_file(n) for n in MAPS)):
        log.info("maps: up to date (%s)", outdir)
        return record.done
    bundle = read_bundle(wd.bundle, load_events=False)
    table = read_regions(wd.regions)
    if res.region_table_hash != table.content_hash():
        raise InputError("was made for another region table; re-run 'hpcxt fit'",
                         path=results_path, field="region_table_hash")
    if not res.complete:
        log.warning("maps: the fit is not finished: %d of %d regions pending stay blank",
                    res.n_pending, len(res))
    kT = np.asarray(res.kT, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (np.asarray(res.kT_hi, float) - np.asarray(res.kT_lo, float)) / 2.0 / kT
    sel = select_regions(res.status, kT, frac, cfg.maps.drop_failed, cfg.maps.max_frac_error)
    values = region_values(res, table, bundle, sel)
    header = bundle.grid.header()
    images = {}
    for name, (bunit, desc) in MAPS.items():
        img = paint_blocks(values[name], table.row, table.col, table.step, bundle.mask)
        images[name] = img
        write_image(wd.map_file(name), img.astype(np.float32), header, bunit,
                    {"HDUNAME": name.upper(), "COMMENT": desc, "OBJECT": cfg.cluster.name,
                     "RESOLUT": table.resolution, "ORIGIN": "hpcxt"})
    summary = {
        "regions": len(table),
        "mapped_regions": int(sel.keep.sum()),
        "dropped": sel.dropped,
        "median_kT_keV": float(np.nanmedian(values["temperature"])) if sel.keep.any() else None,
        "files": sorted(f"{n}.fits" for n in MAPS),
    }
    if cfg.maps.png and sel.keep.any():
        from ..plots import write_quicklooks
        summary["png"] = write_quicklooks(outdir, images, bundle, cfg.cluster.name)
    record.done = summary
    record.mark("fingerprint", fp)
    dropped = ", ".join(f"{k} {v}" for k, v in sel.dropped.items() if v) or "none"
    log.info("maps: %d of %d regions mapped (dropped: %s), median kT %.2f keV, %.1f s -> %s",
             summary["mapped_regions"], len(table), dropped,
             summary["median_kT_keV"] or float("nan"), time.perf_counter() - t0, outdir)
    return summary
