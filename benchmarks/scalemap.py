"""Benchmark of the scale map (ACB): prints its figures, asserts nothing.

    .venv/bin/python benchmarks/scalemap.py [--size 1024] [--skip-mpi] [--skip-bisection]

1. The kernel on one core, in this process, on a ``size`` x ``size``
   simulated beta-model cluster (Poisson counts plus a flat background) at
   S/N 50, radius grid 0.125..100 image pixels, in both S/N modes.
2. The MPI path (``hpcxt.acb_mpi.compute_scalemap_index``) under the venv's
   ``mpiexec -n 1`` and ``-n 2``: wall time of the computation (after a
   barrier, imports and image set-up excluded) and each rank's CPU time,
   and a check that both give the same map.
3. On a 256 x 256 image, a per-pixel bisection as ClusterPyXT does it (for
   each pixel, bisection on the radius grid 1..100 by 0.125, each step a
   distance computation over the whole image and a masked sum, S/N =
   sqrt(C)), timed on a random sample of pixels and extrapolated to all
   pixels, beside the kernel on the whole image; printed as a ratio.

Targets (issue 3): 1024 x 1024 in under 30 s on one core; at least 100 times
faster than the bisection; at least 1.7 times faster on 2 ranks than on 1.
Timings on a shared 2-core machine vary from run to run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcxt import acb  # noqa: E402

TARGET_SN = 50.0


def beta_cluster(size: int, seed: int = 0, s0: float = 300.0, core: float = 50.0,
                 bkg: float = 0.05):
    """Counts (Poisson) and scaled background images of a beta-model cluster.

    Surface brightness ``s0 (1 + r^2/core^2)^-1.5 + bkg`` counts per pixel,
    centred; the background image is the flat ``bkg`` (non-integer).
    Point-source holes in the mask make it realistic.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    scale = size / 1024.0
    rate = s0 * (1.0 + (x * x + y * y) / (core * scale) ** 2) ** -1.5 + bkg
    counts = rng.poisson(rate).astype(np.float64)
    background = np.full((size, size), bkg * 0.98)
    mask = np.ones((size, size), dtype=bool)
    for cy, cx in rng.uniform(0, size, (max(1, size // 64), 2)):
        mask[(y + (size - 1) / 2 - cy) ** 2 + (x + (size - 1) / 2 - cx) ** 2 <= 9] = False
    return counts, background, mask


def describe(index, step):
    r = acb.index_to_radius(index, step)
    got = r[np.isfinite(r)]
    return (f"{got.size} pixels with a radius ({np.isnan(r).sum()} without); radius "
            f"min {got.min():.3f} median {np.median(got):.3f} max {got.max():.3f}")


def kernel_timing(size, mode):
    counts, background, mask = beta_cluster(size)
    params = acb.ScaleMapParams(target_sn=TARGET_SN, mode=mode)
    t0, c0 = time.perf_counter(), time.process_time()
    index = acb.scale_map_index(counts, background, mask, params)
    return time.perf_counter() - t0, time.process_time() - c0, index


def cpxt_bisection_radius(counts, mask, row, col, radii):
    """ClusterPyXT-style: bisection on the radius grid, a full-image pass per step."""
    ny, nx = counts.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    lo, hi = 0, len(radii) - 1

    def reaches(r):
        dist = np.sqrt((xx - col) ** 2 + (yy - row) ** 2)
        return np.sqrt(counts[(dist <= r) & mask].sum()) >= TARGET_SN

    if not reaches(radii[hi]):
        return np.nan
    while lo < hi:
        mid = (lo + hi) // 2
        if reaches(radii[mid]):
            hi = mid
        else:
            lo = mid + 1
    return radii[lo]


def bisection_comparison(size=256, sample=300):
    counts, _, mask = beta_cluster(size)
    params = acb.ScaleMapParams(target_sn=TARGET_SN, mode="counts")
    t0 = time.perf_counter()
    index = acb.scale_map_index(counts, None, mask, params)
    ours = time.perf_counter() - t0
    ours_r = acb.index_to_radius(index, params.radius_step)
    radii = np.arange(1.0, 100.0 + 1e-9, 0.125)
    rng = np.random.default_rng(1)
    pix = np.flatnonzero(mask.ravel())
    pick = rng.choice(pix, size=min(sample, pix.size), replace=False)
    t0 = time.perf_counter()
    theirs = [cpxt_bisection_radius(counts, mask, p // size, p % size, radii) for p in pick]
    per_pixel = (time.perf_counter() - t0) / len(pick)
    full = per_pixel * pix.size
    mine = ours_r.ravel()[pick]
    agree = np.mean([(np.isnan(a) and np.isnan(b)) or a == b or (b < 1.0 and a == 1.0)
                     for a, b in zip(theirs, mine)])
    return dict(size=size, ours=ours, per_pixel=per_pixel, full=full, sample=len(pick),
                pixels=int(pix.size), agree=float(agree), describe=describe(index, 0.125))


def mpi_worker(size, mode, tile_size):
    from mpi4py import MPI

    from hpcxt.acb_mpi import compute_scalemap_index

    comm = MPI.COMM_WORLD
    counts, background, mask = beta_cluster(size)
    params = acb.ScaleMapParams(target_sn=TARGET_SN, mode=mode)
    stats = {}
    comm.Barrier()
    t0 = MPI.Wtime()
    index = compute_scalemap_index(counts, background, mask, params, comm,
                                   tile_size=tile_size, stats=stats)
    comm.Barrier()
    wall = MPI.Wtime() - t0
    if comm.Get_rank() == 0:
        print(json.dumps(dict(wall=wall, cpu=stats["seconds"], ranks=comm.Get_size(),
                              sha=hashlib.sha256(index.tobytes()).hexdigest()[:16])))


def run_mpi(nprocs, size, mode, tile_size):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [str(mpiexec), "-n", str(nprocs), sys.executable, "-m", "mpi4py", __file__,
           "--mpi-worker", "--size", str(size), "--mode", mode, "--tile-size", str(tile_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--mode", default="background_subtracted",
                    choices=acb.SN_MODES, help="S/N mode of the MPI timing")
    ap.add_argument("--tile-size", type=int, default=64)
    ap.add_argument("--skip-kernel", action="store_true")
    ap.add_argument("--skip-mpi", action="store_true")
    ap.add_argument("--skip-bisection", action="store_true")
    ap.add_argument("--mpi-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mpi_worker:
        mpi_worker(args.size, args.mode, args.tile_size)
        return
    n = args.size
    print(f"scale map benchmark: {n}x{n} beta-model cluster, target S/N {TARGET_SN:g}, "
          f"radii 0.125..100 image pixels")
    if not args.skip_kernel:
        for mode in acb.SN_MODES:
            wall, cpu, index = kernel_timing(n, mode)
            print(f"  kernel, one core, {mode:>21}: {wall:6.2f} s wall, {cpu:6.2f} s CPU; "
                  f"{describe(index, 0.125)}")
    if not args.skip_mpi:
        one = run_mpi(1, n, args.mode, args.tile_size)
        two = run_mpi(2, n, args.mode, args.tile_size)
        print(f"  MPI ({args.mode}), 1 rank : {one['wall']:6.2f} s wall "
              f"(CPU {one['cpu'][0]:.2f} s)")
        print(f"  MPI ({args.mode}), 2 ranks: {two['wall']:6.2f} s wall (CPU per rank "
              + ", ".join(f"{c:.2f}" for c in two["cpu"]) + " s)")
        print(f"  speed-up on 2 ranks: {one['wall'] / two['wall']:.2f}x wall; "
              f"{one['cpu'][0] / max(two['cpu']):.2f}x by the busiest rank's CPU time; "
              f"same map: {one['sha'] == two['sha']}")
    if not args.skip_bisection:
        b = bisection_comparison()
        print(f"  {b['size']}x{b['size']}, sqrt(C) mode: {b['describe']}")
        print(f"  ours, whole image: {b['ours']:.3f} s")
        print(f"  ClusterPyXT-style per-pixel bisection: {b['per_pixel'] * 1e3:.2f} ms per "
              f"pixel on {b['sample']} random pixels, extrapolated to {b['pixels']} pixels: "
              f"{b['full']:.1f} s (same radius on {100 * b['agree']:.0f}% of the sample)")
        print(f"  ratio: ours is {b['full'] / b['ours']:.0f}x faster")


if __name__ == "__main__":
    main()
