"""TEST STAND-INS FOR CIAO TOOLS. NOT CIAO. NOT A WAY TO RUN THE PIPELINE.

Each executable in this folder is named like a CIAO tool and imitates just
enough of it for ``tests/test_ciao.py``: it refuses parameters its real
``.par`` file does not have and required ones that are missing (nothing
prompts here), checks clobber and the per-call PFILES directory, records
its command line, and writes the files the real tool would write, made from
the synthetic observations in ``$HPCXT_STANDIN_DATA/<obsid>/``:

``events.fits``, ``background.fits``, ``expmap.fits``, ``arf.fits``, ``rmf.fits``
    what the products are copied from;
``caldb/*.fits``
    the "CALDB" blank-sky files, one per chip, some events with a status
    bit set (VFAINT-flagged, as in the real files);
``aspect``
    optional text ``ASPSOL``: the archive holds old-format aspect files
    (two per-interval ``pcadf*_asol1.fits``), which chandra_repro replaces
    by one corrected ``pcadf<obsid>_repro_asol1.fits``; otherwise one
    ``ASPSOLOBI`` file.

What the tools do with them follows the real tools where the tests need
it: chandra_repro copies the aspect and mask files into its output folder,
writes ``<root>_asol1.lis`` and the ``ASOLFILE``/``MASKFILE``/``CHKVFPHA``
keywords; deflare applies lc_clean's and lc_sigma_clip's rules (as in
ciao-contrib's lightcurves.py); acis_bkgrnd_lookup returns one file per
chip through its parameter file; blanksky filters ``[status=0]`` for VFAINT
data cleaned with check_vf_pha; dmcopy and reproject_events apply the DM
filters the pipeline uses. No science happens here.

Environment (set by the tests):

``HPCXT_STANDIN_DATA``       folder of the synthetic observations
``HPCXT_STANDIN_LOG``        JSON-lines file: one record per call
``HPCXT_STANDIN_FAIL``       comma list of tools that exit with status 1
``HPCXT_STANDIN_NO_OUTPUT``  comma list of tools that exit 0 but write nothing
``HPCXT_STANDIN_HANG``       comma list of tools that sleep until killed
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

# Each tool's parameters in its .par file's order, and which are queried
# ('a' mode: positional and, since nothing prompts here, required). From
# ciao-contrib's param/*.par and the ahelp pages of the compiled tools.
PARAMS = {
    "chandra_repro": ("indir outdir root badpixel process_events destreak set_ardlib "
                      "check_vf_pha pix_adj tg_zo_position tg_orders asol_update pi_filter "
                      "patch_hrc_ssc cleanup clobber verbose mode", "indir"),
    "dmcopy": ("infile outfile kernel option verbose clobber mode", "infile outfile"),
    "dmextract": ("infile outfile bkg error bkgerror bkgnorm exp bkgexp sys_err opt defaults "
                  "wmap clobber verbose mode", "infile outfile"),
    "deflare": ("infile outfile method nsigma plot save rateaxis pattern good_color "
                "exclude_color minlength mean stddev scale minfrac verbose mode",
                "infile outfile method"),
    "blanksky": ("evtfile outfile asolfile stowedbg weight_method bkgparams tmpdir random "
                 "clobber verbose mode", "evtfile outfile"),
    "acis_bkgrnd_lookup": ("infile outfile blname verbose mode", "infile"),
    "dmmerge": ("infile outfile outBlock columnList lookupTab clobber verbose mode",
                "infile outfile"),
    "reproject_events": ("infile outfile match aspect random geompar textfile clobber verbose "
                         "mode", "infile outfile match"),
    "fluximage": ("infile outroot bands xygrid binsize asolfile badpixfile maskfile dtffile "
                  "units expmapthresh background bkgparams psfecf random parallel nproc tmpdir "
                  "cleanup clobber verbose mode", "infile outroot"),
    "merge_obs": ("infiles outroot bands xygrid maxsize binsize asolfiles badpixfiles "
                  "maskfiles dtffiles refcoord units expmapthresh background bkgparams psfecf "
                  "psfmerge random parallel nproc tmpdir cleanup clobber verbose mode",
                  "infiles outroot"),
    "specextract": ("infile outroot bkgfile asp dtffile mskfile rmffile badpixfile dafile "
                    "bkgresp weight weight_rmf resp_pos refcoord correctpsf combine "
                    "readout_streakspec grouptype binspec bkg_grouptype bkg_binspec energy "
                    "channel energy_wmap binarfcorr binwmap binarfwmap parallel nproc tmpdir "
                    "clobber verbose mode", "infile outroot"),
}
#: Status bit the blank-sky files set on VFAINT-flagged events (0-based).
VF_BIT = 23


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
    par = _pfiles_user_dir() / f"{tool}.par"
    if par.exists():
        raise StandinError(f"parameter file {par} is already in use (shared PFILES directory)")
    par.write_text("\n".join(f'{k},s,h,"{v}",,,""' for k, v in params.items()) + "\n")


def parse_params(tool: str, args: list[str]) -> dict:
    names, queried = (s.split() for s in PARAMS[tool])
    params: dict = {}
    pos = iter(queried)
    for arg in args:
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", arg, re.S)
        if m and m.group(1) in names:
            params[m.group(1)] = m.group(2)
        elif m:
            raise StandinError(f"parameter '{m.group(1)}' not found in {tool}.par")
        else:
            try:
                params[next(pos)] = arg
            except StopIteration:
                raise StandinError(f"too many positional arguments: {arg!r}") from None
    for name in queried:
        if not params.get(name):
            raise StandinError(f"required parameter '{name}' not given (no prompting here)")
    return params


def _yes(params: dict, name: str, default: str = "no") -> bool:
    value = params.get(name, default).lower()
    if value not in ("yes", "no", "true", "false", "1", "0"):
        raise StandinError(f"{name}={value!r} is not a boolean")
    return value in ("yes", "true", "1")


def _number(params: dict, name: str, default: float) -> float:
    try:
        return float(params.get(name, default))
    except ValueError:
        raise StandinError(f"{name}={params[name]!r} is not a number") from None


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


def _events_header(path) -> fits.Header:
    with fits.open(path) as hdul:
        return hdul[_events_hdu_index(hdul)].header.copy()


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


def _check_files(params: dict, key: str) -> list[str]:
    """The comma list of files in ``params[key]``; each must exist."""
    files = [f for f in params.get(key, "").split(",") if f]
    for f in files:
        if not Path(f).exists():
            raise StandinError(f"{key} {f} not found")
    return files


# ------------------------------------------------------------------ DM filters


def _ccd_set(text: str) -> set:
    ccds = set()
    for part in text.split(","):
        a, _, b = part.partition(":")
        ccds.update(range(int(a), int(b or a) + 1))
    return ccds


def _gti_rows(path: str):
    if not Path(path).exists():
        raise StandinError(f"GTI file {path} not found")
    with fits.open(path) as g:
        gt = g["GTI"].data
        return np.asarray(gt["START"], float), np.asarray(gt["STOP"], float)


def _row_filter(f: str, data):
    """Rows of ``data`` that pass one DM filter; None for a filter that selects no rows."""
    low = f.strip().lower()
    if low == "events":
        return None
    if low == "status=0":
        return ~np.asarray(data["status"]).reshape(len(data), -1).any(axis=1)
    if low.startswith("ccd_id="):
        return np.isin(np.asarray(data["ccd_id"]), sorted(_ccd_set(low.split("=", 1)[1])))
    if low.startswith("energy="):
        lo, hi = (float(v) for v in low.split("=", 1)[1].split(":"))
        e = np.asarray(data["energy"])
        return (e >= lo) & (e <= hi)
    m = re.match(r"^(?:exclude\s+)?sky=region\((.+)\)$", f.strip(), re.I)
    if m:
        if not Path(m.group(1)).exists():
            raise StandinError(f"region file {m.group(1)} not found")
        return np.ones(len(data), bool)  # region geometry is not applied by the stand-in
    if f.startswith("@"):
        starts, stops = _gti_rows(f[1:])
        t = np.asarray(data["time"])
        return ((t[:, None] >= starts) & (t[:, None] < stops)).any(axis=1)
    raise StandinError(f"the stand-in does not understand the filter [{f}]")


def _with_new_gti(hdus: list, ie: int, gti_file: str) -> None:
    starts, stops = _gti_rows(gti_file)
    exposure = float(np.sum(stops - starts))
    hdus[ie].header["EXPOSURE"] = exposure
    hdus[ie].header["LIVETIME"] = exposure
    for i, h in enumerate(hdus):
        if h.name.upper() == "GTI":
            g = fits.BinTableHDU.from_columns([fits.Column("START", "D", array=starts),
                                               fits.Column("STOP", "D", array=stops)],
                                              name="GTI")
            if h.header.get("CCD_ID") is not None:
                g.header["CCD_ID"] = h.header["CCD_ID"]
            hdus[i] = g


def _apply_filters(path: str, filters: list[str], out: Path) -> None:
    """dmcopy-like row filtering of an event file."""
    if not Path(path).exists():
        raise StandinError(f"# dmcopy: cannot open {path}")
    with fits.open(path) as hdul:
        ie = _events_hdu_index(hdul)
        data = hdul[ie].data
        keep = np.ones(len(data), bool)
        for f in filters:
            rows = _row_filter(f, data)
            if rows is not None:
                keep &= rows
        hdus = [h.copy() for h in hdul]
        hdus[ie] = fits.BinTableHDU(data=data[keep], header=hdul[ie].header, name="EVENTS")
        gti = [f for f in filters if f.startswith("@")]
        if gti:
            _with_new_gti(hdus, ie, gti[-1][1:])
        fits.HDUList([fits.PrimaryHDU(header=hdul[0].header)] + hdus[1:]).writeto(
            out, overwrite=True)


# ------------------------------------------------------------------ download, repro


def _aspect_hdu(obsid: str, content: str, t0: float, t1: float) -> fits.HDUList:
    asol = fits.BinTableHDU.from_columns(
        [fits.Column("TIME", "D", array=np.array([t0, t1]))], name="ASPSOL")
    asol.header["OBS_ID"] = str(obsid)
    asol.header["CONTENT"] = content
    return fits.HDUList([fits.PrimaryHDU(), asol])


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
        old_format = (src / "aspect").exists() and (src / "aspect").read_text().strip() == "ASPSOL"
        # Old-format aspect data come in one file per aspect interval.
        for k in range(2 if old_format else 1):
            _aspect_hdu(obsid, "ASPSOL" if old_format else "ASPSOLOBI", k, k + 1).writeto(
                top / "primary" / f"pcadf{id5}_00{k}N001_asol1.fits.gz", overwrite=True)
        msk = fits.BinTableHDU.from_columns(
            [fits.Column("SHAPE", "16A", array=np.array(["box"]))], name="MASK")
        fits.HDUList([fits.PrimaryHDU(), msk]).writeto(
            top / "secondary" / f"acisf{id5}_000N001_msk1.fits.gz", overwrite=True)
        print(f"Downloading files for ObsId {obsid}, total size is 1 Mb.")


def _gunzip(path: Path) -> Path:
    """chandra_repro's gunzip: decompress in place and delete the .gz."""
    if path.suffix != ".gz":
        return path
    out = path.with_suffix("")
    out.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    return out


