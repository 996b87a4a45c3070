"""The prep bundle: everything the MPI stages read, in one HDF5 file.

Layout of ``<workdir>/prep/bundle.h5`` (format version 1)::

    /                      attrs: format_version, config_hash, hpcxt_version,
                                  energy_band (keV, 2), has_background
    /image/                attrs: x0, y0 (sky pixels, lower-left edge of
                                  image pixel [0, 0]), bin (sky pixels per
                                  image pixel), wcs_header (FITS header text)
        counts       (ny, nx) float64  counts in energy_band, all observations
        background   (ny, nx) float64  scaled background counts in energy_band
        exposure     (ny, nx) float64  summed exposure maps, cm**2 s
        mask         (ny, nx) bool     pixel is mapped (in crop, in a field,
                                       not in a point source)
    /obs/<obsid>/          attrs: obsid, exposure (s), bkg_exposure (s),
                                  bkg_scale, source_file, background_file
        events/{x, y, pi, energy}       cleaned, cropped source events
        bkg_events/{x, y, pi, energy}   same for the background (if any)
        exposure_map (ny, nx) float32   cm**2 s on the image grid
        fov          (ny, nx) bool      inside this observation's field,
                                        in crop, not in a point source
        arf/{energ_lo, energ_hi, specresp}     keV, keV, cm**2
        rmf/{energ_lo, energ_hi, matrix, e_min, e_max}
                                        keV; matrix (n_energy, n_channel)
                                        float32; attrs offset (first channel)

Events: ``x``, ``y`` are float64 sky pixels in the bundle's common sky frame
(the first observation's tangent point), ``pi`` int32 channel, ``energy``
float32 eV. ``bkg_scale`` multiplies background counts from an area into the
expected background counts in the source data from the same area (ratio of
9.5-12 keV counts); ``bkg_scale * exposure / bkg_exposure`` is not assumed.

The file is written aside and renamed (:func:`hpcxt.io.workdir.atomic_write`),
so a reader never sees a half-written bundle.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..data import Bundle, ImageGrid, ObsData, Response  # noqa: F401  (the bundle's types)
from .hdf5 import open_versioned
from .workdir import atomic_write

FORMAT_VERSION = 1
EVENT_COLUMNS = ("x", "y", "pi", "energy")


def _write_events(group, ev: dict) -> None:
    for col in EVENT_COLUMNS:
        group.create_dataset(col, data=ev[col])


def write_bundle(path, bundle: Bundle) -> Path:
    """Write ``bundle`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        _write_bundle_file(tmp, bundle)
    return path


def _write_bundle_file(tmp: Path, bundle: Bundle) -> None:
    with h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config_hash"] = bundle.config_hash
        f.attrs["hpcxt_version"] = __version__
        f.attrs["energy_band"] = np.asarray(bundle.energy_band, dtype=float)
        f.attrs["has_background"] = bool(bundle.has_background)
        img = f.create_group("image")
        g = bundle.grid
        img.attrs.update(x0=g.x0, y0=g.y0, bin=g.bin, wcs_header=g.wcs_header)
        opts = dict(compression="gzip", compression_opts=4, shuffle=True)
        img.create_dataset("counts", data=bundle.counts.astype(np.float64), **opts)
        img.create_dataset("background", data=bundle.background.astype(np.float64), **opts)
        img.create_dataset("exposure", data=bundle.exposure.astype(np.float64), **opts)
        img.create_dataset("mask", data=bundle.mask.astype(bool), **opts)
        obs_root = f.create_group("obs")
        f.attrs["obsids"] = np.array([o.obsid for o in bundle.observations], dtype="S")
        for o in bundle.observations:
            og = obs_root.create_group(o.obsid)
            og.attrs.update(obsid=o.obsid, exposure=o.exposure, bkg_exposure=o.bkg_exposure,
                            bkg_scale=o.bkg_scale, source_file=o.source_file,
                            background_file=o.background_file)
            _write_events(og.create_group("events"), o.events)
            if o.bkg_events is not None:
                _write_events(og.create_group("bkg_events"), o.bkg_events)
            og.create_dataset("exposure_map", data=o.exposure_map.astype(np.float32), **opts)
            og.create_dataset("fov", data=o.fov.astype(bool), **opts)
            r = o.response
            arf = og.create_group("arf")
            arf.create_dataset("energ_lo", data=r.arf_energ_lo)
            arf.create_dataset("energ_hi", data=r.arf_energ_hi)
            arf.create_dataset("specresp", data=r.specresp)
            rmf = og.create_group("rmf")
            rmf.attrs["offset"] = int(r.offset)
            rmf.create_dataset("energ_lo", data=r.rmf_energ_lo)
            rmf.create_dataset("energ_hi", data=r.rmf_energ_hi)
            rmf.create_dataset("matrix", data=r.rmf_matrix.astype(np.float32), **opts)
            rmf.create_dataset("e_min", data=r.e_min)
            rmf.create_dataset("e_max", data=r.e_max)


def _read_events(group) -> dict:
    return {col: group[col][()] for col in EVENT_COLUMNS}


def _open(path):
    return open_versioned(path, "bundle", "run 'hpcxt prep' first", FORMAT_VERSION)


def read_bundle_identity(path) -> tuple[list[str], str]:
    """The bundle's observation ids and config hash, without reading its data."""
    with _open(path) as f:
        try:
            return [s.decode() for s in f.attrs["obsids"]], str(f.attrs["config_hash"])
        except KeyError as exc:
            from ..errors import InputError
            raise InputError(f"bundle lacks attribute {exc}", path=path,
                             field=str(exc).strip("'")) from None


def _grid(img) -> ImageGrid:
    return ImageGrid(shape=tuple(img["counts"].shape), x0=float(img.attrs["x0"]),
                     y0=float(img.attrs["y0"]), bin=int(img.attrs["bin"]),
                     wcs_header=str(img.attrs["wcs_header"]))


def read_bundle_grid(path) -> ImageGrid:
    """The bundle's image grid and WCS, without reading any image or event."""
    with _open(path) as f:
        return _grid(f["image"])


def read_bundle(path, load_events: bool = True) -> Bundle:
    """Read a bundle written by :func:`write_bundle`.

    Parameters
    ----------
    load_events : bool
        Skip the event lists (the scale map needs only the images).
    """
    with _open(path) as f:
        img = f["image"]
        grid = _grid(img)
        obsids = [s.decode() for s in f.attrs["obsids"]]
        observations = []
        for oid in obsids:
            og = f["obs"][oid]
            r, a = og["rmf"], og["arf"]
            resp = Response(
                arf_energ_lo=a["energ_lo"][()], arf_energ_hi=a["energ_hi"][()],
                specresp=a["specresp"][()], rmf_energ_lo=r["energ_lo"][()],
                rmf_energ_hi=r["energ_hi"][()], rmf_matrix=r["matrix"][()],
                e_min=r["e_min"][()], e_max=r["e_max"][()], offset=int(r.attrs["offset"]))
            events = _read_events(og["events"]) if load_events else None
            bkg = (_read_events(og["bkg_events"])
                   if load_events and "bkg_events" in og else None)
            observations.append(ObsData(
                obsid=oid, exposure=float(og.attrs["exposure"]),
                bkg_exposure=float(og.attrs["bkg_exposure"]),
                bkg_scale=float(og.attrs["bkg_scale"]), events=events, bkg_events=bkg,
                exposure_map=og["exposure_map"][()], fov=og["fov"][()], response=resp,
                source_file=str(og.attrs["source_file"]),
                background_file=str(og.attrs["background_file"])))
        return Bundle(grid=grid, counts=img["counts"][()], background=img["background"][()],
                      exposure=img["exposure"][()], mask=img["mask"][()],
                      observations=observations, config_hash=str(f.attrs["config_hash"]),
                      energy_band=tuple(f.attrs["energy_band"]),
                      has_background=bool(f.attrs["has_background"]))
