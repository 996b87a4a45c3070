"""User-supplied bins (contbin, vtbin, hand-drawn regions): kernels.

Pure functions of arrays and WCS, no MPI, no file I/O. With ``fit.bins``
set to a bin map or a region file, ``hpcxt scalemap``
(:mod:`hpcxt.stages.scalemap`) turns the bins into a region table with
these instead of adaptive circular binning:

* :func:`reproject_bin_map` puts a bin map on any celestial WCS onto the
  bundle's image grid (each image pixel takes the bin of the bin-map pixel
  whose centre is nearest to its own centre);
* :func:`bin_map_from_masks` makes the same image from one pixel mask per
  region of a region file;
* :func:`label_bins` numbers the bins 0..n-1 (regions ids, in increasing
  order of the user's bin numbers) and finds each bin's centre;
* :func:`bin_coverage` is :func:`hpcxt.acb.region_coverage` for bins: the
  share of each bin's mapped pixels inside each observation's field and the
  exposure map averaged over them;
* :func:`event_regions` says which region each event falls in (the bin of
  the image pixel it lies on), which is how spectra of any shape are cut;
* :func:`bin_mean` and :func:`assign_bins` make the maps painted by bin.

Convention: an image of region ids holds -1 where a pixel belongs to no
region (outside every bin, or masked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .acb import coverage_from_sums, coverage_images

#: Region id of a pixel in no region.
NO_BIN = -1


def reproject_bin_map(values, bin_wcs, grid_wcs, shape) -> np.ndarray:
    """User bin numbers on the image grid, by the nearest bin-map pixel centre.

    Parameters
    ----------
    values : ndarray (my, mx)
        The user's bin map: integer bin numbers (any float or int dtype);
        negative or NaN outside every bin.
    bin_wcs, grid_wcs : astropy.wcs.WCS
        Celestial WCS of the bin map and of the image grid.
    shape : (ny, nx)
        Image grid shape.

    Returns
    -------
    bins : ndarray (ny, nx) int64
        The user's bin number of each image pixel; -1 outside the bin map,
        or where it is negative or NaN.

    Raises
    ------
    ValueError
        A finite bin number that is not an integer.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if np.any(values[finite] != np.round(values[finite])):
        raise ValueError("bin numbers must be integers")
    ny, nx = shape
    rows, cols = np.mgrid[0:ny, 0:nx]
    ra, dec = grid_wcs.celestial.all_pix2world(cols.ravel(), rows.ravel(), 0)
    bx, by = bin_wcs.celestial.all_world2pix(ra, dec, 0)
    ok = np.isfinite(bx) & np.isfinite(by)
    bx = np.floor(np.where(ok, bx, -1.0) + 0.5).astype(np.int64)
    by = np.floor(np.where(ok, by, -1.0) + 0.5).astype(np.int64)
    ok &= (bx >= 0) & (bx < values.shape[1]) & (by >= 0) & (by < values.shape[0])
    out = np.full(ny * nx, NO_BIN, dtype=np.int64)
    v = values[by[ok], bx[ok]]
    good = np.isfinite(v) & (v >= 0)
    idx = np.flatnonzero(ok)[good]
    out[idx] = v[good].astype(np.int64)
    return out.reshape(shape)


def bin_map_from_masks(include, exclude=None) -> np.ndarray:
    """Bin numbers from one pixel mask per region (a region file's shapes).

    Parameters
    ----------
    include : ndarray (n, ny, nx) bool
        Pixels whose centre lies inside each include shape, in file order.
    exclude : ndarray (ny, nx) bool, optional
        Pixels inside any exclude shape (``-circle(...)``): in no bin.

    Returns
    -------
    ndarray (ny, nx) int64
        Bin number = position of the shape in the file (0-based); a pixel
        inside several shapes belongs to the first; -1 in none.
    """
    include = np.asarray(include, dtype=bool)
    if include.ndim != 3:
        raise ValueError("include must be (n, ny, nx)")
    inside = include.any(axis=0)
    out = np.where(inside, np.argmax(include, axis=0), NO_BIN).astype(np.int64)
    if exclude is not None:
        out[np.asarray(exclude, dtype=bool)] = NO_BIN
    return out


@dataclass
class BinRegions:
    """The bins of an image as regions.

    Attributes
    ----------
    region_map : ndarray (ny, nx) int32
        Region id of each image pixel (0..n-1), -1 in none.
    bin_id : ndarray (n,) int64
        The user's bin number of each region (regions are in increasing
        order of it).
    n_pixels : ndarray (n,) int64
        Image pixels of each region.
    row, col : ndarray (n,) int32
        The region's pixel nearest to its centre (always inside the bin,
        even for a bin that is not convex), 0-based.
    centre_row, centre_col : ndarray (n,) float64
        Geometric centre (mean pixel position), 0-based image pixels.
    """

    region_map: np.ndarray
    bin_id: np.ndarray
    n_pixels: np.ndarray
    row: np.ndarray
    col: np.ndarray
    centre_row: np.ndarray
    centre_col: np.ndarray

    def __len__(self) -> int:
        return int(self.bin_id.shape[0])