def _repro_aspect(indir: Path, outdir: Path, id5: str, asol_update: bool) -> list[Path]:
    """Copy the archive aspect files into outdir; the files chandra_repro then uses."""
    archive = [_gunzip(p) for p in sorted((indir / "primary").glob("*asol1.fits*"))]
    for a in archive:
        shutil.copyfile(a, outdir / a.name)
    contents = {a: fits.getheader(a, 1).get("CONTENT") for a in archive}
    obi = [a for a in archive if contents[a] == "ASPSOLOBI"]
    if obi or not asol_update:
        return obi or archive
    corrected = outdir / f"pcadf{id5}_repro_asol1.fits"
    _aspect_hdu(str(int(id5)), "ASPSOLOBI", 0, 2).writeto(corrected, overwrite=True)
    return [corrected]


def tool_chandra_repro(p: dict) -> None:
    indir = Path(p["indir"]).resolve()
    outdir = Path(p.get("outdir") or indir / "repro").resolve()
    check_vf = _yes(p, "check_vf_pha")
    _yes(p, "cleanup", "yes")
    evt1 = sorted((indir / "secondary").glob("*evt1.fits*"))
    if not evt1:
        raise StandinError(f"no evt1 file in {indir}/secondary")
    root = p.get("root") or evt1[0].name.split("_")[0]
    id5 = f"{int(_obsid_of(str(evt1[0]))):05d}"
    outdir.mkdir(parents=True, exist_ok=True)
    evt2 = outdir / f"{root}_repro_evt2.fits"
    _check_clobber(p, evt2)
    asol = _repro_aspect(indir, outdir, id5, _yes(p, "asol_update", "yes"))
    (outdir / f"{root}_asol1.lis").write_text("".join(f"{a}\n" for a in asol))
    msk = [_gunzip(m) for m in sorted((indir / "secondary").glob("*msk1.fits*"))]
    for m in msk:
        shutil.copyfile(m, outdir / m.name)
    bpix = outdir / f"{root}_repro_bpix1.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column("CCD_ID", "I", array=np.array([0]))], name="BADPIX")]).writeto(
        bpix, overwrite=True)
    with fits.open(evt1[0]) as hdul:
        h = hdul[_events_hdu_index(hdul)].header
        h["ASOLFILE"] = ",".join(a.name for a in asol)
        h["MASKFILE"] = msk[0].name if msk else "NONE"
        h["BPIXFILE"] = bpix.name
        h["CHKVFPHA"] = check_vf
        hdul.writeto(evt2, overwrite=True)
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
    exposure = np.minimum(edges[1:], t1) - edges[:-1]  # the last bin ends at TSTOP
    lc = fits.BinTableHDU.from_columns([
        fits.Column("TIME_MIN", "D", array=edges[:-1]),
        fits.Column("TIME_MAX", "D", array=edges[1:]),
        fits.Column("TIME", "D", array=0.5 * (edges[:-1] + edges[1:])),
        fits.Column("COUNTS", "J", array=counts),
        fits.Column("EXPOSURE", "D", array=exposure),
        fits.Column("COUNT_RATE", "D", array=counts / exposure),
    ], name="LIGHTCURVE")
    fits.HDUList([fits.PrimaryHDU(), lc]).writeto(out, overwrite=True)


