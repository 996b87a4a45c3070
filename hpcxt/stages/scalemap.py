"""The scale-map stage: read the bundle, run the MPI scale map, write its outputs.

``hpcxt scalemap CONFIG`` runs :func:`run_scalemap` on every rank::

    mpiexec -n N python -m mpi4py -m hpcxt scalemap CONFIG

(or ``hpcxt scalemap CONFIG`` on one rank, no launcher). Rank 0 reads and
checks the prep bundle; the images are held once per node in MPI shared
memory (broadcast to every rank with ``--no-shared-memory``); the ranks
compute the scale map and the regions' coverage together
(:mod:`hpcxt.acb_mpi`), and rank 0 writes
``<workdir>/acb/scalemap.fits`` and ``<workdir>/acb/regions.h5``. Each
pixel's radius and each region's sums depend only on the images, never on
the partition, so the outputs are identical bit for bit on any number of
ranks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import acb, acb_mpi, bins
from ..errors import InputError
from ..hooks import NO_HOOKS
from ..io.regions_table import RegionTable, write_regions
from ..io.workdir import FileHashes, WorkDir, fingerprint
from ..parallel import bcast_or_raise
from ..shared import node_shared

log = logging.getLogger("hpcxt.scalemap")


#: The images of :class:`_Inputs`: held once per node in shared memory.
IMAGE_FIELDS = ("counts", "background", "mask", "fovs", "exposure_maps")


@dataclass
class _Inputs:
    """What rank 0 loads and broadcasts (the images: see :func:`_node_images`)."""

    up_to_date: bool
    config_hash: str
    bundle_hash: str = ""
    params: acb.ScaleMapParams | None = None
    counts: np.ndarray | None = None
    background: np.ndarray | None = None
    mask: np.ndarray | None = None
    fovs: np.ndarray | None = None
    exposure_maps: np.ndarray | None = None
    exposures: np.ndarray | None = None
    exposure_refs: np.ndarray | None = None
    obsids: list | None = None
    grid: object = None


def scalemap_paths(cfg) -> tuple[Path, Path]:
    """``<workdir>/acb/scalemap.fits`` and ``<workdir>/acb/regions.h5``."""
    wd = WorkDir.of(cfg)
    return wd.scalemap, wd.regions


def stage_hash(cfg, bundle_hash: str) -> str:
    """Hash of everything the scale map and region table depend on."""
    return fingerprint([scalemap_inputs(cfg), bundle_hash])


def scalemap_inputs(cfg) -> dict:
    """The config values that decide the scale map and the region table.

    With user bins (``fit.bins`` a file), the bins file's kind and content
    (size and SHA-256, not its path: an edited file makes a new table, a
    moved one does not) take the place of ``acb`` and ``fit.resolution``.
    """
    if cfg.fit.bins == "acb":
        return {"acb": cfg.acb.to_dict(), "fit.resolution": cfg.fit.resolution,
                "fit.min_obs_fraction": cfg.fit.min_obs_fraction}
    from ..io.binmap import bins_kind

    hashes = FileHashes(WorkDir.of(cfg).file_hashes)
    content = hashes.fingerprint(cfg.fit.bins)
    hashes.save()
    return {"fit.bins": {"kind": bins_kind(cfg.fit.bins), "content": content},
            "fit.min_obs_fraction": cfg.fit.min_obs_fraction}


def _stored_hashes(fits_path: Path, regions_path: Path) -> tuple[str | None, str | None]:
    """Config hashes stored in existing outputs (None where absent or unreadable)."""
    import h5py
    from astropy.io import fits

    fh = rh = None
    try:
        with fits.open(fits_path) as hdul:
            fh = hdul[0].header.get("HPCXTCFG")
    except (OSError, ValueError):
        pass
    try:
        with h5py.File(regions_path, "r") as f:
            rh = str(f.attrs.get("config_hash", ""))
    except (OSError, ValueError):
        pass
    return fh, rh


def _bundle_hash_only(bundle_path: Path) -> str | None:
    from ..io.bundle import read_bundle_identity
    try:
        return read_bundle_identity(bundle_path)[1]
    except InputError:
        return None


def _load(cfg) -> _Inputs:
    """Rank 0: read the bundle (or find the outputs up to date)."""
    from ..io.bundle import read_bundle

    bundle_path = WorkDir.of(cfg).bundle
    fits_path, regions_path = scalemap_paths(cfg)
    if fits_path.exists() and regions_path.exists():
        bh = _bundle_hash_only(bundle_path)
        if bh is not None:
            want = stage_hash(cfg, bh)
            if _stored_hashes(fits_path, regions_path) == (want, want):
                return _Inputs(up_to_date=True, config_hash=want, bundle_hash=bh)
    bundle = read_bundle(bundle_path, load_events=False)
    try:
        mode = acb.resolve_sn_mode(cfg.acb.sn, bundle.has_background)
    except ValueError as exc:
        raise InputError(str(exc), path=cfg.path, field="acb.sn") from None
    try:
        params = acb.ScaleMapParams(target_sn=float(cfg.acb.target_sn),
                                    max_radius=float(cfg.acb.max_radius),
                                    radius_step=float(cfg.acb.radius_step), mode=mode)
    except ValueError as exc:
        raise InputError(str(exc), path=cfg.path, field="acb") from None
    for name, img in (("counts", bundle.counts), ("background", bundle.background)):
        if name == "background" and mode == "counts":
            continue
        if not np.all(np.isfinite(img)) or np.any(img < 0):
            raise InputError("image has negative or non-finite pixels", path=bundle_path,
                             field=f"image/{name}")
    if not bundle.observations:
        raise InputError("bundle has no observations", path=bundle_path, field="obs")
    shape = bundle.counts.shape
    for o in bundle.observations:
        for name in ("exposure_map", "fov"):
            if getattr(o, name).shape != shape:
                raise InputError(f"shape {getattr(o, name).shape} differs from the image's "
                                 f"{shape}", path=bundle_path, field=f"obs/{o.obsid}/{name}")
    return _Inputs(
        up_to_date=False, config_hash=stage_hash(cfg, bundle.config_hash),
        bundle_hash=bundle.config_hash, params=params, **_images(bundle, mode),
        exposures=np.array([o.exposure for o in bundle.observations], dtype=np.float64),
        exposure_refs=np.array([acb.exposure_reference(o.exposure_map, o.fov)
                                for o in bundle.observations], dtype=np.float64),
        obsids=list(bundle.obsids), grid=bundle.grid)


def _images(bundle, mode: str) -> dict:
    """The images of :data:`IMAGE_FIELDS` from a bundle (background None unless used)."""
    return dict(
        counts=bundle.counts,
        background=bundle.background if mode == "background_subtracted" else None,
        mask=bundle.mask.astype(bool),
        fovs=np.stack([o.fov.astype(bool) for o in bundle.observations]),
        exposure_maps=np.stack([o.exposure_map for o in bundle.observations]))


@contextlib.contextmanager
def _node_images(cfg, comm, mode: str, loaded: dict, shared_memory: bool):
    """The images on every rank: once per node in shared memory, else broadcast.

    Collective. ``loaded`` holds rank 0's images (empty elsewhere) and is
    emptied. The first rank of every other node reads its own from the
    bundle, so that no message carries them; without shared memory rank 0
    broadcasts them, as before. Yields ``{name: ndarray or None}`` over
    :data:`IMAGE_FIELDS`.
    """
    from ..io.bundle import read_bundle

    def layout():
        if not loaded:
            loaded.update(_images(read_bundle(WorkDir.of(cfg).bundle, load_events=False), mode))
        return {k: (v.shape, v.dtype) for k, v in loaded.items() if v is not None}

    def fill(arrays):
        for name, view in arrays.items():
            view[...] = loaded[name]
        loaded.clear()

    with node_shared(comm, layout, fill, enabled=shared_memory, what="images") as shared:
        if shared is None:
            images = comm.bcast(dict(loaded) if comm.Get_rank() == 0 else None, root=0)
            loaded.clear()
            yield images
        else:
            yield {name: shared.get(name) for name in IMAGE_FIELDS}


def write_scalemap_fits(path, radius: np.ndarray, grid, params: acb.ScaleMapParams,
                        config_hash: str) -> Path:
    """Write the scale map (image pixels, NaN where none) with the image WCS, atomically."""
    from ..io.fitsio import write_image

    return write_image(path, np.asarray(radius, dtype=np.float64), grid.header(), extra={
        "BUNIT": ("pixel", "circle radius, image pixels"),
        "TARGETSN": (float(params.target_sn), "S/N each circle reaches"),
        "SNMODE": (params.mode, "S/N: sqrt(C) or (C-B)/sqrt(C+B)"),
        "RSTEP": (float(params.radius_step), "radius grid step, image pixels"),
        "RMAX": (float(params.max_radius), "largest radius tried, image pixels"),
        "BINSKY": (int(grid.bin), "sky pixels per image pixel"),
        "HPCXTCFG": (config_hash, "hpcxt scalemap input hash")})


def run_scalemap(cfg, comm, tile_size: int | None = None, hooks=None,
                 shared_memory: bool = True) -> None:
    """``hpcxt scalemap``: scale map and region table, on every rank of ``comm``.

    Collective. Rank 0 reads ``<workdir>/prep/bundle.h5`` and writes
    ``<workdir>/acb/scalemap.fits`` and ``<workdir>/acb/regions.h5``; with
    user bins (``fit.bins`` a file), only the region table, made by rank 0
    from the bins (:func:`run_user_bins`). Nothing
    is recomputed when both outputs exist and were made from the same
    bundle and the same ``acb``, ``fit.resolution`` and
    ``fit.min_obs_fraction``.

    The images are held once per node in shared memory (when MPI can);
    ``shared_memory=False`` (``--no-shared-memory``) broadcasts a copy to
    every rank instead. The outputs are the same either way.

    Raises
    ------
    InputError
        On every rank: no or unreadable bundle, a bad ``acb.sn`` for the
        data, or no pixel reaching ``acb.target_sn``.

    Notes
    -----
    ``hooks.scalemap_inputs_loaded(rank)`` runs on every rank once the
    inputs are loaded (tests make one rank fail there, to check that one
    failing rank ends the whole job under ``python -m mpi4py``).
    """
    if cfg.fit.bins != "acb":
        bcast_or_raise(comm, lambda: run_user_bins(cfg))
        return
    t_start = time.perf_counter()
    loaded = {}

    def load():
        inputs = _load(cfg)
        loaded.update((k, getattr(inputs, k)) for k in IMAGE_FIELDS if not inputs.up_to_date)
        return replace(inputs, **dict.fromkeys(IMAGE_FIELDS))

    inputs: _Inputs = bcast_or_raise(comm, load)
    if inputs.up_to_date:
        if comm.Get_rank() == 0:
            log.info("scale map and region table are up to date (%s, %s)",
                     *scalemap_paths(cfg))
        return
    with _node_images(cfg, comm, inputs.params.mode, loaded, shared_memory) as images:
        _compute_and_write(cfg, comm, replace(inputs, **images), tile_size, hooks, t_start)


def _compute_and_write(cfg, comm, inputs: _Inputs, tile_size, hooks, t_start: float) -> None:
    """The scale map and region coverage on every rank; rank 0 writes them."""
    rank, size = comm.Get_rank(), comm.Get_size()
    fits_path, regions_path = scalemap_paths(cfg)
    (hooks or NO_HOOKS).scalemap_inputs_loaded(rank)
    params = inputs.params
    if rank == 0:
        log.info("scale map of %dx%d pixels (%d mapped), target S/N %g (%s), radii %g..%g "
                 "image pixels, %d rank(s)", inputs.counts.shape[1], inputs.counts.shape[0],
                 int(inputs.mask.sum()), params.target_sn, params.mode, params.radius_step,
                 params.max_radius, size)
    stats: dict = {}
    index = acb_mpi.compute_scalemap_index(inputs.counts, inputs.background, inputs.mask, params,
                                   comm, tile_size=tile_size, stats=stats)
    t_map = time.perf_counter()

    def select():
        if not np.any(index > 0):
            raise InputError(f"no pixel reaches S/N {params.target_sn:g} within "
                             f"{params.max_radius:g} image pixels; lower acb.target_sn or "
                             "raise acb.max_radius", path=cfg.path, field="acb.target_sn")
        step = acb.RESOLUTION_STEP[cfg.fit.resolution]
        rows, cols = acb.region_pixels(index, inputs.mask, step)
        return rows, cols, index[rows, cols].astype(np.int64), step

    rows, cols, kreg, step = bcast_or_raise(comm, select)
    table = acb.disk_table(params.max_radius, params.radius_step)
    cov = acb_mpi.compute_region_coverage(inputs.mask, inputs.fovs, inputs.exposure_maps, rows, cols,
                                  kreg, table, comm)
    if rank != 0:
        return
    fraction, effective = cov
    radius_map = acb.index_to_radius(index, params.radius_step)
    grid = inputs.grid
    x, y = grid.pixel_to_sky(rows, cols)
    radius = kreg.astype(np.float64) * params.radius_step
    regions = RegionTable(
        region_id=np.arange(rows.size, dtype=np.int64), row=rows.astype(np.int32),
        col=cols.astype(np.int32), x=np.asarray(x, dtype=np.float64),
        y=np.asarray(y, dtype=np.float64), radius=radius, radius_sky=radius * grid.bin,
        fraction=fraction, effective_exposure=effective,
        exposure_time=acb.effective_time(fraction, effective, inputs.exposures,
                                         inputs.exposure_refs),
        used=fraction >= float(cfg.fit.min_obs_fraction), obsids=list(inputs.obsids),
        resolution=cfg.fit.resolution, step=step, target_sn=float(params.target_sn),
        config_hash=inputs.config_hash, bundle_hash=inputs.bundle_hash,
        inputs=scalemap_inputs(cfg))
    write_regions(regions_path, regions)
    write_scalemap_fits(fits_path, radius_map, grid, params, inputs.config_hash)
    got = radius_map[np.isfinite(radius_map)]
    secs = stats.get("seconds", [0.0])
    log.info("scale map: %d mapped pixels, %d with a radius; radius min %.3f, median %.3f, "
             "max %.3f image pixels; %d pixel(s) checked exactly", int(inputs.mask.sum()),
             got.size, got.min(), float(np.median(got)), got.max(), stats.get("n_exact", 0))
    log.info("regions: %d (resolution %s, every %d pixel(s)); %s", rows.size,
             cfg.fit.resolution, step, regions_path)
    log.info("wrote %s in %.2f s (scale map %.2f s; %d tiles, per rank %s; per-rank CPU "
             "%s s)", fits_path, time.perf_counter() - t_start, t_map - t_start,
             stats.get("tiles", 0), ", ".join(str(n) for n in stats.get("tiles_per_rank", [])),
             ", ".join(f"{s:.2f}" for s in secs))


# --------------------------------------------------------------------------
# user bins


def _grid_sky_frame(grid):
    """The sky frame whose 1-based pixels are sky x, y, from the image grid's WCS."""
    from ..io.fitsio import SkyFrame

    h = grid.header()
    return SkyFrame(ra0=float(h["CRVAL1"]), dec0=float(h["CRVAL2"]),
                    crpix_x=grid.x0 + (float(h["CRPIX1"]) - 0.5) * grid.bin,
                    crpix_y=grid.y0 + (float(h["CRPIX2"]) - 0.5) * grid.bin,
                    cdelt_x=float(h["CDELT1"]) / grid.bin, cdelt_y=float(h["CDELT2"]) / grid.bin)


