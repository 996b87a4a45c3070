"""The region table: one row per fitted pixel, written by ``hpcxt scalemap``.

Layout of ``<workdir>/acb/regions.h5`` (format version 1)::

    /  attrs: format_version, config_hash (of the inputs that shape the
              table), inputs (those config values, JSON), bundle_hash,
              table_hash (content hash of the datasets below), resolution,
              step, target_sn, obsids (bytes array)
    region_id          (n,)       int64    0..n-1, row-major over fitted pixels
    row, col           (n,)       int32    image pixel (0-based)
    x, y               (n,)       float64  sky pixels, centre of that pixel
    radius             (n,)       float64  circle radius, image pixels
    radius_sky         (n,)       float64  circle radius, sky pixels
    fraction           (n, nobs)  float64  share of the circle's mapped pixels
                                           inside each observation's field
    effective_exposure (n, nobs)  float64  exposure map averaged over the
                                           circle's pixels in the field, cm**2 s
    exposure_time      (n, nobs)  float64  EXPOSURE * fraction * effective_exposure
                                           / (99.9th percentile of the exposure map), s
    used               (n, nobs)  bool     fraction >= fit.min_obs_fraction

A circle holds the image pixels whose centres are within ``radius`` of the
region's pixel centre (pixels beyond the image edge do not exist).

Attribute ``bins`` says what the regions are: ``acb`` (circles of the scale
map) or user-supplied bins (``fit.bins``), ``map`` (a bin map) or
``regions`` (a ds9 region file; ``bins_file`` names the file). User bins
add::

    bin_map            (ny, nx)   int32    region id of each image pixel, -1 in none;
                                           attrs x0, y0 (sky pixels, lower-left
                                           corner of the grid) and bin (sky pixels
                                           per image pixel)
    bin_id             (n,)       int64    the user's bin number of each region

and then a region is its pixels in ``bin_map`` (x, y its geometric centre,
row, col its pixel nearest to that centre, radius that of a circle of the
same area), and ``fraction``, ``effective_exposure`` and ``exposure_time``
are taken over those pixels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from .hdf5 import open_versioned
from .workdir import atomic_write

FORMAT_VERSION = 1
ROW_FIELDS = ("region_id", "row", "col", "x", "y", "radius", "radius_sky")
OBS_FIELDS = ("fraction", "effective_exposure", "exposure_time", "used")
BIN_FIELDS = ("bin_map", "bin_id")
#: Kinds of regions (attribute ``bins``).
BIN_KINDS = ("acb", "map", "regions")


@dataclass
class RegionTable:
    region_id: np.ndarray
    row: np.ndarray
    col: np.ndarray
    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    radius_sky: np.ndarray
    fraction: np.ndarray
    effective_exposure: np.ndarray
    exposure_time: np.ndarray
    used: np.ndarray
    obsids: list = field(default_factory=list)
    resolution: str = "high"
    step: int = 1
    target_sn: float = 50.0
    config_hash: str = ""
    bundle_hash: str = ""
    inputs: dict = field(default_factory=dict)
    bins: str = "acb"
    bins_file: str = ""
    bin_map: np.ndarray | None = None
    bin_id: np.ndarray | None = None
    bin_grid: tuple = ()  # (x0, y0, bin) of bin_map, sky pixels

    @property
    def has_bin_map(self) -> bool:
        return self.bin_map is not None

    def __len__(self) -> int:
        return int(self.region_id.shape[0])

    def content_hash(self) -> str:
        """SHA-256 (16 hex) of every dataset's bytes and the obsids."""
        h = hashlib.sha256()
        names = ROW_FIELDS + OBS_FIELDS + (BIN_FIELDS if self.has_bin_map else ())
        for name in names:
            arr = np.ascontiguousarray(getattr(self, name))
            h.update(name.encode())
            h.update(str(arr.dtype).encode())
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        h.update(",".join(self.obsids).encode())
        if self.has_bin_map:
            h.update(json.dumps([self.bins, [float(v) for v in self.bin_grid]]).encode())
        return h.hexdigest()[:16]


def write_regions(path, table: RegionTable) -> Path:
    """Write atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(format_version=FORMAT_VERSION, config_hash=table.config_hash,
                       bundle_hash=table.bundle_hash, table_hash=table.content_hash(),
                       resolution=table.resolution, step=int(table.step),
                       target_sn=float(table.target_sn),
                       inputs=json.dumps(table.inputs, sort_keys=True, default=str))
        f.attrs["obsids"] = np.array(table.obsids, dtype="S")
        for name in ROW_FIELDS + OBS_FIELDS:
            f.create_dataset(name, data=getattr(table, name))
        f.attrs["bins"] = table.bins
        f.attrs["bins_file"] = table.bins_file
        if table.has_bin_map:
            d = f.create_dataset("bin_map", data=np.asarray(table.bin_map, np.int32),
                                 compression="gzip", shuffle=True)
            d.attrs.update(x0=float(table.bin_grid[0]), y0=float(table.bin_grid[1]),
                           bin=float(table.bin_grid[2]))
            f.create_dataset("bin_id", data=np.asarray(table.bin_id, np.int64))
    return path


def read_regions(path) -> RegionTable:
    path = Path(path)
    f = open_versioned(path, "region table", "run 'hpcxt scalemap' first", FORMAT_VERSION)
    with f:
        missing = [n for n in ROW_FIELDS + OBS_FIELDS if n not in f]
        if missing:
            raise InputError("missing datasets " + ", ".join(missing), path=path, field=missing[0])
        data = {n: f[n][()] for n in ROW_FIELDS + OBS_FIELDS}
        bins = str(f.attrs.get("bins", "acb"))
        if bins != "acb":
            missing = [n for n in BIN_FIELDS if n not in f]
            if missing:
                raise InputError(f"bins {bins!r} without dataset {missing[0]}", path=path,
                                 field=missing[0])
            d = f["bin_map"]
            data.update(bin_map=d[()], bin_id=f["bin_id"][()],
                        bin_grid=(float(d.attrs["x0"]), float(d.attrs["y0"]),
                                  float(d.attrs["bin"])))
        table = RegionTable(**data, bins=bins, bins_file=str(f.attrs.get("bins_file", "")),
                            obsids=[s.decode() for s in f.attrs["obsids"]],
                            resolution=str(f.attrs["resolution"]), step=int(f.attrs["step"]),
                            target_sn=float(f.attrs["target_sn"]),
                            config_hash=str(f.attrs["config_hash"]),
                            bundle_hash=str(f.attrs["bundle_hash"]),
                            inputs=json.loads(str(f.attrs.get("inputs", "{}"))))
        stored = str(f.attrs["table_hash"])
    if table.content_hash() != stored:
        raise InputError("content does not match its table_hash (corrupt or edited)",
                         path=path, field="table_hash")
    return table
