"""The CIAO prep backend, against stand-in executables (and real CIAO when present).

CIAO cannot be installed here, so ``tests/ciao_standins/`` holds executables
named like the CIAO tools that check their parameters, record their command
line and PFILES, and write the files the real tools would write. They are
copied to a temporary ``bin`` with shebangs pointing at this interpreter
and put first on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from hpcxt.errors import ConfigError, InputError
from hpcxt.io.config import dump_config, load_config
from hpcxt.prep import ciao
from hpcxt.prep import deflare as D
from hpcxt.prep.ciao import CiaoError, prepare_observations, read_stage_record
from hpcxt.prep.ciao._plan import ccd_filter, kev_filter

STANDINS = Path(__file__).parent / "ciao_standins"
OBSIDS = ("1001", "1002")
#: Observation whose archive aspect data are in the old format (CONTENT=ASPSOL).
OLD_ASPECT = "1001"
#: Status bit set on every VF_EVERY-th event of the stand-in CALDB blank-sky files.
VF_BIT, VF_EVERY = 23, 5
#: The simulator's deflare setting (see hpcxt/prep/simulate.py): its flares are long.
SIM_DEFLARE = {"method": "clean", "stddev": 4.0}


# --------------------------------------------------------------------------
# synthetic observations the stand-ins hand out


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    """hpcxt's simulator output, laid out as the stand-ins look for it."""
    from hpcxt.prep.simulate import simulate

    sim = tmp_path_factory.mktemp("sim")
    simulate(sim, preset="small", seed=3)
    root = tmp_path_factory.mktemp("standin_data")
    names = {"events.fits": "acisf{id}_repro_evt2.fits", "background.fits": "acisf{id}_bkg_evt2.fits",
             "expmap.fits": "acisf{id}_expmap.fits", "arf.fits": "acisf{id}.arf",
             "rmf.fits": "acisf{id}.rmf"}
    for obsid in OBSIDS:
        (root / obsid).mkdir()
        for name, pattern in names.items():
            (root / obsid / name).symlink_to(sim / f"obs{obsid}" / pattern.format(id=obsid))
        _standin_caldb(root / obsid / "background.fits", root / obsid / "caldb")
    (root / OLD_ASPECT / "aspect").write_text("ASPSOL\n")
    (root / "regions").symlink_to(sim / "regions")
    return root


def _standin_caldb(background: Path, folder: Path) -> None:
    """One blank-sky file per chip, with some VFAINT-flagged events, as in the CALDB."""
    folder.mkdir()
    with fits.open(background) as hdul:
        events = hdul["EVENTS"]
        flagged = np.arange(len(events.data)) % VF_EVERY == 0
        events.data["status"][flagged, VF_BIT] = True
        for chip in np.unique(events.data["ccd_id"]):
            rows = events.data[events.data["ccd_id"] == chip]
            fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(rows, events.header, name="EVENTS")]
                         ).writeto(folder / f"acis{chip}iD2000-12-01bkgrnd_ctiN0005.fits")


def caldb_events(obsid: str) -> tuple[int, int]:
    """(all, status=0) events of the stand-in CALDB blank-sky files of an observation."""
    n_all = n_clean = 0
    for f in (Path(os.environ["HPCXT_STANDIN_DATA"]) / obsid / "caldb").glob("*.fits"):
        with fits.open(f) as hdul:
            status = hdul["EVENTS"].data["status"]
            n_all += len(status)
            n_clean += int((~status.any(axis=1)).sum())
    return n_all, n_clean


# --------------------------------------------------------------------------
# stand-ins on PATH, and configs


@pytest.fixture(scope="module")
def standin_server(tmp_path_factory):
    """The stand-ins' fork server (tests/ciao_standins/_server.py): its socket.

    It imports numpy and astropy once, so that each stand-in call costs one
    bare interpreter start-up instead of those imports.
    """
    import tempfile
    # short: a Unix socket's path is limited to 107 bytes, pytest's basetemp may be long
    folder = Path(tempfile.mkdtemp(prefix="standin-", dir="/tmp"))
    sock = folder / "sock"
    proc = subprocess.Popen([sys.executable, str(STANDINS / "_server.py"), str(sock)])
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, \
                "stand-in server did not start"
            time.sleep(0.05)
        yield sock
    finally:
        proc.kill()
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def standin_bin(tmp_path):
    """The stand-ins, copied with shebangs pointing at this interpreter."""
    bindir = tmp_path / "standin_bin"
    bindir.mkdir()
    for helper in ("_standin.py", "_client.py"):
        shutil.copy(STANDINS / helper, bindir / helper)
    for tool in STANDINS.iterdir():
        if tool.name.startswith(("_", ".")) or tool.suffix == ".md" or not tool.is_file():
            continue
        text = tool.read_text().split("\n", 1)[1]
        dest = bindir / tool.name
        dest.write_text(f"#!{sys.executable}\n{text}")
        dest.chmod(0o755)
    return bindir