# ------------------------------------------------------------------ deflare


def _lc_clean(rate, exposure, clip, mean, sigma, scale, minfrac):
    """Good bins as ciao-contrib's lc_clean chooses them."""
    width = exposure.max()
    positive = rate > 0
    if mean is None:
        m0 = rate[positive].mean()
        lim = clip * np.sqrt(m0 / width)
        inside = np.where((rate > m0 - lim) & (rate < m0 + lim))[0]
        if inside.size == 0:
            raise StandinError("Unable to calculate an initial GTI mean rate level")
        mean = rate[inside].mean()
    if sigma is None:
        lo, hi = mean / scale, mean * scale
    else:
        lo, hi = mean - sigma * np.sqrt(mean / width), mean + sigma * np.sqrt(mean / width)
    good = (rate > lo) & (rate < hi)
    if good.sum() / positive.sum() < minfrac:
        raise StandinError(f"Fraction of bins that are good is below limit of {minfrac:g}!")
    return good


def _lc_sigma_clip(rate, sigma, minlength):
    """Good times as ciao-contrib's lc_sigma_clip chooses them."""
    f = rate > 0
    while True:
        gp = np.where(f)[0]
        if gp.size == 0:
            raise StandinError("Error: no bins pass the filter")
        mean, stdev = rate[gp].mean(), rate[gp].std()
        lo, hi = mean - sigma * stdev, mean + sigma * stdev
        i = np.where((np.abs((rate - mean) / stdev) > sigma) & f)[0]
        if i.size == 0:
            break
        f[i] = False
    x = np.diff(np.concatenate(([0], f * 1, [0])))
    pstart, pend = np.where(x == 1)[0], np.where(x == -1)[0]
    long_enough = (pend - pstart) >= minlength
    if not long_enough.any():
        raise StandinError(f"Error: there are no periods which pass the minlength ({minlength})")
    if minlength == 1 or long_enough.all():
        return (rate > lo) & (rate < hi)  # dmgti with the rate limits
    good = np.zeros_like(f)
    for a, b in zip(pstart[long_enough], pend[long_enough]):
        good[a:b] = True
    return good


