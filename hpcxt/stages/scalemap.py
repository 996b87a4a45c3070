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

from .. import acb, acb_mpi
from ..errors import InputError
from ..hooks import NO_HOOKS
from ..io.regions_table import RegionTable, write_regions
from ..io.workdir import WorkDir, fingerprint
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
    """The config values that decide the scale map and the region table."""
    return {"acb": cfg.acb.to_dict(), "fit.resolution": cfg.fit.resolution,
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
    ``<workdir>/acb/scalemap.fits`` and ``<workdir>/acb/regions.h5``. Nothing
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