def user_bins_on_grid(path, kind: str, grid) -> np.ndarray:
    """The user's bin number of each image pixel (-1 in none), from a bin map or region file.

    A bin map is reprojected by the nearest bin-map pixel centre
    (:func:`hpcxt.bins.reproject_bin_map`); a region file's include shapes
    are bins 0, 1, ... in file order, holding the image pixels whose
    centres they contain (the first shape wins where they overlap), and
    its exclude shapes (``-circle``) are left out of every bin.
    """
    from ..io.binmap import FIELD, read_bin_map

    if kind == "map":
        values, wcs = read_bin_map(path)
        try:
            return bins.reproject_bin_map(values, wcs, grid.wcs(), grid.shape)
        except ValueError as exc:
            raise InputError(str(exc), path=path, field=FIELD) from None
    from ..prep.regionfile import read_region_file

    regions = read_region_file(path, FIELD)
    rows, cols = np.mgrid[0:grid.shape[0], 0:grid.shape[1]]
    x, y = grid.pixel_to_sky(rows, cols)
    include, exclude = regions.shape_masks(x, y, _grid_sky_frame(grid))
    if include.shape[0] == 0:
        raise InputError("has no include region to use as a bin", path=path, field=FIELD)
    return bins.bin_map_from_masks(include, exclude)