def tool_deflare(p: dict) -> None:
    method = p["method"]
    if method not in ("clean", "sigma"):
        raise StandinError(f"method must be clean or sigma, got {method}")
    if _yes(p, "plot"):
        raise StandinError("plot=yes needs a display")
    nsigma = _number(p, "nsigma", 3)
    with fits.open(p["infile"]) as hdul:
        lc = hdul["LIGHTCURVE"].data
        rate = np.asarray(lc["COUNT_RATE"], float)
        exposure = np.asarray(lc["EXPOSURE"], float)
        tmin, tmax = np.asarray(lc["TIME_MIN"], float), np.asarray(lc["TIME_MAX"], float)
    if method == "clean":
        mean, stddev = _number(p, "mean", 0), _number(p, "stddev", 0)
        scale = _number(p, "scale", 1.2)
        if nsigma <= 0 or (stddev <= 0 and scale < 1):
            raise StandinError("clip argument must be > 0 and scale >= 1")
        good = _lc_clean(rate, exposure, nsigma, mean if mean > 0 else None,
                         stddev if stddev > 0 else None, scale, _number(p, "minfrac", 0.1))
    else:
        minlength = int(_number(p, "minlength", 3))
        if nsigma <= 0 or minlength < 1:
            raise StandinError("sigma argument must be > 0 and minlength >= 1")
        good = _lc_sigma_clip(rate, nsigma, minlength)
    starts, stops = [], []
    for a, b in zip(tmin[good], tmax[good]):
        if stops and abs(stops[-1] - a) < 1e-6:
            stops[-1] = b
        else:
            starts.append(a)
            stops.append(b)
    gti = fits.BinTableHDU.from_columns([fits.Column("START", "D", array=np.array(starts)),
                                         fits.Column("STOP", "D", array=np.array(stops))],
                                        name="GTI")
    fits.HDUList([fits.PrimaryHDU(), gti]).writeto(p["outfile"], overwrite=True)
    print(f"Light curve cleaned using the {'lc_clean' if method == 'clean' else 'lc_sigma_clip'} "
          f"routine: {int(good.sum())} of {len(good)} bins good")


