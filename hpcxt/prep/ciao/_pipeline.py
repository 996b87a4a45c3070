"""Orchestration: the stages of every observation, in parallel, then the merged image."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

from ...errors import HpcxtError, InputError
from ...io.workdir import WorkDir
from ._plan import ObsPlan, make_plans
from ._record import StageBook, signature
from ._runner import ToolRunner, fits_problem, remove_files
from ._stages import STAGE_TABLE, STAGES

log = logging.getLogger("hpcxt.prep.ciao")

#: Stages that need no region drawn by the user (run before the merged image).
PHASE1 = STAGES[:-1]


def _new_runner(obsid: str, log_file: Path, plan: ObsPlan, title: str) -> ToolRunner:
    runner = ToolRunner(obsid, log_file, Path(plan.tmp_root), plan.tool_timeout)
    runner.note(f"=== {title}, {time.strftime('%Y-%m-%d %H:%M:%S')} ===")
    return runner


def run_stages(plan: ObsPlan, stages=STAGES) -> dict:
    """Run (or skip, when done) the given stages of one observation.

    Returns
    -------
    dict
        stage name -> that stage's outputs, for every stage up to the last
        one requested.
    """
    book = StageBook(Path(plan.obsdir), STAGES, force=plan.force)
    results: dict = {}
    last = max(STAGES.index(s) for s in stages)
    for stage in STAGES[:last + 1]:
        func, settings = STAGE_TABLE[stage]
        sig = signature(stage, settings(plan), results)
        done = book.finished(stage, sig)
        if done is not None:
            log.debug("observation %s: %s already done", plan.obsid, stage)
            results[stage] = done
            continue
        book.starting(stage)
        runner = _new_runner(plan.obsid, Path(plan.obsdir) / "logs" / f"{stage}.log", plan,
                             f"{stage} of observation {plan.obsid}")
        log.info("observation %s: %s ...", plan.obsid, stage)
        t0 = time.monotonic()
        outputs = func(plan, runner, results)
        seconds = time.monotonic() - t0
        book.done(stage, sig, outputs, seconds)
        runner.note(f"=== {stage} done in {seconds:.1f} s ===")
        log.info("observation %s: %s done (%.1f s)", plan.obsid, stage, seconds)
        results[stage] = outputs
    return results


def _run_plan_phase(plan_dict: dict, stages: tuple) -> dict:
    """Worker-process entry point (module level, so it pickles)."""
    return run_stages(ObsPlan(**plan_dict), stages)


def run_all(plans: list[ObsPlan], stages: tuple, nproc: int) -> list[dict]:
    """Run ``stages`` of every plan, ``nproc`` observations at a time.

    An observation that fails does not stop the others: their work is kept
    (and recorded) and the first failure, in config order, is raised after.
    """
    if nproc <= 1 or len(plans) <= 1:
        return [run_stages(p, stages) for p in plans]
    import multiprocessing
    results: list = [None] * len(plans)
    errors: list = [None] * len(plans)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(nproc, len(plans)), mp_context=ctx) as pool:
        futures = [pool.submit(_run_plan_phase, asdict(p), stages) for p in plans]
        for i, fut in enumerate(futures):
            try:
                results[i] = fut.result()
            except HpcxtError as exc:
                errors[i] = exc
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def merged_image(plans: list[ObsPlan], phase1: list[dict], folder: Path, force: bool) -> str:
    """``merge_obs`` of all cleaned event files: the image the user draws regions on."""
    events = [r["deflare"]["events"] for r in phase1]
    plan = plans[0]
    book = StageBook(folder, ("merge",), force=force)
    sig = signature("merge", {"bands": plan.bands, "bin": plan.bin}, {"events": events})
    done = book.finished("merge", sig)
    if done is not None:
        return done["flux_image"]
    book.starting("merge")
    obsids = ",".join(p.obsid for p in plans)
    runner = _new_runner(obsids, folder / "logs" / "merge.log", plan,
                         f"merge_obs of observations {obsids}")
    log.info("observations %s: merge_obs ...", obsids)
    t0 = time.monotonic()
    remove_files(folder.glob("*_flux.img"))
    with runner.call_dirs() as (pdir, wdir):
        runner.run("merge_obs", [f"infiles={','.join(events)}", f"outroot={folder}/",
                                 f"bands={plan.bands}", f"binsize={plan.bin}", "parallel=no",
                                 f"tmpdir={wdir}", "cleanup=yes", "clobber=yes", "verbose=1"],
                   call_dirs=(pdir, wdir))
    image = folder / f"{plan.band_label}_flux.img"
    if not image.exists():
        hits = sorted(folder.glob("*_flux.img"))
        image = hits[0] if len(hits) == 1 else image
    problem = fits_problem(image, image=True)
    if problem:
        raise runner.fail("merge_obs", f"left no usable output {image} ({problem})")
    book.done("merge", sig, {"flux_image": str(image)}, time.monotonic() - t0)
    return str(image)


def _no_region_error(cfg, view: str) -> InputError:
    return InputError(
        "the global ARF/RMF need a region: open " + view + " in DS9, draw the area to map "
        "(a box) and save it as a region file, then set prep.crop_region (and, for the "
        "point sources to exclude, prep.point_sources) and run hpcxt prep again; "
        "finished CIAO stages are not redone",
        path=cfg.path, field="prep.crop_region")


def prepare_observations(cfg, workdir: Path, force: bool = False) -> list[dict]:
    """Run the CIAO stages of every configured observation.

    Parameters
    ----------
    cfg : hpcxt.io.config.Config
        The validated config (``prep`` and ``prep.ciao`` sections, obsids).
    workdir : Path
        The run's working directory; products go to ``<workdir>/obs/<obsid>/``.
    force : bool
        Redo every stage, ignoring the stage records (data already
        downloaded are still not downloaded again).

    Returns
    -------
    list of dict
        One per configured observation, in config order, with keys
        ``obsid``, ``events`` (cleaned ACIS-I level-2 events), ``background``
        (blank-sky events reprojected to the observation), ``exposure_map``
        (cm**2 s, binned by ``prep.bin``), ``arf``, ``rmf``: absolute paths of
        verified files, ready for the ``products`` backend; and ``deflared``
        (True when CIAO's deflare already removed the flares, so the
        products steps must not clean the light curve a second time).

    Raises
    ------
    CiaoError
        A tool failed, timed out or left no usable output; the message names
        the tool, the observation and the stage log.
    InputError
        A setting the CIAO route cannot use, missing data with downloads
        off, or no region for the global responses yet.
    """
    plans = make_plans(cfg, Path(workdir), force=force)
    nproc = int(cfg.prep.ciao.nproc)
    phase1 = run_all(plans, PHASE1, nproc)
    image = None
    if len(plans) > 1 and cfg.prep.ciao.merged_image:
        image = merged_image(plans, phase1, WorkDir(Path(workdir).resolve()).obs_merged, force)
    if plans[0].spectrum_region is None:
        raise _no_region_error(cfg, image or phase1[0]["exposure"]["flux_image"])
    # force applied to phase 1 already; phase 2 must not wipe its records
    final = run_all([replace(p, force=False) for p in plans], ("response",), nproc)
    return [{"obsid": str(obs.obsid),
             "events": res["deflare"]["events"],
             "background": res["background"]["background"],
             "exposure_map": res["exposure"]["exposure_map"],
             "arf": res["response"]["arf"],
             "rmf": res["response"]["rmf"],
             "deflared": bool(res["deflare"]["gti"])}
            for obs, res in zip(cfg.observations, final)]
