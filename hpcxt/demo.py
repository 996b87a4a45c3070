"""``hpcxt demo``: simulate a merging cluster, map it under MPI, compare with the truth.

The demo preset of :mod:`hpcxt.prep.simulate` has three temperature zones
(cool core 3 keV, ambient 7 keV, shock 12 keV). After the whole pipeline
has run, the recovered temperatures are summarised per truth zone by
:func:`hpcxt.stages.compare.compare_project` (the kernel is
:func:`hpcxt.compare.compare_with_truth`), as ``hpcxt compare`` does for any
simulated project.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("hpcxt.demo")


def run_demo(outdir: Path, nprocs: int | None = None, seed: int = 1) -> int:
    """Simulate (once), run the pipeline (resuming), print the comparison.

    Returns 0 only when every zone is recovered within
    :data:`hpcxt.compare.TOLERANCE`.
    """
    from .io.config import load_config
    from .io.workdir import SimulationTruth, WorkDir
    from .pipeline import run_pipeline
    from .prep.simulate import simulate
    from .stages.compare import compare_project

    outdir = Path(outdir)
    cfg_path = outdir / "config.yaml"
    t0 = time.perf_counter()
    if cfg_path.exists() and SimulationTruth(outdir).exists():
        log.info("demo: reusing the simulation in %s", outdir)
    else:
        summary = simulate(outdir, preset="demo", seed=seed)
        print(summary.describe())
    status = run_pipeline(cfg_path, nprocs=nprocs)
    if status != 0:
        return status
    cfg = load_config(cfg_path, check_files=False)
    result = compare_project(cfg)
    maps = WorkDir.of(cfg).maps
    print()
    print(f"hpcxt demo: {result.model} fits of a simulated merging cluster "
          f"({time.perf_counter() - t0:.0f} s)")
    print(result.table())
    print()
    print(f"maps (FITS, open in ds9): {maps}")
    pngs = sorted(p.name for p in maps.glob("*.png"))
    if pngs:
        print(f"quick-looks: {', '.join(pngs)} (overview: {maps / 'overview.png'})")
    return 0 if result.ok else 1
