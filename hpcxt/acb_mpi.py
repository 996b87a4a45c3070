"""MPI layer of the scale map: distribute tiles and regions, gather.

The image is cut into tiles that are dealt to ranks by estimated cost
(outskirt tiles need large circles and cost far more than core tiles),
largest first to the least loaded rank; the tiles' radius indices are
gathered on the root; the per-region coverage sums are dealt out the same
way. Reading the bundle and writing ``scalemap.fits`` and ``regions.h5`` is
the stage driver's (:mod:`hpcxt.stages.scalemap`).

Each pixel's radius and each region's sums depend only on the images (see
:mod:`hpcxt.acb`), never on the partition, so the outputs are identical bit
for bit on any number of ranks. The communicator is an argument: nothing
here touches MPI at import time.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import acb
from .parallel import deal_by_cost


# --------------------------------------------------------------------------
# distributed computations (usable from any script with a communicator)


def compute_scalemap_index(counts, background, mask, params: acb.ScaleMapParams, comm,
                           tile_size: int | None = None, root: int = 0,
                           stats: dict | None = None):
    """Scale-map radius indices, tiles spread over the ranks of ``comm``.

    Every rank passes the same images. Collective.

    Parameters
    ----------
    counts, background, mask : ndarray (ny, nx)
        As for :func:`hpcxt.acb.prepare_scale_map`.
    params : hpcxt.acb.ScaleMapParams
    comm : mpi4py communicator
    tile_size : int, optional
        Tile side, image pixels (the unit of work); default from the image
        shape (:func:`hpcxt.acb.default_tile_size`).
    stats : dict, optional
        On ``root``, filled with ``seconds`` (per-rank CPU time of the
        tiles, list), ``n_exact`` (pixels recomputed exactly), ``tiles``
        (count) and ``tiles_per_rank`` (list).

    Returns
    -------
    ndarray (ny, nx) int32 on ``root``, None elsewhere
        ``k`` of the radius ``k * radius_step``; 0 where none.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    problem = acb.prepare_scale_map(counts, background, mask, params)
    tiles = acb.make_tiles(problem.shape, tile_size or acb.default_tile_size(problem.shape))
    costs = acb.estimate_tile_costs(problem, tiles) if rank == root else None
    my_tiles = deal_by_cost(comm, costs, root)
    # radius indices fit in int16 for any sane grid: halves what ranks send
    dtype = np.int16 if problem.table.radii.size < 2 ** 15 else np.int32
    t0 = time.process_time()
    mine = []
    n_exact = 0
    for n in my_tiles:
        res = acb.solve_tile(problem, *tiles[n])
        mine.append((n, res.index.astype(dtype)))
        n_exact += res.n_exact
    seconds = time.process_time() - t0
    gathered = comm.gather((mine, n_exact, seconds, len(my_tiles)), root=root)
    if rank != root:
        return None
    index = np.zeros(problem.shape, dtype=np.int32)
    for part, *_ in gathered:
        for n, tile_index in part:
            r0, r1, c0, c1 = tiles[n]
            index[r0:r1, c0:c1] = tile_index
    if stats is not None:
        stats.update(seconds=[g[2] for g in gathered], n_exact=sum(g[1] for g in gathered),
                     tiles=len(tiles), tiles_per_rank=[g[3] for g in gathered])
    return index


def compute_scalemap(counts, background, mask, params: acb.ScaleMapParams, comm,
                     tile_size: int | None = None, root: int = 0):
    """Scale map (radius in image pixels, NaN where none) on ``root``; None elsewhere.

    Collective; see :func:`compute_scalemap_index`.
    """
    index = compute_scalemap_index(counts, background, mask, params, comm, tile_size, root)
    if index is None:
        return None
    return acb.index_to_radius(index, params.radius_step)


def compute_region_coverage(mask, fovs, exposure_maps, rows, cols, index,
                            table: acb.DiskTable, comm, root: int = 0):
    """:func:`hpcxt.acb.region_coverage` with the regions spread over the ranks.

    Every rank passes the same arrays. Collective. Regions go out in batches
    of similar radius (at least 64 batches for large tables, 256-4096
    regions each); a region's sums do not depend on its batch.

    Returns
    -------
    (fraction, effective_exposure) on ``root``, each (n, nobs) float64; None elsewhere.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    index = np.asarray(index, dtype=np.int64)
    n = index.size
    batch = int(min(4096, max(256, math.ceil(n / 64))))
    order = np.argsort(index, kind="stable")
    batches = [order[s:s + batch] for s in range(0, n, batch)]
    # a circle costs one pass per row: 2 * reach + 1
    costs = [b.size * (2.0 * np.sqrt(table.d2_max[index[b].max() - 1]) + 1.0) for b in batches]
    my_batches = deal_by_cost(comm, costs, root)
    nobs = np.asarray(fovs).shape[0]
    mine = []
    if my_batches:
        summer = acb.prepare_circle_sums(acb.coverage_images(mask, fovs, exposure_maps), table)
        for b in my_batches:
            sel = batches[b]
            sums = summer.sums(rows[sel], cols[sel], index[sel])
            mine.append((sel, *acb.coverage_from_sums(sums, nobs)))
    gathered = comm.gather(mine, root=root)
    if rank != root:
        return None
    fraction = np.zeros((n, nobs))
    effective = np.zeros((n, nobs))
    for part in gathered:
        for sel, frac, eff in part:
            fraction[sel] = frac
            effective[sel] = eff
    return fraction, effective
