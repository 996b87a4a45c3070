"""The CIAO stages of one observation, each a function ``(plan, runner, prev) -> outputs``.

``prev`` holds the outputs of the stages before (stage name -> dict);
``outputs`` are absolute paths of verified files (and a few values), stored
in the stage record. :data:`STAGES` lists them in order, with the settings
that change each one's output.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...errors import InputError
from ...io.workdir import write_text_atomic
from .. import deflare as D
from ._plan import ObsPlan, kev_filter
from ._repro import aspect_solutions, keyword_files, vf_cleaned
from ._runner import ToolRunner, fits_problem, remove_files, yes

log = logging.getLogger("hpcxt.prep.ciao")


def _glob(folder: Path, patterns) -> list[Path]:
    hits: list[Path] = []
    for pattern in patterns:
        hits.extend(sorted(Path(folder).glob(pattern)))
    return hits


def _require_fits(run: ToolRunner, tool: str, path: Path, what: str, **checks) -> None:
    """Raise a CiaoError naming ``tool`` unless ``path`` is a usable FITS file."""
    problem = fits_problem(path, **checks)
    if problem:
        raise run.fail(tool, f"wrote an unusable {what} {path} ({problem})")


# --------------------------------------------------------------------------
# download, chandra_repro, ACIS-I


def _raw_data_problem(rawdir: Path) -> str | None:
    """What the downloaded data lack for chandra_repro, or None."""
    for sub, pattern in (("secondary", "*evt1.fits*"), ("primary", "*evt2.fits*"),
                         ("primary", "*asol1.fits*")):
        if not _glob(rawdir / sub, [pattern]):
            return f"no {sub}/{pattern}"
    return None


def stage_download(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    rawdir = Path(plan.rawdir)
    problem = _raw_data_problem(rawdir)
    if problem is None:
        run.note(f"data already in {rawdir}: no download")
    elif not plan.download:
        raise InputError(f"no Chandra data for observation {plan.obsid} in {rawdir} ({problem}); "
                         "download them with download_chandra_obsid or set "
                         "prep.ciao.download: true", field="prep.ciao.download")
    else:
        Path(plan.data_dir).mkdir(parents=True, exist_ok=True)
        run.run("download_chandra_obsid", [plan.obsid], cwd=plan.data_dir,
                timeout=plan.download_timeout)
        problem = _raw_data_problem(rawdir)
        if problem:
            raise run.fail("download_chandra_obsid",
                           f"left incomplete data in {rawdir} ({problem})")
    return {"rawdir": str(rawdir)}


def stage_repro(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    rawdir = Path(prev["download"]["rawdir"])
    outdir = Path(plan.obsdir) / "repro"
    evt2 = outdir / f"acisf{plan.id5}_repro_evt2.fits"
    bpix = outdir / f"acisf{plan.id5}_repro_bpix1.fits"
    run.run("chandra_repro", [f"indir={rawdir}", f"outdir={outdir}",
                              f"check_vf_pha={yes(plan.check_vf_pha)}", "set_ardlib=no",
                              "cleanup=yes", "clobber=yes", "verbose=1"],
            outputs=[evt2, bpix])
    _require_fits(run, "chandra_repro", evt2, "event file", extnames=["EVENTS"], min_rows=1)
    asol, source = aspect_solutions(evt2)
    if not asol:
        raise run.fail("chandra_repro", f"left no aspect solution to use ({source})")
    run.note(f"aspect solution from {source}: {', '.join(map(str, asol))}")
    msk = keyword_files(evt2, "MASKFILE") or _glob(outdir, ["*msk1.fits", "*msk1.fits.gz"])
    return {"evt2": str(evt2), "bpix": str(bpix), "asol": [str(a) for a in asol],
            "msk": str(msk[0]) if msk else ""}


def stage_acis_i(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    evt2 = prev["repro"]["evt2"]
    out = Path(plan.obsdir) / f"acisf{plan.id5}_acisI_evt2.fits"
    run.run("dmcopy", [f"{evt2}[events][ccd_id={plan.ccd_filter}]", str(out), "clobber=yes"],
            outputs=[out])
    problem = fits_problem(out, extnames=["EVENTS"], min_rows=1)
    if problem:
        raise run.fail("dmcopy", f"found no ACIS-I events (ccd_id={plan.ccd_filter}) in {evt2}: "
                       f"{problem}; ACIS-S observations are not supported by the ciao backend yet")
    return {"events": str(out)}


# --------------------------------------------------------------------------
# deflare


def _check_light_curve(plan: ObsPlan, run: ToolRunner, lc: Path, rule: D.DeflareRule) -> float:
    """Fraction of the light curve's exposure that ``rule`` keeps; warns when it is low.

    Computed with :mod:`hpcxt.prep.deflare` (the products backend's rules)
    from the light curve deflare reads.
    """
    from astropy.io import fits
    with fits.open(lc) as hdul:
        data = hdul["LIGHTCURVE"].data
        counts, exposure = data["COUNTS"], data["EXPOSURE"]
    try:
        kept = D.kept_fraction(exposure, D.good_bins(counts, exposure, rule))
    except D.DeflareError as exc:
        run.note(f"light curve {lc}: {exc}")
        return 0.0
    run.note(f"deflare method={rule.method} keeps {kept:.1%} of the light curve's exposure")
    message = D.low_kept_message(kept, rule)
    if message:
        log.warning("observation %s: %s", plan.obsid, message)
    return kept


def stage_deflare(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    events = prev["acis_i"]["events"]
    d = plan.deflare
    if not d["enabled"]:
        run.note("prep.deflare.enabled is false: events used as they are")
        return {"events": events, "gti": ""}
    rule = D.DeflareRule.from_config(d)
    folder = Path(plan.obsdir) / "deflare"
    folder.mkdir(parents=True, exist_ok=True)
    hi = folder / f"acisf{plan.id5}_hiE_evt.fits"
    lc = folder / f"acisf{plan.id5}_hiE.lc"
    gti = folder / f"acisf{plan.id5}_clean.gti"
    clean = Path(plan.obsdir) / f"acisf{plan.id5}_clean_evt2.fits"
    # The light curve is of the particle background: sources would add
    # their own variability, so they are left out when a region file exists.
    exclude = f"[exclude sky=region({plan.point_sources})]" if plan.point_sources else ""
    run.run("dmcopy", [f"{events}{exclude}[energy={kev_filter(d['band'])}]", str(hi),
                       "clobber=yes"], outputs=[hi])
    run.run("dmextract", [f"infile={hi}[bin time=::{d['bin_seconds']:g}]", f"outfile={lc}",
                          "opt=ltc1", "clobber=yes"], outputs=[lc])
    _require_fits(run, "dmextract", lc, "light curve", extnames=["LIGHTCURVE"], min_rows=1)
    run.run("deflare", [f"infile={lc}", f"outfile={gti}", *rule.tool_args(), "plot=no"],
            outputs=[gti])
    kept = _check_light_curve(plan, run, lc, rule)
    run.run("dmcopy", [f"{events}[@{gti}]", str(clean), "clobber=yes"], outputs=[clean])
    problem = fits_problem(clean, extnames=["EVENTS"], min_rows=1)
    if problem:
        raise run.fail("dmcopy", f"left no events after the GTI filter in {clean} ({problem})")
    return {"events": str(clean), "gti": str(gti), "lightcurve": str(lc),
            "kept_fraction": round(kept, 4)}


# --------------------------------------------------------------------------
# background, exposure map, responses


def _blanksky(plan: ObsPlan, run: ToolRunner, events: str, asol: list, out: Path) -> None:
    with run.call_dirs() as (pdir, wdir):
        run.run("blanksky", [f"evtfile={events}", f"outfile={out}",
                             f"asolfile={','.join(asol)}", f"tmpdir={wdir}", "random=0",
                             "clobber=yes", "verbose=1"],
                outputs=[out], call_dirs=(pdir, wdir))


def _lookup_files(run: ToolRunner, events: str) -> list[str]:
    """The CALDB blank-sky files of the observation's chips (one per chip, no repeats)."""
    # acis_bkgrnd_lookup returns its answer in its own parameter file:
    # pget must read the same PFILES directory, and nobody else may.
    with run.call_dirs() as dirs:
        run.run("acis_bkgrnd_lookup", [f"infile={events}"], call_dirs=dirs)
        answer = run.run("pget", ["acis_bkgrnd_lookup", "outfile"], call_dirs=dirs)
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip() and not ln.startswith("#")]
    files = [f.strip() for f in (lines[-1].split(",") if lines else []) if f.strip()]
    if not files:
        raise run.fail("acis_bkgrnd_lookup", "found no blank-sky background file in the CALDB")
    return list(dict.fromkeys(files))


