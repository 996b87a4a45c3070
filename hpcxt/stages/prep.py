"""Serial prep driver: runs the prep stages in order, records which finished.

Each stage is identified by a fingerprint of what it read (config fields
and the size and content hash of its input files, not their paths, so a
copied or moved project keeps its records; see
:class:`hpcxt.io.workdir.FileHashes`):

``products``  (``ciao`` backend only) CIAO tools make the products
``clean``     filters and reprojects one observation's events
              -> ``prep/clean/<obsid>.<fingerprint>.h5``
``bundle``    grid, crop, images, exposure maps, responses
              -> ``prep/bundle.h5`` (which stores its fingerprint) and FITS
              images for ds9; recorded in ``prep/stages.json``

Re-running skips a stage whose output exists, reads, and was made from the
same fingerprint; a changed input or config field re-runs that stage and
everything after it. Outputs are written aside and renamed. A clean-event
file is named by its fingerprint, so new inputs never overwrite the files
of the last finished bundle: when a new input turns out bad (a crop off
the data, say), the finished bundle and what it was made from stay as they
were. Clean-event files of other inputs are removed once a new bundle is
made.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..io.bundle import Bundle, ImageGrid, ObsData, write_bundle
from ..io.fitsio import ChunkStats, SkyFrame, open_events, read_image, write_image
from ..io.workdir import (FileHashes, StageRecord, WorkDir, atomic_write, fingerprint,
                         write_json_atomic)
from ..io.hdf5 import open_checked
from ..prep import checks
from ..prep import products as P
from ..prep.backend import choose_backend
from ..prep.regionfile import read_region_file

log = logging.getLogger("hpcxt.prep")


# --------------------------------------------------------------------------
# clean-event files


def _save_clean(path: Path, src: P.CleanEvents, bkg: P.CleanEvents | None, frame: SkyFrame,
                meta: dict) -> None:
    with atomic_write(path, fsync=False) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["frame"] = json.dumps([frame.ra0, frame.dec0, frame.crpix_x, frame.crpix_y,
                                       frame.cdelt_x, frame.cdelt_y])
        f.attrs["meta"] = json.dumps(meta)
        for name, ce in (("source", src), ("background", bkg)):
            if ce is None:
                continue
            g = f.create_group(name)
            for col, arr in ce.as_dict().items():
                g.create_dataset(col, data=arr)
            g.attrs.update(exposure=ce.exposure, n_input=ce.n_input,
                           removed=json.dumps(ce.removed))
            g.create_dataset("good_time", data=np.array(ce.good_time, float).reshape(2, -1))
            g.create_dataset("flare_intervals",
                             data=np.array(ce.flare_intervals, float).reshape(2, -1))


def _load_clean(path: Path):
    with open_checked(path, "clean-event file (re-make it: hpcxt prep --force)") as f:
        frame = SkyFrame(*json.loads(f.attrs["frame"]))
        meta = json.loads(f.attrs["meta"])
        out = {}
        for name in ("source", "background"):
            if name not in f:
                out[name] = None
                continue
            g = f[name]
            gt = g["good_time"][()]
            fi = g["flare_intervals"][()]
            out[name] = P.CleanEvents(x=g["x"][()], y=g["y"][()], pi=g["pi"][()],
                                      energy=g["energy"][()], exposure=float(g.attrs["exposure"]),
                                      removed=json.loads(g.attrs["removed"]),
                                      n_input=int(g.attrs["n_input"]),
                                      good_time=(gt[0], gt[1]), flare_intervals=(fi[0], fi[1]))
    return frame, meta, out["source"], out["background"]


# --------------------------------------------------------------------------
# the driver


def _observation_products(cfg, workdir: Path, force: bool) -> list[dict]:
    backend, why = choose_backend(cfg)
    log.info("prep backend: %s (%s)", backend, why)
    if backend == "ciao":
        from ..prep import ciao
        return ciao.prepare_observations(cfg, workdir, force=force)
    obs = []
    for i, o in enumerate(cfg.observations):
        for key in ("events", "exposure_map", "arf", "rmf"):
            if o[key] is None:
                raise InputError("required with the products backend", path=cfg.path,
                                 field=f"observations[{i}].{key}")
        obs.append({k: o[k] for k in ("obsid", "events", "background", "exposure_map",
                                      "arf", "rmf")})
    return obs


def _progress(iterable, desc: str, total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit="obs", disable=not sys.stderr.isatty(),
                leave=False)


def _clean_is_intact(path: Path) -> bool:
    """A clean-event file exists and reads (a truncated one is made again)."""
    if not path.exists():
        return False
    try:
        _load_clean(path)
    except (OSError, KeyError, ValueError):
        log.warning("clean: %s is unreadable; making it again", path)
        return False
    return True


def _bundle_is(path: Path, fp: str) -> bool:
    """The bundle reads and was made from inputs with fingerprint ``fp``."""
    from ..io.bundle import read_bundle_identity
    try:
        return read_bundle_identity(path)[1] == fp
    except InputError as exc:
        log.warning("bundle: %s; making it again", exc)
        return False


def _remove_stale_clean_files(wd: WorkDir, obs_products, clean_fps) -> None:
    """Once a bundle is made, clean-event files of other inputs are not needed."""
    keep = {wd.clean_events(o["obsid"], fp).name for o, fp in zip(obs_products, clean_fps)}
    for path in (wd.prep / "clean").glob("*.h5"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _clean_observation(cfg, o: dict, out: Path, frame, crop, point_sources, chunk_rows: int,
                       read_stats: ChunkStats | None):
    """Filter one observation's events (and background) and save them to ``out``.

    The event files are read ``chunk_rows`` rows at a time. Returns the sky
    frame of the bundle (the first observation's).
    """
    obsid = o["obsid"]
    ev = open_events(o["events"], role=f"observation {obsid} events")
    frame = frame or ev.frame
    scale_band = cfg.prep.background_scale_band
    # Products of the ciao backend were deflared by CIAO with the same rule.
    deflare = None if o.get("deflared") else cfg.prep.deflare
    src = P.clean_events(ev, cfg.prep.ccds, deflare, point_sources, frame,
                         scale_band=scale_band, scale_exclude=crop, chunk_rows=chunk_rows,
                         stats=read_stats)
    if len(src.x) == 0:
        raise InputError("no events left after the ccd, energy, GTI and flare filters",
                         path=o["events"], field="prep.ccds")
    bkg = None
    if o.get("background"):
        bev = open_events(o["background"], role=f"observation {obsid} background",
                          need_time=False)
        # The blank-sky file is reprojected to this observation's pointing;
        # its own column WCS says so, and clean_events reprojects with it.
        bkg = P.clean_events(bev, cfg.prep.ccds, None, point_sources, frame,
                             is_background=True, scale_band=scale_band, scale_exclude=crop,
                             chunk_rows=chunk_rows, stats=read_stats)
    meta = {"obsid": obsid, "header": {k: str(v) for k, v in ev.header.items()}}
    if bkg is not None:
        n_src, n_bkg, area = P.scale_counts(src, bkg)
        meta["bkg_scale"] = P.background_scale(n_src, n_bkg, path=o["background"])
        meta["bkg_scale_area"] = area
    starts, stops = (np.asarray(v, dtype=float) for v in src.flare_intervals)
    meta["flare_seconds"] = float(np.sum(stops - starts)) if starts.size else 0.0
    _save_clean(out, src, bkg, frame, meta)
    log.info("clean %s: %d of %d events kept, exposure %.0f s (%.0f s of flares removed)",
             obsid, len(src.x), src.n_input, src.exposure, meta["flare_seconds"])
    return frame


def run_prep(cfg, force: bool = False, chunk_rows: int | None = None,
             read_stats: ChunkStats | None = None) -> Path:
    """Run every prep stage that is not up to date; return the bundle path.

    Parameters
    ----------
    cfg : Config
        Validated config.
    force : bool
        Re-run every stage regardless of the stage record.
    chunk_rows : int, optional
        Rows of an event file read and filtered at a time (default
        ``prep.chunk_rows``). Not part of any fingerprint: the outputs do not
        depend on it.
    read_stats : ChunkStats, optional
        Records every chunk read (the seam through which tests and
        benchmarks see how much of an event file was held at once).
    """
    t_start = time.perf_counter()
    wd = WorkDir.of(cfg)
    record = StageRecord(wd.prep_stages)
    hashes = FileHashes(wd.file_hashes)
    if chunk_rows is None:
        chunk_rows = cfg.prep.chunk_rows
    try:
        return _run_prep(cfg, wd, record, hashes, force, t_start, chunk_rows, read_stats)
    finally:
        hashes.save()


def _run_prep(cfg, wd: WorkDir, record: StageRecord, hashes: FileHashes, force: bool,
              t_start: float, chunk_rows: int, read_stats: ChunkStats | None) -> Path:
    obs_products = _observation_products(cfg, wd.root, force)
    checks.check_products(obs_products)
    file_fp = hashes.fingerprint

    point_sources = (read_region_file(cfg.prep.point_sources, "prep.point_sources")
                     if cfg.prep.point_sources else None)
    crop = (read_region_file(cfg.prep.crop_region, "prep.crop_region")
            if cfg.prep.crop_region else None)
    clean_settings = {"ccds": cfg.prep.ccds, "deflare": cfg.prep.deflare.to_dict(),
                      "scale_band": cfg.prep.background_scale_band,
                      "crop": file_fp(cfg.prep.crop_region),
                      "point_sources": file_fp(cfg.prep.point_sources),
                      "reference": file_fp(obs_products[0]["events"])}

    frame = None
    clean_fps = []
    for o in _progress(obs_products, "clean", len(obs_products)):
        fp = fingerprint({"settings": clean_settings, "events": file_fp(o["events"]),
                          "background": file_fp(o.get("background"))})
        clean_fps.append(fp)
        out = wd.clean_events(o["obsid"], fp)
        if not force and _clean_is_intact(out):
            frame = frame or _load_clean(out)[0]
            log.info("clean %s: up to date", o["obsid"])
            continue
        frame = _clean_observation(cfg, o, out, frame, crop, point_sources, chunk_rows,
                                   read_stats)

    # ---- bundle
    bundle_path = wd.bundle
    bfp = fingerprint({"clean": clean_fps, "bin": cfg.prep.bin,
                        "energy_band": cfg.prep.energy_band,
                        "crop": file_fp(cfg.prep.crop_region),
                        "obs": [[file_fp(o[k]) for k in ("exposure_map", "arf", "rmf")]
                                for o in obs_products]})
    if not force and record.is_done("bundle", bfp, bundle_path) and _bundle_is(bundle_path, bfp):
        log.info("bundle: up to date (%s)", bundle_path)
        return bundle_path
    bundle, summary = _make_bundle(cfg, obs_products, clean_fps, wd, frame, crop,
                                   point_sources, bfp)
    write_bundle(bundle_path, bundle)
    _write_images(wd, bundle)
    write_json_atomic(wd.prep_summary, summary)
    record.mark("bundle", bfp)
    _remove_stale_clean_files(wd, obs_products, clean_fps)
    _log_summary(summary, bundle, time.perf_counter() - t_start)
    return bundle_path


def _clean_source_bbox(paths) -> tuple[float, float, float, float]:
    """xmin, xmax, ymin, ymax (sky pixels) of the source events of clean-event files."""
    lo = np.array([np.inf, np.inf])
    hi = -lo
    for path in paths:
        with open_checked(path, "clean-event file (re-make it: hpcxt prep --force)") as f:
            for i, col in enumerate(("x", "y")):
                v = f["source"][col][()]
                if v.size:
                    lo[i], hi[i] = min(lo[i], v.min()), max(hi[i], v.max())
    return lo[0], hi[0], lo[1], hi[1]


def _clean_has_background(path) -> bool:
    with open_checked(path, "clean-event file (re-make it: hpcxt prep --force)") as f:
        return "background" in f


def _bundle_grid(cfg, clean_paths, frame, crop, point_sources):
    """The image grid around the crop (or the clean events) and its pixel masks.

    Returns
    -------
    grid : ImageGrid
        ``prep.bin`` sky pixels per image pixel.
    in_crop, in_ps : ndarray (ny, nx) bool
        Image pixels inside the crop region and inside a point source.
    """
    bin_ = cfg.prep.bin
    if crop is not None:
        xmin, xmax, ymin, ymax = crop.include_bbox(frame)
    else:
        xmin, xmax, ymin, ymax = _clean_source_bbox(clean_paths)
    x0, y0, shape = P.grid_for_box(xmin, xmax, ymin, ymax, bin_)
    if shape[0] * shape[1] > 20_000_000:
        raise InputError(f"image of {shape[1]}x{shape[0]} pixels is too large; draw a crop "
                         "region or raise prep.bin", path=cfg.path, field="prep.crop_region")
    header = frame.image_header(x0, y0, bin_, shape)
    grid = ImageGrid(shape=shape, x0=x0, y0=y0, bin=bin_, wcs_header=header.tostring(sep="\n"))
    in_crop = P.pixel_mask(crop, grid, frame) if crop is not None else np.ones(shape, bool)
    in_ps = (P.pixel_mask(point_sources, grid, frame) if point_sources is not None
             else np.zeros(shape, bool))
    return grid, in_crop, in_ps


def _make_bundle(cfg, obs_products, clean_fps, wd: WorkDir, frame, crop, point_sources,
                 bundle_fp):
    from ..prep.response import read_response

    # One observation's clean events in memory at a time besides the bundle's
    # (cropped) ones, so the peak is the bundle plus one observation.
    clean_paths = [wd.clean_events(o["obsid"], fp) for o, fp in zip(obs_products, clean_fps)]
    grid, in_crop, in_ps = _bundle_grid(cfg, clean_paths, frame, crop, point_sources)
    shape = grid.shape
    band = cfg.prep.energy_band
    counts = np.zeros(shape)
    background = np.zeros(shape)
    exposure = np.zeros(shape)
    observations = []
    summary = {"grid": {"shape": list(shape), "x0": grid.x0, "y0": grid.y0, "bin": grid.bin},
               "observations": []}
    has_background = all(_clean_has_background(p) for p in clean_paths)
    for o, clean_path in zip(obs_products, clean_paths):
        obsid = o["obsid"]
        _, meta, src, bkg = _load_clean(clean_path)
        src = P.crop_events(src, crop, grid, frame, in_place=True)
        expimg = read_image(o["exposure_map"], role=f"observation {obsid} exposure map")
        expmap = P.sample_image_on_grid(expimg.data, expimg.wcs, grid, frame)
        checks.check_exposure_overlap(P.bin_events(src.x, src.y, grid), expmap, o["events"],
                                      o["exposure_map"])
        fov = (expmap > 0) & in_crop & ~in_ps
        expmap = np.where(fov, expmap, 0.0)
        in_band = (src.energy >= band[0] * 1000) & (src.energy < band[1] * 1000)
        counts += P.bin_events(src.x, src.y, grid, in_band)
        bkg_scale = meta.get("bkg_scale", 0.0)
        bkg_events = None
        if bkg is not None and has_background:
            bkg = P.crop_events(bkg, crop, grid, frame, in_place=True)
            bkg_in_band = (bkg.energy >= band[0] * 1000) & (bkg.energy < band[1] * 1000)
            background += bkg_scale * P.bin_events(bkg.x, bkg.y, grid, bkg_in_band)
            bkg_events = bkg.as_dict()
        exposure += expmap
        response = read_response(o["arf"], o["rmf"])
        checks.check_pi_range(None, response, o["events"], o["rmf"], pi=src.pi)
        if bkg_events is not None:
            checks.check_pi_range(None, response, o["background"], o["rmf"], pi=bkg.pi)
        observations.append(ObsData(
            obsid=str(obsid), exposure=src.exposure,
            bkg_exposure=float(bkg.exposure) if bkg is not None else 0.0,
            bkg_scale=float(bkg_scale), events=src.as_dict(), bkg_events=bkg_events,
            exposure_map=expmap.astype(np.float32), fov=fov, response=response,
            source_file=str(o["events"]), background_file=str(o.get("background") or "")))
        kept = len(src.x)
        summary["observations"].append({
            "obsid": obsid, "input_events": src.n_input, "kept_events": kept,
            "removed": src.removed, "exposure_s": src.exposure,
            "flare_seconds": meta.get("flare_seconds", 0.0), "bkg_scale": bkg_scale,
            "bkg_scale_area": meta.get("bkg_scale_area", ""),
            "bkg_events": 0 if bkg is None else len(bkg.x)})
    mask = in_crop & ~in_ps & (exposure > 0)
    if not mask.any() or counts[mask].sum() == 0:
        raise InputError("crop region holds no exposed pixels with counts (is it outside "
                         "the observations' fields?)", path=cfg.prep.crop_region or cfg.path,
                         field="prep.crop_region")
    counts = np.where(mask, counts, 0.0)
    background = np.where(mask, background, 0.0)
    bundle = Bundle(grid=grid, counts=counts, background=background, exposure=exposure,
                    mask=mask, observations=observations, config_hash=bundle_fp,
                    energy_band=tuple(band), has_background=has_background)
    summary["mapped_pixels"] = int(mask.sum())
    summary["counts_in_band"] = float(counts.sum())
    return bundle, summary


def _write_images(wd: WorkDir, bundle: Bundle) -> None:
    h = bundle.grid.header()
    lo, hi = bundle.energy_band
    extra = {"ENERG_LO": (lo, "keV"), "ENERG_HI": (hi, "keV"), "ORIGIN": "hpcxt"}
    write_image(wd.prep_image("counts"), bundle.counts.astype(np.float32), h, "count", extra)
    write_image(wd.prep_image("background"), bundle.background.astype(np.float32), h,
                "count", extra)
    write_image(wd.prep_image("exposure"), bundle.exposure.astype(np.float32), h, "cm**2 s",
                extra)
    write_image(wd.prep_image("mask"), bundle.mask.astype(np.uint8), h, "", extra)


def _log_summary(summary: dict, bundle: Bundle, seconds: float) -> None:
    ny, nx = bundle.grid.shape
    log.info("bundle: %dx%d image pixels (%d mapped), %.0f counts in %.1f-%.1f keV, %.1f s",
             nx, ny, summary["mapped_pixels"], summary["counts_in_band"],
             bundle.energy_band[0], bundle.energy_band[1], seconds)
    for o in summary["observations"]:
        removed = ", ".join(f"{k} {v}" for k, v in o["removed"].items() if v)
        log.info("  obs %s: %d of %d events kept (removed: %s); exposure %.0f s; "
                 "background scale %.4f", o["obsid"], o["kept_events"], o["input_events"],
                 removed or "none", o["exposure_s"], o["bkg_scale"])