def run_user_bins(cfg) -> None:
    """Rank 0 of ``hpcxt scalemap`` with ``fit.bins`` a file: the region table of the bins.

    One region per bin with mapped pixels (ids in increasing order of the
    user's bin numbers); per observation, the share of the bin's mapped
    pixels in its field, the exposure map averaged over them and the
    effective exposure time (:func:`hpcxt.bins.bin_coverage`,
    :func:`hpcxt.acb.effective_time`); the bin map on the image grid is
    stored in the table. Nothing is redone when regions.h5 was made from
    the same bundle, bins file content and ``fit.min_obs_fraction``.

    Raises
    ------
    InputError
        No bundle, an unreadable bins file, or no bin over a mapped pixel.
    """
    from ..io.binmap import FIELD, bins_kind
    from ..io.bundle import read_bundle

    t_start = time.perf_counter()
    wd = WorkDir.of(cfg)
    path = Path(cfg.fit.bins)
    bh = _bundle_hash_only(wd.bundle)
    if bh is not None and wd.regions.exists():
        want = stage_hash(cfg, bh)
        if _stored_hashes(wd.scalemap, wd.regions)[1] == want:
            log.info("region table of the bins in %s is up to date (%s)", path, wd.regions)
            return
    bundle = read_bundle(wd.bundle, load_events=False)
    if not bundle.observations:
        raise InputError("bundle has no observations", path=wd.bundle, field="obs")
    grid = bundle.grid
    kind = bins_kind(path)
    user = user_bins_on_grid(path, kind, grid)
    mask = bundle.mask.astype(bool)
    lab = bins.label_bins(user, mask)
    n_file = np.unique(user[user >= 0]).size
    if len(lab) == 0:
        raise InputError(f"none of its {n_file} bins covers a mapped pixel of the image "
                         "(wrong sky position, or bins on another field?)", path=path,
                         field=FIELD)
    fovs = np.stack([o.fov.astype(bool) for o in bundle.observations])
    expmaps = np.stack([o.exposure_map for o in bundle.observations])
    fraction, effective = bins.bin_coverage(mask, fovs, expmaps, lab.region_map, len(lab))
    exposures = np.array([o.exposure for o in bundle.observations], dtype=np.float64)
    refs = np.array([acb.exposure_reference(o.exposure_map, o.fov)
                     for o in bundle.observations], dtype=np.float64)
    x, y = grid.pixel_to_sky(lab.centre_row, lab.centre_col)
    radius = np.sqrt(lab.n_pixels / np.pi)
    inputs = scalemap_inputs(cfg)
    config_hash = stage_hash(cfg, bundle.config_hash)
    n = len(lab)
    table = RegionTable(
        region_id=np.arange(n, dtype=np.int64), row=lab.row, col=lab.col,
        x=np.asarray(x, dtype=np.float64), y=np.asarray(y, dtype=np.float64),
        radius=radius, radius_sky=radius * grid.bin, fraction=fraction,
        effective_exposure=effective,
        exposure_time=acb.effective_time(fraction, effective, exposures, refs),
        used=fraction >= float(cfg.fit.min_obs_fraction), obsids=list(bundle.obsids),
        resolution="bins", step=1, target_sn=0.0, config_hash=config_hash,
        bundle_hash=bundle.config_hash, inputs=inputs, bins=kind, bins_file=str(path),
        bin_map=lab.region_map, bin_id=lab.bin_id,
        bin_grid=(float(grid.x0), float(grid.y0), float(grid.bin)))
    write_regions(wd.regions, table)
    log.info("regions: %d user bins (%s %s; %d of its bins on the image), %d to %d "
             "image pixels each (median %d); %s in %.2f s", n,
             "bin map" if kind == "map" else "region file", path, n_file,
             int(lab.n_pixels.min()), int(lab.n_pixels.max()), int(np.median(lab.n_pixels)),
             wd.regions, time.perf_counter() - t_start)