# ------------------------------------------------------------------ background


def _caldb_files(events: str) -> list[str]:
    """The stand-in CALDB's blank-sky files of the chips in ``events`` (one per chip)."""
    with fits.open(events) as hdul:
        chips = sorted(set(np.asarray(hdul[_events_hdu_index(hdul)].data["ccd_id"]).tolist()))
    folder = _data_dir(_obsid_of(events)) / "caldb"
    files = [folder / f"acis{c}iD2000-12-01bkgrnd_ctiN0005.fits" for c in chips]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise StandinError(f"no blank-sky file for {missing}")
    return [str(f) for f in files]


def _merge_events(files: list[str], out: Path) -> None:
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


def tool_blanksky(p: dict) -> None:
    out = Path(p["outfile"])
    _check_clobber(p, out)
    _check_files(p, "asolfile")
    _merge_events(_caldb_files(p["evtfile"]), out)
    header = _events_header(p["evtfile"])
    if header.get("DATAMODE") == "VFAINT" and header.get("CHKVFPHA", False):
        _apply_filters(str(out), ["status=0"], out)
    print(f"Blanksky background written to {out}")


def tool_acis_bkgrnd_lookup(p: dict) -> None:
    path, filters = split_filters(p["infile"])
    if filters:
        raise StandinError("the stand-in looks up whole event files only")
    found = ",".join(_caldb_files(path))
    # The answer goes to the tool's own parameter file, read back with pget.
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
    spec, _ = split_filters(p["infile"])
    if spec.startswith("@"):
        files = [ln.strip() for ln in Path(spec[1:]).read_text().splitlines() if ln.strip()]
    else:
        files = [f for f in spec.split(",") if f]
    out = Path(p["outfile"])
    _check_clobber(p, out)
    _merge_events(files, out)