def label_bins(bins, mask) -> BinRegions:
    """Number the bins that have mapped pixels, and find their centres.

    Parameters
    ----------
    bins : ndarray (ny, nx) int
        User bin number of each image pixel, -1 in none
        (:func:`reproject_bin_map`, :func:`bin_map_from_masks`).
    mask : ndarray (ny, nx) bool
        Mapped pixels; a bin's masked pixels (point sources, outside the
        crop) are left out of it, and a bin with no mapped pixel is no region.

    Returns
    -------
    BinRegions
    """
    bins = np.asarray(bins, dtype=np.int64)
    mask = np.asarray(mask, dtype=bool)
    inside = mask & (bins >= 0)
    ids, inverse = np.unique(bins[inside], return_inverse=True)
    region_map = np.full(bins.shape, NO_BIN, dtype=np.int32)
    region_map[inside] = inverse.astype(np.int32)
    n = ids.size
    rr, cc = np.nonzero(inside)
    lab = region_map[rr, cc]
    npix = np.bincount(lab, minlength=n).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        crow = np.bincount(lab, weights=rr, minlength=n) / npix
        ccol = np.bincount(lab, weights=cc, minlength=n) / npix
    # The member pixel nearest to the centre: sort by (region, distance).
    d2 = (rr - crow[lab]) ** 2 + (cc - ccol[lab]) ** 2
    order = np.lexsort((d2, lab))
    first = np.searchsorted(lab[order], np.arange(n))
    pick = order[first] if n else np.zeros(0, dtype=np.int64)
    return BinRegions(region_map=region_map, bin_id=ids.astype(np.int64), n_pixels=npix,
                      row=rr[pick].astype(np.int32), col=cc[pick].astype(np.int32),
                      centre_row=crow, centre_col=ccol)


def region_sums(images, region_map, n: int) -> np.ndarray:
    """Sum of each image over each region's pixels.

    Parameters
    ----------
    images : ndarray (nch, ny, nx)
    region_map : ndarray (ny, nx) int
        Region id of each pixel, -1 in none.
    n : int
        Number of regions.

    Returns
    -------
    ndarray (nch, n) float64
    """
    images = np.asarray(images, dtype=np.float64)
    lab = np.asarray(region_map).ravel()
    inside = lab >= 0
    lab = lab[inside]
    flat = images.reshape(images.shape[0], -1)[:, inside]
    return np.stack([np.bincount(lab, weights=ch, minlength=n) for ch in flat]) \
        if images.shape[0] else np.zeros((0, n))


def bin_coverage(mask, fovs, exposure_maps, region_map, n: int):
    """Per region and observation: share of the bin in the field, mean exposure.

    The definitions of :func:`hpcxt.acb.region_coverage` with the bin's
    pixels in place of the circle's.

    Parameters
    ----------
    mask : ndarray (ny, nx) bool
    fovs : ndarray (nobs, ny, nx) bool
    exposure_maps : ndarray (nobs, ny, nx)
        cm**2 s.
    region_map : ndarray (ny, nx) int
        Region id of each pixel, -1 in none.
    n : int

    Returns
    -------
    fraction : ndarray (n, nobs) float64
        (mapped bin pixels in the field) / (mapped bin pixels).
    effective_exposure : ndarray (n, nobs) float64
        Mean exposure map over the bin's mapped pixels in the field, cm**2 s
        (0 where there are none).
    """
    images = coverage_images(mask, fovs, exposure_maps)
    sums = region_sums(images, region_map, n)
    return coverage_from_sums(sums, np.asarray(fovs).shape[0])


def event_regions(x, y, region_map, x0: float, y0: float, bin_size: float) -> np.ndarray:
    """Region id of each event: the region of the image pixel it falls in.

    Image pixel ``[row, col]`` covers sky x in ``[x0 + col*bin, x0 + (col+1)*bin)``
    and sky y likewise (:class:`hpcxt.data.ImageGrid`).

    Parameters
    ----------
    x, y : ndarray (nev,)
        Sky pixels.
    region_map : ndarray (ny, nx) int
    x0, y0 : float
        Sky position of the grid's lower-left corner, sky pixels.
    bin_size : float
        Sky pixels per image pixel.

    Returns
    -------
    ndarray (nev,) int64
        -1 for events off the grid or in no region.
    """
    region_map = np.asarray(region_map)
    col = np.floor((np.asarray(x, dtype=np.float64) - x0) / bin_size).astype(np.int64)
    row = np.floor((np.asarray(y, dtype=np.float64) - y0) / bin_size).astype(np.int64)
    ny, nx = region_map.shape
    ok = (row >= 0) & (row < ny) & (col >= 0) & (col < nx)
    out = np.full(col.shape, NO_BIN, dtype=np.int64)
    out[ok] = region_map[row[ok], col[ok]]
    return out


def bin_mean(image, mask, region_map, n: int) -> np.ndarray:
    """Mean of ``image`` over each region's pixels that are in ``mask``.

    Returns
    -------
    ndarray (n,)
        NaN for a region with no pixel in the mask.
    """
    m = np.asarray(mask, dtype=bool)
    img = np.where(m, np.asarray(image, dtype=np.float64), 0.0)
    sums = region_sums(np.stack([img, m.astype(np.float64)]), region_map, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[1] > 0, sums[0] / sums[1], np.nan)


def assign_bins(region_map, mask):
    """:func:`hpcxt.maps.assign_pixels` for bins: every pixel of a bin shows its bin.

    Returns
    -------
    owner : ndarray (ny, nx) int64
        Region id of each pixel; -1 for none.
    how : ndarray (ny, nx) uint8
        :class:`hpcxt.maps.Coverage` code: ``MAPPED`` in a bin, ``NO_REGION``
        mapped but in no bin, ``MASKED`` elsewhere.
    """
    from .maps import Coverage

    mask = np.asarray(mask, dtype=bool)
    owner = np.where(mask, np.asarray(region_map, dtype=np.int64), NO_BIN)
    how = np.full(mask.shape, Coverage.MASKED, dtype=np.uint8)
    how[mask] = Coverage.NO_REGION
    how[owner >= 0] = Coverage.MAPPED
    return owner, how
