"""Bad input costs one line and exit status 2, never a traceback (issue 11).

- A truncation sweep: every kind of input file, cut inside a header, inside
  the data and at a block boundary, through the reader that prep, the scale
  map, the fit or the maps use; the command line for a FITS file and for
  results.h5.
- Cross-checks at prep between files that are each fine alone.
- An unwritable work directory; non-ASCII text in FITS headers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from astropy.io import fits

from conftest import run_hpcxt
from fit_fixtures import make_fit_workdir
from hpcxt.stages.prep import run_prep
from hpcxt.errors import InputError
from hpcxt.io.bundle import read_bundle
from hpcxt.io.checkpoint import FitResults, read_results, write_results
from hpcxt.io.config import load_config
from hpcxt.io.fitsio import (FITS_BLOCK, ascii_text, read_events, read_image, write_image)
from hpcxt.io.regions_table import read_regions
from hpcxt.io.workdir import WorkDir
from hpcxt.prep.checks import check_pi_range
from hpcxt.prep.regionfile import read_region_file
from hpcxt.prep.response import acis_i_response, read_response, write_arf, write_rmf


def assert_one_line_error(proc, *needles):
    """Exit 2, exactly one ``hpcxt: error:`` line holding every needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hpcxt: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def copy_sim(simulated_small, tmp_path) -> Path:
    dst = tmp_path / "sim"
    shutil.copytree(simulated_small, dst, ignore=shutil.ignore_patterns("work"))
    return dst / "config.yaml"


