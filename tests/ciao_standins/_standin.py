"""TEST STAND-INS FOR CIAO TOOLS. NOT CIAO. NOT A WAY TO RUN THE PIPELINE.

Each executable in this folder is named like a CIAO tool and imitates just
enough of it for ``tests/test_ciao.py``: it checks the parameters it is
given (unknown names, missing required ones, clobber, the per-call PFILES
directory), records its command line, and writes the files the real tool
would write, made from the synthetic observations in
``$HPCXT_STANDIN_DATA/<obsid>/`` (events.fits, background.fits,
expmap.fits, arf.fits, rmf.fits). No science happens here.

Environment (set by the tests):

``HPCXT_STANDIN_DATA``       folder of the synthetic observations
``HPCXT_STANDIN_LOG``        JSON-lines file: one record per call
``HPCXT_STANDIN_FAIL``       comma list of tools that exit with status 1
``HPCXT_STANDIN_NO_OUTPUT``  comma list of tools that exit 0 but write nothing
``HPCXT_STANDIN_HANG``       comma list of tools that sleep until killed
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

# name -> (positional parameters in order, hidden parameters, required)
PARAMS = {
    "chandra_repro": (["indir", "outdir"],
                      ["root", "badpixel", "process_events", "destreak", "set_ardlib",
                       "check_vf_pha", "pix_adj", "tg_zo_position", "asol_update", "pi_filter",
                       "patch_hrc_ssc", "cleanup", "clobber", "verbose", "mode"],
                      ["indir"]),
    "dmcopy": (["infile", "outfile"], ["kernel", "option", "verbose", "clobber", "mode"],
               ["infile", "outfile"]),
    "dmextract": (["infile", "outfile"],
                  ["bkg", "error", "bkgerror", "bkgnorm", "exp", "bkgexp", "sys_err", "opt",
                   "defaults", "wmap", "clobber", "verbose", "mode"],
                  ["infile", "outfile"]),
    "deflare": (["infile", "outfile", "method"],
                ["nsigma", "plot", "save", "rateaxis", "pattern", "good_color", "exclude_color",
                 "minlength", "mean", "stddev", "scale", "minfrac", "verbose", "mode"],
                ["infile", "outfile"]),
    "blanksky": (["evtfile", "outfile"],
                 ["asolfile", "stowedbg", "weight_method", "bkgparams", "tmpdir", "random",
                  "clobber", "verbose", "mode"],
                 ["evtfile", "outfile"]),
    "acis_bkgrnd_lookup": (["infile"], ["outfile", "blname", "verbose", "mode"], ["infile"]),
    "dmmerge": (["infile", "outfile"],
                ["outBlock", "columnList", "lookupTab", "clobber", "verbose", "mode"],
                ["infile", "outfile"]),
    "reproject_events": (["infile", "outfile", "match"],
                         ["aspect", "random", "geompar", "textfile", "clobber", "verbose",
                          "mode"],
                         ["infile", "outfile", "match"]),
    "fluximage": (["infile", "outroot"],
                  ["bands", "xygrid", "binsize", "asolfile", "badpixfile", "maskfile",
                   "dtffile", "units", "expmapthresh", "background", "bkgparams", "psfecf",
                   "random", "parallel", "nproc", "tmpdir", "cleanup", "clobber", "verbose",
                   "mode"],
                  ["infile", "outroot"]),
    "merge_obs": (["infiles", "outroot"],
                  ["bands", "xygrid", "maxsize", "refcoord", "binsize", "asolfiles",
                   "badpixfiles", "maskfiles", "dtffiles", "units", "expmapthresh",
                   "background", "bkgparams", "psfecf", "psfmerge", "random", "parallel",
                   "nproc", "tmpdir", "cleanup", "clobber", "verbose", "mode"],
                  ["infiles", "outroot"]),
    "specextract": (["infile", "outroot"],
                    ["bkgfile", "asp", "dtffile", "mskfile", "rmffile", "badpixfile", "dafile",
                     "bkgresp", "weight", "weight_rmf", "refcoord", "correctpsf", "combine",
                     "readout_streakspec", "grouptype", "binspec", "bkg_grouptype",
                     "bkg_binspec", "energy", "channel", "energy_wmap", "binarfcorr", "binwmap",
                     "binarfwmap", "parallel", "nproc", "tmpdir", "clobber", "verbose", "mode"],
                    ["infile", "outroot"]),
}


class StandinError(Exception):
    pass


def _listed(var: str, tool: str) -> bool:
    return tool in [t.strip() for t in os.environ.get(var, "").split(",") if t.strip()]


def _record(tool: str, argv: list[str]) -> None:
    path = os.environ.get("HPCXT_STANDIN_LOG")
    if not path:
        return
    rec = {"tool": tool, "argv": argv, "pfiles": os.environ.get("PFILES"),
           "ascds_work_path": os.environ.get("ASCDS_WORK_PATH"), "cwd": os.getcwd(),
           "pid": os.getpid(), "time": time.time()}
    with open(path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def _pfiles_user_dir() -> Path:
    """The user part of PFILES, which must be a private, existing directory."""
    pfiles = os.environ.get("PFILES", "")
    if ";" not in pfiles:
        raise StandinError(f"PFILES has no ';' user/system split: {pfiles!r}")
    user = Path(pfiles.split(";", 1)[0])
    if not user.is_dir():
        raise StandinError(f"PFILES user directory {user} does not exist")
    return user


def _write_parfile(tool: str, params: dict) -> None:
    """Write <tool>.par to the user PFILES dir, as CIAO does; a clash is an error."""
    user = _pfiles_user_dir()
    par = user / f"{tool}.par"
    if par.exists():
        raise StandinError(f"parameter file {par} is already in use (shared PFILES directory)")
    lines = [f'{k},s,h,"{v}",,,""' for k, v in params.items()]
    par.write_text("\n".join(lines) + "\n")


def parse_params(tool: str, args: list[str]) -> dict:
    positional, hidden, required = PARAMS[tool]
    names = positional + hidden
    params: dict = {}
    pos = iter(positional)
    for arg in args:
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", arg, re.S)
        if m and m.group(1) in names:
            params[m.group(1)] = m.group(2)
        elif m and "[" not in m.group(1) and "/" not in arg.split("=", 1)[0]:
            raise StandinError(f"parameter '{m.group(1)}' not found in {tool}.par")
        else:
            try:
                params[next(pos)] = arg
            except StopIteration:
                raise StandinError(f"too many positional arguments: {arg!r}") from None
    for name in required:
        if not params.get(name):
            raise StandinError(f"required parameter '{name}' not given (no prompting here)")
    return params


def _yes(params: dict, name: str, default: str = "no") -> bool:
    value = params.get(name, default).lower()
    if value not in ("yes", "no", "true", "false", "1", "0"):
        raise StandinError(f"{name}={value!r} is not a boolean")
    return value in ("yes", "true", "1")


def _check_clobber(params: dict, out: Path) -> None:
    if out.exists() and not _yes(params, "clobber"):
        raise StandinError(f"{out} exists and clobber=no")


def split_filters(spec: str) -> tuple[str, list[str]]:
    i = spec.find("[")
    if i < 0:
        return spec, []
    return spec[:i], re.findall(r"\[([^\]]*)\]", spec[i:])


def _data_dir(obsid) -> Path:
    root = os.environ.get("HPCXT_STANDIN_DATA")
    if not root:
        raise StandinError("HPCXT_STANDIN_DATA is not set")
    d = Path(root) / str(int(obsid))
    if not d.is_dir():
        raise StandinError(f"no synthetic data for observation {obsid} in {root}")
    return d


def _obsid_of(path: str) -> str:
    with fits.open(path) as hdul:
        for hdu in hdul:
            if "OBS_ID" in hdu.header:
                return str(hdu.header["OBS_ID"]).strip()
    raise StandinError(f"{path} has no OBS_ID keyword")


def _events_hdu_index(hdul) -> int:
    for i, hdu in enumerate(hdul):
        if hdu.name.upper() == "EVENTS":
            return i
    raise StandinError("no EVENTS block")


def _parse_range(text: str):
    lo, hi = text.split(":")
    return float(lo), float(hi)


def _apply_filters(path: str, filters: list[str], out: Path) -> None:
    """dmcopy-like row filtering of an event file."""
    if not Path(path).exists():
        raise StandinError(f"# dmcopy: cannot open {path}")
    with fits.open(path) as hdul:
        ie = _events_hdu_index(hdul)
        data = hdul[ie].data
        keep = np.ones(len(data), bool)
        new_gti = None
        for f in filters:
            f = f.strip()
            low = f.lower()
            if low == "events" or low == "status=0":
                continue
            if low.startswith("ccd_id="):
                ccds = set()
                for part in low.split("=", 1)[1].split(","):
                    if ":" in part:
                        a, b = part.split(":")
                        ccds.update(range(int(a), int(b) + 1))
                    else:
                        ccds.add(int(part))
                keep &= np.isin(np.asarray(data["ccd_id"]), sorted(ccds))
            elif low.startswith("energy="):
                lo, hi = _parse_range(low.split("=", 1)[1])
                e = np.asarray(data["energy"])
                keep &= (e >= lo) & (e <= hi)
            elif re.match(r"^(exclude\s+)?sky=region\((.+)\)$", low):
                region = re.match(r"^(?:exclude\s+)?sky=region\((.+)\)$", f, re.I).group(1)
                if not Path(region).exists():
                    raise StandinError(f"region file {region} not found")
                # Region geometry is not applied by the stand-in.
            elif f.startswith("@"):
                gti_path = f[1:]
                if not Path(gti_path).exists():
                    raise StandinError(f"GTI file {gti_path} not found")
                with fits.open(gti_path) as g:
                    gt = g["GTI"].data
                    starts = np.asarray(gt["START"], float)
                    stops = np.asarray(gt["STOP"], float)
                t = np.asarray(data["time"])
                in_gti = np.zeros(len(t), bool)
                for a, b in zip(starts, stops):
                    in_gti |= (t >= a) & (t < b)
                keep &= in_gti
                new_gti = (starts, stops)
            else:
                raise StandinError(f"the stand-in does not understand the filter [{f}]")
        hdus = [h.copy() for h in hdul]
        hdus[ie] = fits.BinTableHDU(data=data[keep], header=hdul[ie].header, name="EVENTS")
        if new_gti is not None:
            exposure = float(np.sum(new_gti[1] - new_gti[0]))
            hdus[ie].header["EXPOSURE"] = exposure
            hdus[ie].header["LIVETIME"] = exposure
            for i, h in enumerate(hdus):
                if h.name.upper() == "GTI":
                    ccd = h.header.get("CCD_ID")
                    g = fits.BinTableHDU.from_columns(
                        [fits.Column("START", "D", array=new_gti[0]),
                         fits.Column("STOP", "D", array=new_gti[1])], name="GTI")
                    if ccd is not None:
                        g.header["CCD_ID"] = ccd
                    hdus[i] = g
        fits.HDUList([fits.PrimaryHDU(header=hdul[0].header)] + hdus[1:]).writeto(
            out, overwrite=True)


# ------------------------------------------------------------------ tools


def tool_download_chandra_obsid(args: list[str]) -> None:
    obsids = [a for a in args if not a.startswith("-")]
    if not obsids:
        raise StandinError("usage: download_chandra_obsid obsidlist [filetypelist]")
    for obsid in obsids[0].split(","):
        src = _data_dir(obsid)
        id5 = f"{int(obsid):05d}"
        top = Path.cwd() / str(int(obsid))
        (top / "primary").mkdir(parents=True, exist_ok=True)
        (top / "secondary").mkdir(parents=True, exist_ok=True)
        with fits.open(src / "events.fits") as hdul:
            hdul.writeto(top / "primary" / f"acisf{id5}N001_evt2.fits.gz", overwrite=True)
            hdul.writeto(top / "secondary" / f"acisf{id5}_000N001_evt1.fits.gz", overwrite=True)
        asol = fits.BinTableHDU.from_columns(
            [fits.Column("TIME", "D", array=np.array([0.0, 1.0]))], name="ASPSOL")
        asol.header["OBS_ID"] = str(obsid)
        fits.HDUList([fits.PrimaryHDU(), asol]).writeto(
            top / "primary" / f"pcadf{id5}_000N001_asol1.fits.gz", overwrite=True)
        msk = fits.BinTableHDU.from_columns(
            [fits.Column("SHAPE", "16A", array=np.array(["box"]))], name="MASK")
        fits.HDUList([fits.PrimaryHDU(), msk]).writeto(
            top / "secondary" / f"acisf{id5}_000N001_msk1.fits.gz", overwrite=True)
        print(f"Downloading files for ObsId {obsid}, total size is 1 Mb.")


def tool_chandra_repro(p: dict) -> None:
    indir = Path(p["indir"])
    outdir = Path(p.get("outdir") or indir / "repro")
    _yes(p, "check_vf_pha")
    _yes(p, "cleanup", "yes")
    evt1 = sorted((indir / "secondary").glob("*evt1.fits*"))
    if not evt1:
        raise StandinError(f"no evt1 file in {indir}/secondary")
    obsid = _obsid_of(str(evt1[0]))
    id5 = f"{int(obsid):05d}"
    outdir.mkdir(parents=True, exist_ok=True)
    evt2 = outdir / f"acisf{id5}_repro_evt2.fits"
    _check_clobber(p, evt2)
    with fits.open(evt1[0]) as hdul:
        hdul.writeto(evt2, overwrite=True)
    bpix = fits.BinTableHDU.from_columns(
        [fits.Column("CCD_ID", "I", array=np.array([0]))], name="BADPIX")
    fits.HDUList([fits.PrimaryHDU(), bpix]).writeto(outdir / f"acisf{id5}_repro_bpix1.fits",
                                                     overwrite=True)
    print(f"Running chandra_repro\n  indir = {indir}\n  outdir = {outdir}\n"
          f"The data have been reprocessed.")


def tool_dmcopy(p: dict) -> None:
    path, filters = split_filters(p["infile"])
    out = Path(p["outfile"])
    _check_clobber(p, out)
    _apply_filters(path, filters, out)


def tool_dmextract(p: dict) -> None:
    if p.get("opt") != "ltc1":
        raise StandinError(f"the stand-in makes light curves only (opt=ltc1), got {p.get('opt')}")
    path, filters = split_filters(p["infile"])
    bins = [f for f in filters if f.startswith("bin time=")]
    if len(bins) != 1:
        raise StandinError(f"expected one [bin time=...] filter, got {filters}")
    m = re.match(r"^bin time=([^:]*):([^:]*):(.+)$", bins[0])
    if not m:
        raise StandinError(f"cannot parse {bins[0]}")
    width = float(m.group(3))
    out = Path(p["outfile"])
    _check_clobber(p, out)
    with fits.open(path) as hdul:
        ev = hdul[_events_hdu_index(hdul)]
        t = np.asarray(ev.data["time"], float)
        t0 = float(m.group(1)) if m.group(1) else float(ev.header.get("TSTART", t.min()))
        t1 = float(m.group(2)) if m.group(2) else float(ev.header.get("TSTOP", t.max()))
    edges = np.arange(t0, t1 + width, width)
    if len(edges) < 2:
        raise StandinError("no time bins")
    counts, _ = np.histogram(t, edges)
    lc = fits.BinTableHDU.from_columns([
        fits.Column("TIME_MIN", "D", array=edges[:-1]),
        fits.Column("TIME_MAX", "D", array=edges[1:]),
        fits.Column("TIME", "D", array=0.5 * (edges[:-1] + edges[1:])),
        fits.Column("COUNTS", "J", array=counts),
        fits.Column("EXPOSURE", "D", array=np.full(len(counts), width)),
        fits.Column("COUNT_RATE", "D", array=counts / width),
    ], name="LIGHTCURVE")
    fits.HDUList([fits.PrimaryHDU(), lc]).writeto(out, overwrite=True)


def tool_deflare(p: dict) -> None:
    method = p.get("method", "clean")
    if method not in ("clean", "sigma"):
        raise StandinError(f"method must be clean or sigma, got {method}")
    nsigma = float(p.get("nsigma", 3))
    out = Path(p["outfile"])
    with fits.open(p["infile"]) as hdul:
        lc = hdul["LIGHTCURVE"].data
        rate = np.asarray(lc["COUNT_RATE"], float)
        tmin = np.asarray(lc["TIME_MIN"], float)
        tmax = np.asarray(lc["TIME_MAX"], float)
    counts = rate * (tmax - tmin)
    # A robust imitation of lc_clean: bins further than nsigma Poisson
    # deviations from the median rate are flares.
    median = float(np.median(rate))
    sigma = np.sqrt(max(float(np.median(counts)), 1.0)) / float(np.median(tmax - tmin))
    good = np.abs(rate - median) <= nsigma * sigma
    starts, stops = [], []
    for a, b, g in zip(tmin, tmax, good):
        if not g:
            continue
        if stops and abs(stops[-1] - a) < 1e-6:
            stops[-1] = b
        else:
            starts.append(a)
            stops.append(b)
    gti = fits.BinTableHDU.from_columns([fits.Column("START", "D", array=np.array(starts)),
                                         fits.Column("STOP", "D", array=np.array(stops))],
                                        name="GTI")
    fits.HDUList([fits.PrimaryHDU(), gti]).writeto(out, overwrite=True)
    print(f"{int((~good).sum())} of {len(good)} light-curve bins removed")


def tool_blanksky(p: dict) -> None:
    out = Path(p["outfile"])
    _check_clobber(p, out)
    for a in filter(None, p.get("asolfile", "").split(",")):
        if not Path(a).exists():
            raise StandinError(f"aspect solution {a} not found")
    obsid = _obsid_of(p["evtfile"])
    shutil.copyfile(_data_dir(obsid) / "background.fits", out)
    print(f"Blanksky background written to {out}")


def tool_acis_bkgrnd_lookup(p: dict) -> None:
    obsid = _obsid_of(p["infile"])
    found = str(_data_dir(obsid) / "background.fits")
    _write_parfile("acis_bkgrnd_lookup", {"infile": p["infile"], "outfile": found})
    print(found)


def tool_pget(args: list[str]) -> None:
    if len(args) < 2:
        raise StandinError("usage: pget toolname parameter")
    par = _pfiles_user_dir() / f"{args[0]}.par"
    value = ""
    if par.exists():
        for line in par.read_text().splitlines():
            fields = line.split(",", 3)
            if fields[0] == args[1]:
                value = fields[3].split('"')[1] if '"' in fields[3] else fields[3]
    print(value)


def tool_dmmerge(p: dict) -> None:
    spec, filters = split_filters(p["infile"])
    if spec.startswith("@"):
        files = [ln.strip() for ln in Path(spec[1:]).read_text().splitlines() if ln.strip()]
    else:
        files = [f for f in spec.split(",") if f]
    out = Path(p["outfile"])
    _check_clobber(p, out)
    tables = []
    with fits.open(files[0]) as first:
        header0 = first[0].header.copy()
        ev_header = first[_events_hdu_index(first)].header.copy()
    for f in files:
        with fits.open(f) as h:
            tables.append(h[_events_hdu_index(h)].data.copy())
    merged = np.concatenate(tables) if len(tables) > 1 else tables[0]
    fits.HDUList([fits.PrimaryHDU(header=header0),
                  fits.BinTableHDU(data=merged, header=ev_header, name="EVENTS")]).writeto(
        out, overwrite=True)


def tool_reproject_events(p: dict) -> None:
    out = Path(p["outfile"])
    _check_clobber(p, out)
    if not Path(p["match"]).exists():
        raise StandinError(f"match file {p['match']} not found")
    shutil.copyfile(p["infile"], out)


def _band(bands: str) -> tuple[str, str]:
    parts = bands.split(":")
    if len(parts) != 3:
        raise StandinError(f"bands={bands!r}: the stand-in wants lo:hi:energy in keV")
    lo, hi, e = (float(x) for x in parts)
    if not lo < e < hi:
        raise StandinError(f"bands={bands!r}: energy outside the band")
    return parts[0], parts[1]


def tool_fluximage(p: dict) -> None:
    lo, hi = _band(p.get("bands", ""))
    if float(p.get("binsize", "8")) <= 0:
        raise StandinError("binsize must be > 0")
    for key in ("asolfile", "badpixfile", "maskfile"):
        for f in filter(None, p.get(key, "").split(",")):
            if not Path(f).exists():
                raise StandinError(f"{key} {f} not found")
    path, _ = split_filters(p["infile"])
    obsid = _obsid_of(path)
    head = f"{p['outroot']}_"
    Path(head).parent.mkdir(parents=True, exist_ok=True)
    expmap = Path(f"{head}{lo}-{hi}_thresh.expmap")
    _check_clobber(p, expmap)
    shutil.copyfile(_data_dir(obsid) / "expmap.fits", expmap)
    with fits.open(expmap) as hdul:
        img = hdul[0].data.astype(np.float32)
        flux = fits.PrimaryHDU(data=img / max(float(img.max()), 1.0), header=hdul[0].header)
        flux.writeto(f"{head}{lo}-{hi}_flux.img", overwrite=True)
        fits.PrimaryHDU(data=img, header=hdul[0].header).writeto(
            f"{head}{lo}-{hi}_thresh.img", overwrite=True)


def tool_merge_obs(p: dict) -> None:
    lo, hi = _band(p.get("bands", ""))
    files = [f for f in p["infiles"].split(",") if f]
    for f in files:
        if not Path(f).exists():
            raise StandinError(f"{f} not found")
    root = p["outroot"]
    Path(root if root.endswith("/") else Path(root).parent).mkdir(parents=True, exist_ok=True)
    obsid = _obsid_of(files[0])
    with fits.open(_data_dir(obsid) / "expmap.fits") as hdul:
        img = hdul[0].data.astype(np.float32)
        fits.PrimaryHDU(data=img / max(float(img.max()), 1.0), header=hdul[0].header).writeto(
            f"{root}{lo}-{hi}_flux.img", overwrite=True)
        fits.PrimaryHDU(data=img, header=hdul[0].header).writeto(
            f"{root}{lo}-{hi}_thresh.expmap", overwrite=True)


def tool_specextract(p: dict) -> None:
    path, filters = split_filters(p["infile"])
    regions = [f for f in filters if re.match(r"^sky=region\(.+\)$", f)]
    if len(regions) != 1:
        raise StandinError(f"infile needs one [sky=region(...)] filter, got {filters}")
    region = regions[0][len("sky=region("):-1]
    if not Path(region).exists():
        raise StandinError(f"region file {region} not found")
    for key in ("weight", "weight_rmf", "correctpsf", "combine", "bkgresp", "parallel"):
        if key in p:
            _yes(p, key)
    outroot = p["outroot"]
    Path(outroot).parent.mkdir(parents=True, exist_ok=True)
    obsid = _obsid_of(path)
    src = _data_dir(obsid)
    arf, rmf = Path(f"{outroot}.arf"), Path(f"{outroot}.rmf")
    _check_clobber(p, arf)
    shutil.copyfile(src / "arf.fits", arf)
    shutil.copyfile(src / "rmf.fits", rmf)
    spec = fits.BinTableHDU.from_columns(
        [fits.Column("CHANNEL", "J", array=np.arange(1, 1025)),
         fits.Column("COUNTS", "J", array=np.zeros(1024, int))], name="SPECTRUM")
    fits.HDUList([fits.PrimaryHDU(), spec]).writeto(f"{outroot}.pi", overwrite=True)


# ------------------------------------------------------------------ entry


def run(tool: str) -> None:
    args = sys.argv[1:]
    _record(tool, args)
    try:
        if _listed("HPCXT_STANDIN_HANG", tool):
            print(f"{tool} (stand-in): hanging as requested", flush=True)
            while True:
                time.sleep(1)
        if _listed("HPCXT_STANDIN_FAIL", tool):
            print(f"# {tool} (CIAO stand-in): ERROR: failure requested by the test",
                  file=sys.stderr)
            sys.exit(1)
        if tool == "download_chandra_obsid":
            if not _listed("HPCXT_STANDIN_NO_OUTPUT", tool):
                tool_download_chandra_obsid(args)
            return
        if tool == "pget":
            tool_pget(args)
            return
        params = parse_params(tool, args)
        if tool not in ("acis_bkgrnd_lookup",):
            _pfiles_user_dir()
            # CIAO tools write their learned parameters to the user PFILES dir.
            _write_parfile(tool, params)
        if _listed("HPCXT_STANDIN_NO_OUTPUT", tool):
            return
        globals()[f"tool_{tool}"](params)
    except StandinError as exc:
        print(f"# {tool} (CIAO stand-in): ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