def _lookup_background(plan: ObsPlan, run: ToolRunner, prev: dict, out: Path) -> None:
    events, asol = prev["deflare"]["events"], prev["repro"]["asol"]
    folder = Path(plan.obsdir) / "background"
    folder.mkdir(parents=True, exist_ok=True)
    stack = write_text_atomic(folder / "bkg_files.lis",
                              "\n".join(_lookup_files(run, events)) + "\n")
    merged = folder / f"acisf{plan.id5}_bkg_merged.fits"
    run.run("dmmerge", [f"infile=@{stack}[subspace -expno]", f"outfile={merged}",
                        "clobber=yes"], outputs=[merged])
    # As blanksky does: VF-cleaned data need the background's VF-flagged events out too.
    status = "[status=0]" if vf_cleaned(Path(prev["repro"]["evt2"]), plan.check_vf_pha) else ""
    if status:
        run.note("VFAINT data cleaned with check_vf_pha: background filtered with [status=0]")
    run.run("reproject_events", [f"infile={merged}{status}", f"outfile={out}",
                                 f"aspect={','.join(asol)}", f"match={events}", "random=0",
                                 "clobber=yes"], outputs=[out])


def stage_background(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    out = Path(plan.obsdir) / f"acisf{plan.id5}_bkg_evt2.fits"
    if plan.background_method == "blanksky":
        _blanksky(plan, run, prev["deflare"]["events"], prev["repro"]["asol"], out)
        tool = "blanksky"
    else:
        _lookup_background(plan, run, prev, out)
        tool = "reproject_events"
    _require_fits(run, tool, out, "background", extnames=["EVENTS"], min_rows=1)
    return {"background": str(out)}


def _band_product(folder: Path, stem: str, suffix: str) -> Path | None:
    """``<stem><suffix>``, or the one file ``<prefix>_*<suffix>`` if CIAO spelled the band
    differently (e.g. ``8.0`` for ``8``)."""
    exact = folder / f"{stem}{suffix}"
    if exact.exists():
        return exact
    prefix = stem.rsplit("_", 1)[0]
    hits = sorted(folder.glob(f"{prefix}_*{suffix}"))
    return hits[0] if len(hits) == 1 else None


def stage_exposure(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    events, repro = prev["deflare"]["events"], prev["repro"]
    folder = Path(plan.obsdir) / "fluximage"
    folder.mkdir(parents=True, exist_ok=True)
    outroot = folder / f"acisf{plan.id5}"
    remove_files(folder.glob(f"{outroot.name}_*"))
    with run.call_dirs() as (pdir, wdir):
        run.run("fluximage", [f"infile={events}", f"outroot={outroot}", f"bands={plan.bands}",
                              f"binsize={plan.bin}", f"asolfile={','.join(repro['asol'])}",
                              f"badpixfile={repro['bpix']}", f"maskfile={repro['msk']}",
                              "units=default", "expmapthresh=1.5%", "parallel=no",
                              f"tmpdir={wdir}", "cleanup=yes", "clobber=yes", "verbose=1"],
                call_dirs=(pdir, wdir))
    stem = f"{outroot.name}_{plan.band_label}"
    found = {"exposure_map": _band_product(folder, stem, "_thresh.expmap"),
             "flux_image": _band_product(folder, stem, "_flux.img")}
    for path in found.values():
        problem = fits_problem(path, image=True) if path else "missing"
        if problem:
            raise run.fail("fluximage",
                           f"left no usable output {path or str(outroot) + '_*'} ({problem})")
    return {k: str(v) for k, v in found.items()}


def _response_file(outroot: Path, suffixes) -> Path:
    """The first of ``<outroot><suffix>`` that exists (else the first name)."""
    paths = [Path(f"{outroot}{s}") for s in suffixes]
    return next((p for p in paths if p.exists()), paths[0])


def stage_response(plan: ObsPlan, run: ToolRunner, prev: dict) -> dict:
    events, repro = prev["deflare"]["events"], prev["repro"]
    region = plan.spectrum_region
    folder = Path(plan.obsdir) / "response"
    folder.mkdir(parents=True, exist_ok=True)
    outroot = folder / f"acisf{plan.id5}"
    remove_files(folder.glob(f"{outroot.name}*"))
    with run.call_dirs() as (pdir, wdir):
        run.run("specextract", [f"infile={events}[sky=region({region})]", f"outroot={outroot}",
                                "bkgfile=", f"asp={','.join(repro['asol'])}",
                                f"mskfile={repro['msk']}", f"badpixfile={repro['bpix']}",
                                "weight=yes", "weight_rmf=no", f"binarfwmap={plan.binarfwmap}",
                                "correctpsf=no", "combine=no", "bkgresp=no", "grouptype=NONE",
                                "binspec=NONE", "parallel=no", f"tmpdir={wdir}", "clobber=yes",
                                "verbose=1"],
                call_dirs=(pdir, wdir))
    # Weighted responses are <outroot>.arf/.rmf; CIAO before 4.5 called them .warf/.wrmf.
    arf = _response_file(outroot, (".arf", ".warf"))
    rmf = _response_file(outroot, (".rmf", ".wrmf"))
    for path, ext in ((arf, "SPECRESP"), (rmf, ("MATRIX", "SPECRESP MATRIX"))):
        problem = fits_problem(path, extnames=[ext], min_rows=1)
        if problem:
            raise run.fail("specextract", f"left no usable response {path} ({problem})")
    return {"arf": str(arf), "rmf": str(rmf), "region": str(region)}


#: Stage name -> (function, settings that change its output), in pipeline order.
STAGE_TABLE = {
    "download": (stage_download, lambda p: {"rawdir": p.rawdir}),
    "repro": (stage_repro, lambda p: {"check_vf_pha": p.check_vf_pha}),
    "acis_i": (stage_acis_i, lambda p: {"ccds": p.ccd_filter}),
    "deflare": (stage_deflare, lambda p: {"deflare": p.deflare, "point_sources": p.point_sources}),
    "background": (stage_background, lambda p: {"method": p.background_method}),
    "exposure": (stage_exposure, lambda p: {"band": p.band, "energy": p.expmap_energy,
                                            "bin": p.bin}),
    "response": (stage_response, lambda p: {"region": p.spectrum_region,
                                            "binarfwmap": p.binarfwmap}),
}
#: Per-observation stages, in order.
STAGES = tuple(STAGE_TABLE)