def cut(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


# --------------------------------------------------------------------------
# truncation sweep


def fits_cuts(path: Path) -> dict[str, int]:
    """Offsets that cut a FITS file in each kind of place."""
    size = path.stat().st_size
    with fits.open(path) as hdul:
        infos = [hdul.fileinfo(i) for i in range(len(hdul))]
    big = max(infos, key=lambda info: info["datSpan"])  # the events, the image, the matrix
    data_lo, data_hi = big["datLoc"], big["datLoc"] + big["datSpan"]
    cuts = {
        "inside the primary header": 100,
        "at the end of the first header block": FITS_BLOCK,
        "inside the header of the largest HDU": big["hdrLoc"] + 400,
        "at the start of the data": data_lo,
        "inside the data": (data_lo + data_hi) // 2 + 7,
        "at a block boundary inside the data":
            data_lo + FITS_BLOCK * max(1, (data_hi - data_lo) // FITS_BLOCK // 2),
        "one block before the end": size - FITS_BLOCK,
    }
    return {k: v for k, v in cuts.items() if 0 < v < size}


@pytest.fixture(scope="module")
def fits_readers(simulated_small):
    obs = simulated_small / "obs1001"
    arf, rmf = obs / "acisf1001.arf", obs / "acisf1001.rmf"
    return {
        "events": (obs / "acisf1001_repro_evt2.fits", read_events),
        "background events": (obs / "acisf1001_bkg_evt2.fits",
                              lambda p: read_events(p, need_time=False)),
        "exposure map": (obs / "acisf1001_expmap.fits", read_image),
        "ARF": (arf, lambda p: read_response(p, rmf)),
        "RMF": (rmf, lambda p: read_response(arf, p)),
    }


@pytest.mark.parametrize("kind", ["events", "background events", "exposure map", "ARF", "RMF"])
def test_truncated_fits_inputs_are_one_input_error(fits_readers, tmp_path, kind):
    src, reader = fits_readers[kind]
    cuts = fits_cuts(src)
    assert len(cuts) >= 6
    for where, size in {"empty": 0, **cuts}.items():
        bad = cut(src, tmp_path / src.name, size)
        with pytest.raises(InputError) as exc:
            reader(bad)
        text = str(exc.value)
        assert str(bad) in text and "\n" not in text, (where, text)
        if size == 0:
            assert "empty" in text
        else:
            # Cut right after the primary header, the file is a valid FITS file
            # of one HDU: the message says so and suggests truncation.
            assert "truncated" in text, (where, size, text)
    # Only the padding of the last block missing: the data are whole and read.
    reader(cut(src, tmp_path / src.name, src.stat().st_size - 1))


def test_fits_cut_inside_a_header_is_not_called_a_missing_extension(fits_readers, tmp_path):
    src, reader = fits_readers["RMF"]
    with fits.open(src) as hdul:
        ebounds = hdul.fileinfo(2)["hdrLoc"]
    with pytest.raises(InputError) as exc:
        reader(cut(src, tmp_path / src.name, ebounds + 200))
    assert "truncated or corrupt FITS file" in str(exc.value)
    assert "no EBOUNDS" not in str(exc.value)


def test_not_fits_at_all(tmp_path):
    junk = tmp_path / "evt.fits"
    junk.write_text("this is a text file\n")
    with pytest.raises(InputError, match="not a readable FITS file"):
        read_events(junk)
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)


@pytest.mark.parametrize("name", ["crop.reg", "sources.reg"])
def test_truncated_region_files(simulated_small, tmp_path, name):
    src = simulated_small / "regions" / name
    text = src.read_text()
    shape_lines = [ln for ln in text.splitlines() if "(" in ln]
    assert shape_lines
    for size in range(len(text)):
        bad = tmp_path / name
        bad.write_text(text[:size])
        try:
            read_region_file(bad, "prep.crop_region")
        except InputError as exc:
            assert str(bad) in str(exc) and "prep.crop_region" in str(exc)
            continue
        # What parses is a file cut between lines: whole shapes only.
        kept = bad.read_text()
        assert kept.count("(") == kept.count(")")
    # Cut inside a shape, the region is refused rather than read with a wrong size
    # ("circle(165.0,40.0,4" would be a 4-degree circle).
    line = shape_lines[0]
    bad.write_text(text[:text.index(line) + len(line) - 3])
    with pytest.raises(InputError, match="cut off"):
        read_region_file(bad, "prep.point_sources")


def test_truncated_config(simulated_small, tmp_path):
    cfg = copy_sim(simulated_small, tmp_path)
    text = cfg.read_text()
    outcomes = {"ok": 0, "error": 0}
    for size in range(0, len(text), 11):
        bad = cfg.with_name("cut.yaml")
        bad.write_text(text[:size])
        try:
            load_config(bad)
            outcomes["ok"] += 1
        except InputError as exc:
            assert str(exc).startswith(str(bad)), str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > outcomes["ok"] > 0
    # A path cut to its folder is refused, not taken for a file.
    bad.write_text(text.replace("obs1002/acisf1002_bkg_evt2.fits", "obs1002/"))
    with pytest.raises(InputError, match="is a folder, not a file"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe\x00 binary")
    with pytest.raises(InputError, match="not UTF-8"):
        load_config(bad)


@pytest.fixture(scope="module")
def own_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_h5")
    make_fit_workdir(root, n_side=2)
    results = write_results(root / "work" / "fit" / "results.h5",
                            FitResults.new(4, ["1000", "1001"], {"fit": {"kT_init": 8.0}}))
    return {"bundle.h5": (root / "work" / "prep" / "bundle.h5", read_bundle),
            "regions.h5": (root / "work" / "acb" / "regions.h5", read_regions),
            "results.h5": (results, read_results)}


@pytest.mark.parametrize("name", ["bundle.h5", "regions.h5", "results.h5"])
def test_truncated_hdf5_files(own_files, tmp_path, name):
    src, reader = own_files[name]
    reader(src)
    size = src.stat().st_size
    for at in (0, 8, 100, 512, FITS_BLOCK, 4096, size // 2, size - 100, size - 1):
        bad = cut(src, tmp_path / name, at)
        with pytest.raises(InputError) as exc:
            reader(bad)
        text = str(exc.value)
        assert text.startswith(f"{bad}: not a readable HDF5 "), text
        assert ("not an HDF5 file" if at == 0 else "truncated or corrupt") in text, (at, text)


def test_truncated_results_through_the_command_line(own_files, tmp_path):
    results, _ = own_files["results.h5"]
    work = tmp_path / "w"
    shutil.copytree(results.parents[2], work)
    bad = work / "work" / "fit" / "results.h5"
    bad.write_bytes(results.read_bytes()[:results.stat().st_size // 2])
    proc = run_hpcxt("status", work / "config.yaml", timeout=120)
    assert_one_line_error(proc, str(bad), "not a readable HDF5 fit results: truncated or corrupt")


def test_truncated_inputs_through_the_command_line(simulated_small, tmp_path):
    cfg = copy_sim(simulated_small, tmp_path)
    evt = cfg.parent / "obs1002" / "acisf1002_repro_evt2.fits"
    data = evt.read_bytes()
    evt.write_bytes(data[:len(data) // 2])
    proc = run_hpcxt("prep", cfg, timeout=120)
    assert_one_line_error(proc, str(evt), "truncated or corrupt FITS file")
    assert not (cfg.parent / "work" / "prep" / "stages.json").exists()


# --------------------------------------------------------------------------
# cross-checks between inputs


def test_rmf_with_other_channels_than_the_events_is_refused(simulated_small, tmp_path):
    cfg = copy_sim(simulated_small, tmp_path)
    obs = cfg.parent / "obs1001"
    write_rmf(obs / "acisf1001.rmf", acis_i_response(n_channels=512))
    proc = run_hpcxt("prep", cfg, timeout=120)
    line = assert_one_line_error(proc, str(obs / "acisf1001.rmf"),
                                 str(obs / "acisf1001_repro_evt2.fits"),
                                 "RMF channels 1-512", "PI channels 1-1024")
    assert "DETCHANS" in line
    # Refused before any stage wrote anything.
    assert not (cfg.parent / "work" / "prep").exists()


def test_pi_values_outside_the_rmf_are_refused_without_tlmin():
    resp = acis_i_response(n_channels=512)
    check_pi_range(None, resp, "evt.fits", "r.rmf", pi=np.array([1, 200, 512]))
    with pytest.raises(InputError, match="do not hold the events' PI values 1-700"):
        check_pi_range(None, resp, "evt.fits", "r.rmf", pi=np.array([1, 700]))
    with pytest.raises(InputError, match="RMF channels 1-512"):
        check_pi_range((1, 1024), resp, "evt.fits", "r.rmf")
    with pytest.raises(InputError, match="RMF channels 1-512 .* PI channels 0-511"):
        check_pi_range((0, 511), resp, "evt.fits", "r.rmf")


def test_arf_on_another_energy_grid_is_refused(simulated_small, tmp_path):
    cfg = copy_sim(simulated_small, tmp_path)
    arf = cfg.parent / "obs1002" / "acisf1002.arf"
    write_arf(arf, acis_i_response(n_energy=500))
    with pytest.raises(InputError) as exc:
        run_prep(load_config(cfg))
    assert str(arf) in str(exc.value) and str(arf.with_suffix(".rmf")) in str(exc.value)
    assert not (cfg.parent / "work" / "prep").exists()


def test_exposure_map_of_another_pointing_is_refused(simulated_small, tmp_path):
    cfg = copy_sim(simulated_small, tmp_path)
    expmap = cfg.parent / "obs1002" / "acisf1002_expmap.fits"
    with fits.open(expmap) as hdul:
        hdul[0].header["CRVAL2"] += 0.3  # 18 arcmin north
        hdul.writeto(expmap, overwrite=True)
    with pytest.raises(InputError) as exc:
        run_prep(load_config(cfg))
    text = str(exc.value)
    assert text.startswith(str(expmap)) and "acisf1002_repro_evt2.fits" in text
    assert "covers only" in text
    assert not (cfg.parent / "work" / "prep" / "bundle.h5").exists()


def test_events_without_energy_are_refused(simulated_small, tmp_path):
    cfg = copy_sim(simulated_small, tmp_path)
    evt = cfg.parent / "obs1001" / "acisf1001_bkg_evt2.fits"
    with fits.open(evt) as hdul:
        cols = fits.ColDefs([c for c in hdul["EVENTS"].columns if c.name.lower() != "energy"])
        table = fits.BinTableHDU.from_columns(cols, header=hdul["EVENTS"].header)
        fits.HDUList([hdul[0].copy(), table] + [h.copy() for h in hdul[2:]]).writeto(
            evt, overwrite=True)
    with pytest.raises(InputError) as exc:
        run_prep(load_config(cfg))
    assert str(exc.value).startswith(f"{evt}: energy: EVENTS table has no 'energy' column")
    assert "chandra_repro" in str(exc.value)


# --------------------------------------------------------------------------
# outputs: the work directory, FITS header text


def _refuses_new_files(folder: Path) -> bool:
    probe = folder / f".hpcxt-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:
        return folder.is_dir()
    probe.unlink()
    return False


def test_unwritable_work_directories(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = {a_file: "is a file, not a folder",
             Path("/proc/hpcxt-work"): "cannot create the work directory",
             Path("/proc/self/hpcxt-work"): "cannot create the work directory"}
    if _refuses_new_files(Path("/sys")):
        cases[Path("/sys")] = "not writable"  # sysfs refuses new files, even to root
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases[ro] = "not writable"
    for root, message in cases.items():
        with pytest.raises(InputError, match=message) as exc:
            WorkDir(root).check_writable()
        assert str(exc.value).startswith(f"{root}: workdir: ")
    WorkDir(tmp_path / "new" / "work").check_writable()
    assert (tmp_path / "new" / "work").is_dir()
    assert list((tmp_path / "new" / "work").iterdir()) == []


def test_work_directory_in_proc_is_one_line_before_prep(simulated_small, tmp_path):
    cfg = copy_sim(simulated_small, tmp_path)
    cfg.write_text(cfg.read_text().replace("workdir: work", "workdir: /proc/hpcxt/work"))
    proc = run_hpcxt("prep", cfg, timeout=120)
    assert_one_line_error(proc, "/proc/hpcxt/work: workdir: cannot create the work directory")
    assert "clean" not in proc.stderr  # no stage started


@pytest.mark.mpi
def test_run_passes_on_the_failed_stage_status(prepped_small, tmp_path):
    """A scale-map refusal under ``hpcxt run`` is the stage's one line and exit 2.

    The scale map runs under run's lock (it would otherwise be refused for
    the lock, not for the target S/N).
    """
    dst = tmp_path / "sim"
    shutil.copytree(prepped_small.parent, dst, ignore=shutil.ignore_patterns("acb", "fit", "maps"))
    cfg = dst / "config.yaml"
    cfg.write_text(cfg.read_text().replace("target_sn: 25.0", "target_sn: 1.0e+6"))
    proc = run_hpcxt("run", cfg, "--np", "1", timeout=300)
    assert_one_line_error(proc, "acb.target_sn", "no pixel reaches S/N 1e+06")
    assert "scalemap exited with status 2" in proc.stderr
    assert not (dst / "work" / ".hpcxt.lock").exists()


def test_fits_header_text_is_ascii_and_keeps_the_original(tmp_path):
    from hpcxt.io.bundle import ImageGrid

    assert ascii_text("Münch") == "Munch"
    assert ascii_text("Abell\t2142\n") == "Abell 2142 "
    assert ascii_text("東京") == "??"
    header = ImageGrid(shape=(3, 4), x0=0.5, y0=0.5, bin=4).header()
    path = write_image(tmp_path / "t.fits", np.ones((3, 4)), header, "keV",
                       {"OBJECT": "Münch", "COMMENT": "kT of Münch", "ORIGIN": "hpcxt",
                        "CLUSTER": ("東京 cluster", "naïve comment")})
    h = fits.getheader(path)
    assert h["OBJECT"] == "Munch" and h["ORIGIN"] == "hpcxt"
    assert h["CLUSTER"] == "?? cluster" and h.comments["CLUSTER"] == "naive comment"
    comments = [str(c) for c in h["COMMENT"]]
    assert "kT of Munch" in comments
    kept = {c.split(" in UTF-8")[0]: unquote(c.split("percent-escaped: ")[1])
            for c in comments if "percent-escaped" in c}
    assert kept == {"OBJECT": "Münch", "COMMENT": "kT of Münch", "CLUSTER": "東京 cluster"}
    assert [p.name for p in tmp_path.iterdir()] == ["t.fits"]  # no temporary file left