def tool_reproject_events(p: dict) -> None:
    out = Path(p["outfile"])
    _check_clobber(p, out)
    if not Path(p["match"]).exists():
        raise StandinError(f"match file {p['match']} not found")
    _check_files(p, "aspect")
    path, filters = split_filters(p["infile"])
    _apply_filters(path, filters, out)


# ------------------------------------------------------------------ images, responses


def _band(bands: str) -> tuple[str, str]:
    parts = bands.split(":")
    if len(parts) != 3:
        raise StandinError(f"bands={bands!r}: the stand-in wants lo:hi:energy in keV")
    lo, hi, e = (float(x) for x in parts)
    if not lo < e < hi:
        raise StandinError(f"bands={bands!r}: energy outside the band")
    return parts[0], parts[1]


def _write_images(expmap_src: Path, head: str, lo: str, hi: str, expmap_suffix: str) -> None:
    with fits.open(expmap_src) as hdul:
        img = hdul[0].data.astype(np.float32)
        header = hdul[0].header
    fits.PrimaryHDU(data=img, header=header).writeto(f"{head}{lo}-{hi}{expmap_suffix}",
                                                     overwrite=True)
    fits.PrimaryHDU(data=img / max(float(img.max()), 1.0), header=header).writeto(
        f"{head}{lo}-{hi}_flux.img", overwrite=True)


def tool_fluximage(p: dict) -> None:
    lo, hi = _band(p.get("bands", ""))
    if float(p.get("binsize", "8")) <= 0:
        raise StandinError("binsize must be > 0")
    for key in ("asolfile", "badpixfile", "maskfile"):
        _check_files(p, key)
    path, _ = split_filters(p["infile"])
    head = f"{p['outroot']}_"
    Path(head).parent.mkdir(parents=True, exist_ok=True)
    _check_clobber(p, Path(f"{head}{lo}-{hi}_thresh.expmap"))
    _write_images(_data_dir(_obsid_of(path)) / "expmap.fits", head, lo, hi, "_thresh.expmap")


def tool_merge_obs(p: dict) -> None:
    lo, hi = _band(p.get("bands", ""))
    files = [f for f in p["infiles"].split(",") if f]
    for f in files:
        if not Path(f).exists():
            raise StandinError(f"{f} not found")
    root = p["outroot"]
    Path(root if root.endswith("/") else Path(root).parent).mkdir(parents=True, exist_ok=True)
    _write_images(_data_dir(_obsid_of(files[0])) / "expmap.fits", root, lo, hi, "_thresh.expmap")


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
    if _yes(p, "weight", "yes") and _number(p, "binarfwmap", 1) <= 0:
        raise StandinError("'binarfwmap' must be greater than zero.")
    _check_files(p, "asp")
    outroot = p["outroot"]
    Path(outroot).parent.mkdir(parents=True, exist_ok=True)
    src = _data_dir(_obsid_of(path))
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
        if tool != "acis_bkgrnd_lookup":
            # CIAO tools write their learned parameters to the user PFILES dir.
            _write_parfile(tool, params)
        if _listed("HPCXT_STANDIN_NO_OUTPUT", tool):
            return
        globals()[f"tool_{tool}"](params)
    except StandinError as exc:
        print(f"# {tool} (CIAO stand-in): ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