@pytest.fixture
def ciao_env(monkeypatch, tmp_path, standin_bin, standin_server, sim_data):
    """PATH with the stand-ins first, their data, their call log and a CIAO-like PFILES."""
    sysdir = tmp_path / "ciao_system_param"
    sysdir.mkdir()
    monkeypatch.setenv("HPCXT_STANDIN_SERVER", str(standin_server))
    monkeypatch.setenv("PATH", f"{standin_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HPCXT_STANDIN_DATA", str(sim_data))
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("HPCXT_STANDIN_LOG", str(calls))
    monkeypatch.setenv("PFILES", f"{tmp_path / 'home_param'};{sysdir}")
    for var in ("HPCXT_STANDIN_FAIL", "HPCXT_STANDIN_NO_OUTPUT", "HPCXT_STANDIN_HANG"):
        monkeypatch.delenv(var, raising=False)
    return {"calls": calls, "system_pfiles": str(sysdir), "bin": standin_bin}


def read_calls(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _arg(call: dict, key: str) -> str | None:
    for a in call["argv"]:
        if a.startswith(key + "="):
            return a.split("=", 1)[1]
    return None


def write_config(tmp_path: Path, obsids=OBSIDS, crop=True, point_sources=True, deflare=None,
                 **ciao_opts):
    prep = {"backend": "ciao", "ciao": dict(ciao_opts),
            "deflare": dict(SIM_DEFLARE if deflare is None else deflare)}
    for wanted, name, key in ((crop, "crop.reg", "crop_region"),
                              (point_sources, "sources.reg", "point_sources")):
        if "HPCXT_STANDIN_DATA" in os.environ:
            # the simulator's region files (fk5), as a user would have drawn them
            regions = Path(os.environ["HPCXT_STANDIN_DATA"]) / "regions"
            shutil.copyfile(regions / name, tmp_path / name)
        if wanted:
            prep[key] = str(tmp_path / name)
    cfg = {"cluster": {"name": "standin", "redshift": 0.1, "nh": 0.03},
           "workdir": str(tmp_path / "work"),
           "observations": [{"obsid": o} for o in obsids],
           "prep": prep,
           "fit": {"model": "xsphabs*xsbremss"}}
    path = tmp_path / "cluster.yaml"
    path.write_text(dump_config(cfg))
    return path


def done_stages(obsdir) -> list[str]:
    """Stages recorded done in an observation folder, in pipeline order."""
    record = read_stage_record(obsdir)
    return [s for s in ciao.STAGES if s in record]


def _prepare(cfg_path, force=False):
    cfg = load_config(cfg_path)
    return prepare_observations(cfg, cfg.workdir_path, force=force)


def _run_until(cfg_path, stage: str, obsid: str = OBSIDS[0]) -> dict:
    """The stages of one observation up to ``stage`` (faster than a whole prep)."""
    cfg = load_config(cfg_path)
    plan = next(p for p in ciao.make_plans(cfg, cfg.workdir_path) if p.obsid == obsid)
    return ciao.run_stages(plan, (stage,))


PHASE1 = ["download_chandra_obsid", "chandra_repro", "dmcopy", "dmcopy", "dmextract", "deflare",
          "dmcopy", "blanksky", "fluximage"]


# --------------------------------------------------------------------------
# small pure pieces


def test_ccd_filter_and_band_syntax():
    assert ccd_filter([0, 1, 2, 3]) == "0:3"
    assert ccd_filter([3, 0, 1]) == "0:1,3"
    assert ccd_filter([2]) == "2"
    assert kev_filter([9.0, 12.0]) == "9000:12000"
    assert kev_filter([0.7, 8.0]) == "700:8000"


def test_system_pfiles_forms(tmp_path):
    # "rw;ro": the part after the ';' is CIAO's read-only defaults, kept as it is
    assert ciao.system_pfiles({"PFILES": "/home/u/cxcds_param4;/ciao/param:/ciao/contrib/param",
                               "ASCDS_INSTALL": str(tmp_path)}) \
        == "/ciao/param:/ciao/contrib/param"
    # no ';': every folder in it is written to; the install's folders replace them,
    # param before contrib/param as CIAO's setup lists them
    (tmp_path / "param").mkdir()
    (tmp_path / "contrib" / "param").mkdir(parents=True)
    no_split = {"PFILES": "/home/u/cxcds_param4:/ciao/param", "ASCDS_INSTALL": str(tmp_path)}
    assert ciao.system_pfiles(no_split) == f"{tmp_path}/param:{tmp_path}/contrib/param"
    # ... and without an install, only CIAO's own 'param' folders are read
    assert ciao.system_pfiles({"PFILES": "/home/u/cxcds_param4:/ciao/param"}) == "/ciao/param"
    assert ciao.system_pfiles({}) == ""


def test_the_per_call_folder_is_the_only_writable_part_of_pfiles(tmp_path, ciao_env,
                                                                monkeypatch):
    monkeypatch.setenv("PFILES", f"{tmp_path / 'cxcds_param4'}:/opt/ciao/param")
    monkeypatch.delenv("ASCDS_INSTALL", raising=False)
    runner = ciao.ToolRunner("1001", tmp_path / "logs" / "x.log", tmp_path / "tmp")
    runner.run("pget", ["deflare", "nsigma"])
    (call,) = read_calls(ciao_env["calls"])
    writable, read_only = call["pfiles"].split(";")
    assert Path(writable).parent == tmp_path / "tmp" / "pfiles" and ":" not in writable
    assert read_only == "/opt/ciao/param"


def test_standins_refuse_parameters_their_par_file_lacks(tmp_path, ciao_env):
    runner = ciao.ToolRunner("1001", tmp_path / "logs" / "x.log", tmp_path / "tmp")
    with pytest.raises(CiaoError, match="deflare exited with status 1"):
        runner.run("deflare", ["infile=lc.fits", "outfile=gti.fits", "method=sigma",
                               "max_iterations=20"])
    assert "parameter 'max_iterations' not found in deflare.par" in runner.log_file.read_text()


def test_retired_deflare_key_is_refused_with_what_to_do(tmp_path):
    path = write_config(tmp_path, deflare={"max_iterations": 20})
    with pytest.raises(ConfigError, match=r"prep.deflare.max_iterations: no longer used"):
        load_config(path)


def test_ciao_available_follows_path(monkeypatch, standin_bin, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert not ciao.ciao_available()
    info = ciao.ciao_info()
    assert info["available"] is False and "chandra_repro" in info["missing"]
    assert info["version"] is None and "not on PATH" in info["reason"]
    monkeypatch.setenv("PATH", f"{standin_bin}{os.pathsep}{empty}")
    monkeypatch.delenv("CALDB", raising=False)
    assert ciao.ciao_available()
    info = ciao.ciao_info()
    assert info["available"] is True and info["missing"] == []
    assert info["tools"]["chandra_repro"] == str(standin_bin / "chandra_repro")
    assert info["caldb"] is None and "CALDB" in info["reason"]
    assert "version unknown" in info["version"]


def test_acis_s_ccds_are_refused(tmp_path, ciao_env):
    path = write_config(tmp_path)
    text = path.read_text().replace("backend: ciao", "backend: ciao\n  ccds: [0, 1, 2, 3, 7]")
    path.write_text(text)
    with pytest.raises(InputError, match="ACIS-S") as err:
        _prepare(path)
    assert err.value.field == "prep.ccds"
    assert read_calls(ciao_env["calls"]) == []


# --------------------------------------------------------------------------
# the command lines


@pytest.mark.slow
def test_two_observations_issue_expected_commands(tmp_path, ciao_env):
    cfg_path = write_config(tmp_path)
    out = _prepare(cfg_path)
    calls = read_calls(ciao_env["calls"])
    tools = [c["tool"] for c in calls]
    assert tools == PHASE1 + PHASE1 + ["merge_obs", "specextract", "specextract"]

    work = (tmp_path / "work").resolve()
    for k, obsid in enumerate(OBSIDS):
        c = calls[k * len(PHASE1):(k + 1) * len(PHASE1)]
        id5 = f"{int(obsid):05d}"
        obsdir = work / "obs" / obsid
        assert c[0]["argv"] == [obsid] and Path(c[0]["cwd"]) == work / "obs"
        assert _arg(c[1], "indir") == str(obsdir)
        assert _arg(c[1], "outdir") == str(obsdir / "repro")
        assert _arg(c[1], "check_vf_pha") == "no"
        assert c[2]["argv"][0] == f"{obsdir}/repro/acisf{id5}_repro_evt2.fits[events][ccd_id=0:3]"
        acis_i = f"{obsdir}/acisf{id5}_acisI_evt2.fits"
        assert c[2]["argv"][1] == acis_i
        assert c[3]["argv"][0] == (f"{acis_i}[exclude sky=region({tmp_path}/sources.reg)]"
                                   "[energy=9000:12000]")
        assert _arg(c[4], "infile").endswith("_hiE_evt.fits[bin time=::259.28]")
        assert _arg(c[4], "opt") == "ltc1"
        assert c[5]["argv"][2:] == ["method=clean", "nsigma=3", "scale=1.2", "minfrac=0.1",
                                    "stddev=4", "mean=0", "plot=no"]
        gti = _arg(c[5], "outfile")
        assert c[6]["argv"][0] == f"{acis_i}[@{gti}]"
        clean = c[6]["argv"][1]
        assert _arg(c[7], "evtfile") == clean
        assert _arg(c[8], "infile") == clean
        assert _arg(c[8], "bands") == "0.7:8:2.3" and _arg(c[8], "binsize") == "4"
        spec = calls[-2 + k]
        assert _arg(spec, "infile") == f"{clean}[sky=region({tmp_path}/crop.reg)]"
        assert (_arg(spec, "weight"), _arg(spec, "correctpsf")) == ("yes", "no")
        assert _arg(spec, "binarfwmap") == "4"
        assert out[k]["events"] == clean
        # One aspect solution, the one chandra_repro listed, for every tool that
        # takes one: for old-format aspect data its corrected file (repro/ also
        # holds the archive's two uncorrected ones), else the archive's file.
        asol = (f"{obsdir}/repro/pcadf{id5}_repro_asol1.fits" if obsid == OLD_ASPECT
                else f"{obsdir}/primary/pcadf{id5}_000N001_asol1.fits")
        assert {_arg(c[7], "asolfile"), _arg(c[8], "asolfile"), _arg(spec, "asp")} == {asol}
        in_repro = sorted(p.name for p in (obsdir / "repro").glob("*asol1.fits"))
        assert len(in_repro) == (3 if obsid == OLD_ASPECT else 1)
    merge = calls[2 * len(PHASE1)]
    assert _arg(merge, "infiles") == ",".join(o["events"] for o in out)

    # one private parameter directory per call, CIAO's system part kept
    user_dirs = []
    for c in calls:
        user, system = c["pfiles"].split(";", 1)
        assert system == ciao_env["system_pfiles"]
        assert Path(user).parent == work / "tmp" / "pfiles"
        assert Path(c["ascds_work_path"]).parent == work / "tmp" / "work"
        user_dirs.append(user)
    assert len(set(user_dirs)) == len(calls)
    assert not any(Path(u).exists() for u in user_dirs)  # removed after each call

    assert [o["obsid"] for o in out] == list(OBSIDS)
    for o in out:
        for key in ("events", "background", "exposure_map", "arf", "rmf"):
            assert Path(o[key]).is_absolute() and Path(o[key]).stat().st_size > 0
    for obsid in OBSIDS:
        assert done_stages(work / "obs" / obsid) == list(ciao.STAGES)
        log = (work / "obs" / obsid / "logs" / "deflare.log").read_text()
        assert "$ deflare infile=" in log and "# exit status 0" in log
        assert "# PFILES=" in log

    # ACIS-I only, and the simulated flare cut out: every kept event lies in
    # the GTI that deflare wrote, which is shorter than the observation
    for o in out:
        gti_file = read_stage_record(work / "obs" / o["obsid"])["deflare"]["outputs"]["gti"]
        with fits.open(gti_file) as hdul:
            start, stop = hdul["GTI"].data["START"], hdul["GTI"].data["STOP"]
        with fits.open(o["events"]) as hdul:
            t = hdul["EVENTS"].data["time"]
            ccd = hdul["EVENTS"].data["ccd_id"]
            tstart, tstop = hdul["EVENTS"].header["TSTART"], hdul["EVENTS"].header["TSTOP"]
        assert set(np.unique(ccd)) <= {0, 1, 2, 3} and len(t) > 1000
        in_gti = np.zeros(len(t), bool)
        for a, b in zip(start, stop):
            in_gti |= (t >= a) & (t < b)
        assert in_gti.all()
        good_time = np.sum(np.clip(stop, tstart, tstop) - np.clip(start, tstart, tstop))
        assert 0.5 * (tstop - tstart) < good_time < 0.99 * (tstop - tstart)


@pytest.mark.slow
@pytest.mark.parametrize("check_vf_pha", [True, False])
def test_lookup_background_one_file_per_chip_and_vfaint_status(tmp_path, ciao_env,
                                                                 check_vf_pha):
    path = write_config(tmp_path, obsids=OBSIDS[:1], background_method="lookup",
                        check_vf_pha=check_vf_pha)
    res = _run_until(path, "background")
    calls = read_calls(ciao_env["calls"])
    tools = [c["tool"] for c in calls]
    i = tools.index("acis_bkgrnd_lookup")
    assert tools[i:] == ["acis_bkgrnd_lookup", "pget", "dmmerge", "reproject_events"]
    # the lookup answers in its own parameter file: pget shares that folder only
    assert calls[i + 1]["argv"] == ["acis_bkgrnd_lookup", "outfile"]
    assert calls[i]["pfiles"] == calls[i + 1]["pfiles"]
    assert calls[i]["pfiles"] not in [c["pfiles"] for c in calls[:i] + calls[i + 2:]]
    stack = Path(_arg(calls[i + 2], "infile")[1:].split("[")[0]).read_text().split()
    assert len(stack) == 4 and all(Path(f).name.startswith(f"acis{c}i")
                                   for c, f in zip(range(4), stack))
    reproject = calls[i + 3]
    assert _arg(reproject, "match") == res["deflare"]["events"]
    assert _arg(reproject, "infile").endswith("[status=0]") == check_vf_pha
    assert _arg(reproject, "aspect") == res["repro"]["asol"][0]
    n_all, n_clean = caldb_events(OBSIDS[0])
    with fits.open(res["background"]["background"]) as hdul:
        n_out = len(hdul["EVENTS"].data)
    # VFAINT data cleaned with check_vf_pha lose the flagged blank-sky events too
    assert n_out == (n_clean if check_vf_pha else n_all) and n_clean < n_all


@pytest.mark.slow
@pytest.mark.parametrize("rule,flare_kept,quiet_kept", [
    # lc_clean's first mean is pulled up by the flare: its +-20% cut then drops
    # most quiescent bins, and prep says so and what to set
    ({"method": "clean"}, 0.0, (0.0, 0.6)),
    # a 4-sigma Poisson cut about the same mean (the simulator's setting)
    (SIM_DEFLARE, 0.0, (0.95, 1.0)),
    # the flare widens the standard deviation: 3-sigma clipping keeps all of it
    ({"method": "sigma"}, 1.0, (0.95, 1.0)),
], ids=["clean", "clean-stddev", "sigma"])
def test_long_flare_under_both_deflare_methods(tmp_path, ciao_env, caplog, rule, flare_kept,
                                               quiet_kept):
    """Observation 1001 has a flare of 2.5 ks (of 20 ks) at 7 times the quiescent rate."""
    res = _run_until(write_config(tmp_path, obsids=OBSIDS[:1], deflare=rule), "deflare")
    (call,) = [c for c in read_calls(ciao_env["calls"]) if c["tool"] == "deflare"]
    args = {a.split("=", 1)[0] for a in call["argv"][2:]}
    assert args == ({"method", "nsigma", "scale", "minfrac", "stddev", "mean", "plot"}
                    if rule["method"] == "clean" else {"method", "nsigma", "minlength", "plot"})
    with fits.open(res["deflare"]["lightcurve"]) as hdul:
        lc = hdul["LIGHTCURVE"].data
    with fits.open(res["deflare"]["gti"]) as hdul:
        start, stop = hdul["GTI"].data["START"], hdul["GTI"].data["STOP"]
    in_gti = ((lc["TIME"][:, None] >= start) & (lc["TIME"][:, None] < stop)).any(axis=1)
    # the products backend's rule on the same light curve keeps the same bins
    good = D.good_bins(lc["COUNTS"], lc["EXPOSURE"], D.DeflareRule.from_config(rule))
    np.testing.assert_array_equal(in_gti, good)
    f0, f1 = _flare_truth(OBSIDS[0])
    inside = (lc["TIME_MIN"] >= f0) & (lc["TIME_MAX"] <= f1)
    quiet = (lc["TIME_MAX"] <= f0) | (lc["TIME_MIN"] >= f1)
    assert good[inside].mean() == flare_kept
    assert quiet_kept[0] <= good[quiet].mean() <= quiet_kept[1]
    fraction = D.kept_fraction(lc["EXPOSURE"], good)
    assert res["deflare"]["kept_fraction"] == pytest.approx(fraction, abs=1e-4)
    assert ("keeps only" in caplog.text) == (fraction < D.LOW_KEPT_FRACTION)
    assert ("set prep.deflare.mean to the quiescent rate" in caplog.text) == (quiet_kept[1] < 0.9)


def _flare_truth(obsid: str) -> tuple[float, float]:
    sim = Path(os.environ["HPCXT_STANDIN_DATA"]) / obsid / "events.fits"
    truth = yaml.safe_load((sim.resolve().parents[1] / "truth" / "truth.yaml").read_text())
    (obs,) = [o for o in truth["observations"] if str(o["obsid"]) == obsid]
    return obs["flare"]["start"], obs["flare"]["stop"]


@pytest.mark.slow
def test_options_reach_the_command_lines(tmp_path, ciao_env):
    path = write_config(tmp_path, obsids=OBSIDS[:1], point_sources=False, check_vf_pha=True,
                        expmap_energy=1.5)
    text = path.read_text().replace("backend: ciao", "backend: ciao\n  ccds: [0, 1, 3]\n  bin: 2")
    path.write_text(text)
    _prepare(path)
    calls = {c["tool"]: c for c in reversed(read_calls(ciao_env["calls"]))}
    assert _arg(calls["chandra_repro"], "check_vf_pha") == "yes"
    first_dmcopy = next(c for c in read_calls(ciao_env["calls"]) if c["tool"] == "dmcopy")
    assert first_dmcopy["argv"][0].endswith("[events][ccd_id=0:1,3]")
    hi = [c for c in read_calls(ciao_env["calls"]) if c["tool"] == "dmcopy"][1]
    assert "exclude" not in hi["argv"][0]
    assert _arg(calls["fluximage"], "bands") == "0.7:8:1.5"
    assert _arg(calls["fluximage"], "binsize") == "2"
    assert "merge_obs" not in calls  # one observation: its own image is the view


# --------------------------------------------------------------------------
# failures, records, resuming


@pytest.mark.slow
@pytest.mark.parametrize("tool,knob,stage,detail", [
    ("deflare", "HPCXT_STANDIN_FAIL", "deflare", "exited with status 1"),
    ("fluximage", "HPCXT_STANDIN_NO_OUTPUT", "exposure", "left no usable output"),
])
def test_failure_stops_with_one_line_and_rerun_resumes(tmp_path, ciao_env, monkeypatch, tool,
                                                       knob, stage, detail):
    cfg_path = write_config(tmp_path, obsids=OBSIDS[:1])
    monkeypatch.setenv(knob, tool)
    with pytest.raises(CiaoError) as err:
        _prepare(cfg_path)
    work = (tmp_path / "work").resolve()
    log_file = work / "obs" / "1001" / "logs" / f"{stage}.log"
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tool} {detail}") and "observation 1001" in msg
    assert msg.endswith(f"see {log_file}")
    assert f"$ {tool} " in log_file.read_text()
    done = done_stages(work / "obs" / "1001")
    assert done == list(ciao.STAGES[:ciao.STAGES.index(stage)])

    n_before = len(read_calls(ciao_env["calls"]))
    monkeypatch.delenv(knob)
    out = _prepare(cfg_path)
    again = read_calls(ciao_env["calls"])[n_before:]
    first_stage_tool = {"deflare": "dmcopy", "exposure": "fluximage"}
    assert again[0]["tool"] == first_stage_tool[stage]
    assert "download_chandra_obsid" not in [c["tool"] for c in again[:3]]
    assert len(out) == 1
    assert done_stages(work / "obs" / "1001") == list(ciao.STAGES)


@pytest.mark.slow
def test_cli_prints_one_line_and_exits_2(tmp_path, ciao_env):
    cfg_path = write_config(tmp_path, obsids=OBSIDS[:1])
    env = dict(os.environ, HPCXT_STANDIN_FAIL="specextract")
    proc = subprocess.run([sys.executable, "-m", "hpcxt", "prep", str(cfg_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1
    log_file = (tmp_path / "work").resolve() / "obs" / "1001" / "logs" / "response.log"
    assert errors[0] == (f"hpcxt: error: specextract exited with status 1 for observation 1001; "
                         f"see {log_file}")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_reruns_skip_redo_changed_lost_and_forced_stages(tmp_path, ciao_env, monkeypatch):
    """One workdir through the reruns a user makes: nothing changed, --force,
    a changed setting, a lost output, a redo whose tool writes nothing."""
    cfg_path = write_config(tmp_path, obsids=OBSIDS[:1])

    def tools_since(n):
        return [c["tool"] for c in read_calls(ciao_env["calls"])[n:]]

    first = _prepare(cfg_path)
    n = len(read_calls(ciao_env["calls"]))
    assert _prepare(cfg_path) == first and tools_since(n) == []
    _prepare(cfg_path, force=True)
    assert tools_since(n) == PHASE1[1:] + ["specextract"]  # all but the download
    n = len(read_calls(ciao_env["calls"]))
    changed = {**SIM_DEFLARE, "stddev": 3.5}
    write_config(tmp_path, obsids=OBSIDS[:1], deflare=changed)
    _prepare(cfg_path)
    assert tools_since(n) == ["dmcopy", "dmextract", "deflare", "dmcopy", "blanksky",
                              "fluximage", "specextract"]
    n = len(read_calls(ciao_env["calls"]))
    os.remove(first[0]["exposure_map"])
    _prepare(cfg_path)
    assert tools_since(n) == ["fluximage", "specextract"]
    # a redo whose tool writes nothing fails, even though last run's file was there
    write_config(tmp_path, obsids=OBSIDS[:1], deflare=changed, expmap_energy=1.5)
    monkeypatch.setenv("HPCXT_STANDIN_NO_OUTPUT", "fluximage")
    with pytest.raises(CiaoError, match="fluximage left no usable output"):
        _prepare(cfg_path)
    assert not Path(first[0]["exposure_map"]).exists()


def test_download_hang_times_out(tmp_path, ciao_env, monkeypatch):
    cfg_path = write_config(tmp_path, obsids=OBSIDS[:1], download_timeout=2)
    monkeypatch.setenv("HPCXT_STANDIN_HANG", "download_chandra_obsid")
    t0 = time.monotonic()
    with pytest.raises(CiaoError, match=r"download_chandra_obsid timed out after 2 s"):
        _prepare(cfg_path)
    assert time.monotonic() - t0 < 30
    assert done_stages((tmp_path / "work" / "obs" / "1001").resolve()) == []


@pytest.mark.slow
def test_download_skipped_when_data_present_and_refused_when_off(tmp_path, ciao_env):
    cfg_path = write_config(tmp_path, obsids=OBSIDS[:1], download=False)
    with pytest.raises(InputError, match="no Chandra data for observation 1001") as err:
        _prepare(cfg_path)
    assert err.value.field == "prep.ciao.download"
    assert read_calls(ciao_env["calls"]) == []
    # data put there by hand (here: by the download stand-in) are used as they are
    subprocess.run([str(ciao_env["bin"] / "download_chandra_obsid"), "1001"], check=True,
                   cwd=(tmp_path / "work" / "obs").resolve(), capture_output=True)
    n = len(read_calls(ciao_env["calls"]))
    _prepare(cfg_path)
    tools = [c["tool"] for c in read_calls(ciao_env["calls"])[n:]]
    assert tools[0] == "chandra_repro" and "download_chandra_obsid" not in tools


@pytest.mark.slow
def test_no_region_stops_before_responses_then_resumes(tmp_path, ciao_env):
    cfg_path = write_config(tmp_path, crop=False)
    with pytest.raises(InputError, match="open .*merged/0.7-8_flux.img in DS9") as err:
        _prepare(cfg_path)
    assert err.value.field == "prep.crop_region"
    work = (tmp_path / "work").resolve()
    for obsid in OBSIDS:
        assert done_stages(work / "obs" / obsid) == list(ciao.STAGES[:-1])
    n = len(read_calls(ciao_env["calls"]))
    text = cfg_path.read_text().replace("backend: ciao",
                                        f"backend: ciao\n  crop_region: {tmp_path}/crop.reg")
    cfg_path.write_text(text)
    _prepare(cfg_path)
    assert [c["tool"] for c in read_calls(ciao_env["calls"])[n:]] == ["specextract"] * 2


@pytest.mark.slow
def test_parallel_observations_run_in_separate_processes(tmp_path, ciao_env):
    out = _prepare(write_config(tmp_path, nproc=2))
    calls = read_calls(ciao_env["calls"])
    work = (tmp_path / "work").resolve()
    assert [o["obsid"] for o in out] == list(OBSIDS)
    for o in out:
        obsdir = work / "obs" / o["obsid"]
        assert done_stages(obsdir) == list(ciao.STAGES)
        assert o["events"] == str(obsdir / f"acisf{int(o['obsid']):05d}_clean_evt2.fits")
        # each observation issued its own stages in order, whatever the interleaving
        mine = [c["tool"] for c in calls if c["tool"] != "merge_obs"
                and (any(str(obsdir) in a for a in c["argv"]) or c["argv"] == [o["obsid"]])]
        assert mine == PHASE1 + ["specextract"]
    tools = [c["tool"] for c in calls]
    assert tools.count("merge_obs") == 1
    assert tools.index("merge_obs") == len(tools) - 3  # after both phase-1 runs
    pids = {}
    for c in calls:
        if c["tool"] == "chandra_repro":
            obsid = Path(_arg(c, "indir")).name
            pids[obsid] = Path(c["pfiles"].split(";")[0]).name.split("-")[0]
    assert set(pids) == set(OBSIDS) and pids["1001"] != pids["1002"]
    assert len({c["pfiles"] for c in calls}) == len(calls)


@pytest.mark.slow
def test_failure_in_parallel_keeps_the_other_observation(tmp_path, ciao_env, monkeypatch):
    cfg_path = write_config(tmp_path, nproc=2)
    monkeypatch.setenv("HPCXT_STANDIN_FAIL", "blanksky")
    with pytest.raises(CiaoError, match="blanksky exited with status 1 for observation 1001"):
        _prepare(cfg_path)
    work = (tmp_path / "work").resolve()
    for obsid in OBSIDS:
        assert done_stages(work / "obs" / obsid) == \
            list(ciao.STAGES[:ciao.STAGES.index("background")])


# --------------------------------------------------------------------------
# through the products backend into a bundle


@pytest.mark.slow
def test_standin_products_flow_into_a_valid_bundle(tmp_path, ciao_env):
    driver = pytest.importorskip("hpcxt.stages.prep")
    from hpcxt.io.bundle import read_bundle

    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path)
    bundle_path = driver.run_prep(cfg)
    bundle = read_bundle(bundle_path)
    assert bundle.obsids == list(OBSIDS)
    assert bundle.mask.any() and bundle.counts[bundle.mask].sum() > 0
    assert bundle.exposure[bundle.mask].min() > 0
    work = (tmp_path / "work").resolve()
    for obs in bundle.observations:
        clean = work / "obs" / obs.obsid / f"acisf{int(obs.obsid):05d}_clean_evt2.fits"
        assert Path(obs.source_file) == clean
        assert obs.bkg_events is not None and len(obs.bkg_events["x"]) > 0
        assert obs.response.rmf_matrix.shape[0] == obs.response.specresp.shape[0]
        assert len(obs.events["x"]) > 0
    # CIAO's deflare cleaned the light curve; the products steps do not clean it twice
    summary = json.loads((work / "prep" / "summary.json").read_text())
    assert [o["removed"]["flare"] for o in summary["observations"]] == [0, 0]


# --------------------------------------------------------------------------
# prep.backend: auto


def _products_config(tmp_path: Path, backend: str = "auto") -> Path:
    data = Path(os.environ["HPCXT_STANDIN_DATA"])
    obs = [{"obsid": o, "events": str(data / o / "events.fits"),
            "background": str(data / o / "background.fits"),
            "exposure_map": str(data / o / "expmap.fits"), "arf": str(data / o / "arf.fits"),
            "rmf": str(data / o / "rmf.fits")} for o in OBSIDS]
    path = write_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["observations"], cfg["prep"]["backend"] = obs, backend
    path.write_text(dump_config(cfg))
    return path


def test_auto_runs_the_listed_products_even_with_ciao_on_path(tmp_path, ciao_env, caplog):
    import logging

    from hpcxt.stages.prep import _observation_products

    cfg = load_config(_products_config(tmp_path))
    assert ciao.ciao_available()
    with caplog.at_level(logging.INFO, logger="hpcxt.prep"):
        out = _observation_products(cfg, cfg.workdir_path, force=False)
    assert [o["events"] for o in out] == [o.events for o in cfg.observations]
    assert read_calls(ciao_env["calls"]) == []
    assert ("prep backend: products (prep.backend auto: the config gives product paths "
            "(observations[0].events and 9 more), so CIAO is not run)") in caplog.text


def test_auto_without_products_runs_ciao_or_says_what_is_missing(tmp_path, ciao_env,
                                                                 monkeypatch):
    from hpcxt.prep.backend import choose_backend

    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("backend: ciao", "backend: auto"))
    cfg = load_config(path)
    assert choose_backend(cfg) == ("ciao", "prep.backend auto: no product paths in the config "
                                           "and CIAO's tools are on PATH")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InputError, match="no CIAO on PATH .missing: download_chandra_obsid") \
            as err:
        choose_backend(cfg)
    assert err.value.field == "prep.backend"


# --------------------------------------------------------------------------
# the real thing, when CIAO is installed


def _real_ciao() -> str | None:
    tool = shutil.which("chandra_repro")
    if tool is None:
        return "needs CIAO's chandra_repro on PATH"
    if Path(tool).parent.resolve() == STANDINS.resolve():
        return "chandra_repro on PATH is the test stand-in"
    if not os.environ.get("CALDB"):
        return "needs CALDB set (CIAO's calibration database)"
    return None


@pytest.mark.ciao
@pytest.mark.slow
@pytest.mark.skipif(_real_ciao() is not None, reason=_real_ciao() or "")
def test_real_ciao_on_one_public_observation(tmp_path):
    """Downloads and processes one public ACIS-I observation with the real tools.

    The observation is $HPCXT_CIAO_TEST_OBSID (default 3233, an ACIS-I
    observation of Abell 115, a cluster ClusterPyXT was run on). Takes tens
    of minutes and needs the network.
    """
    obsid = os.environ.get("HPCXT_CIAO_TEST_OBSID", "3233")
    cfg_path = write_config(tmp_path, obsids=(obsid,), crop=False, point_sources=False,
                            deflare={}, download_timeout=3600)
    with pytest.raises(InputError, match="need a region"):
        _prepare(cfg_path)
    work = (tmp_path / "work").resolve()
    repro = read_stage_record(work / "obs" / obsid)["repro"]["outputs"]
    # chandra_repro's own list: a corrected aspect file replaces the archive's
    asol = [Path(a) for a in repro["asol"]]
    assert asol and all(a.exists() for a in asol)
    if any(a.name.endswith("_repro_asol1.fits") for a in asol):
        assert len(asol) == 1
    evt2 = repro["evt2"]
    with fits.open(evt2) as hdul:
        ra, dec = hdul["EVENTS"].header["RA_NOM"], hdul["EVENTS"].header["DEC_NOM"]
    region = tmp_path / "crop_fk5.reg"
    region.write_text(f"# Region file format: DS9\nfk5\ncircle({ra},{dec},120\")\n")
    text = cfg_path.read_text().replace("backend: ciao",
                                        f"backend: ciao\n  crop_region: {region}")
    cfg_path.write_text(text)
    out = _prepare(cfg_path)
    assert done_stages(work / "obs" / obsid) == list(ciao.STAGES)
    for key in ("events", "background", "exposure_map", "arf", "rmf"):
        assert Path(out[0][key]).stat().st_size > 0
