"""``hpcxt scalemap`` under MPI: same files on 1, 2 and 3 ranks, errors end the job.

The bundle is synthetic (a beta-model cluster with Poisson counts, a flat
scaled background, point-source holes in the mask and two observations with
different fields), written with ``write_bundle`` so the test needs neither
the simulator nor prep.
"""

from __future__ import annotations

import math
import shutil
import time
from fractions import Fraction

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from conftest import run_hpcxt
from hpcxt import acb
from hpcxt.acb_mpi import compute_scalemap
from hpcxt.stages.scalemap import run_scalemap, scalemap_paths
from hpcxt.errors import InputError
from hpcxt.io.bundle import Bundle, ImageGrid, ObsData, Response, write_bundle
from hpcxt.io.config import dump_config, load_config
from hpcxt.io.regions_table import OBS_FIELDS, ROW_FIELDS, read_regions

SHAPE = (40, 48)
CENTRE = (17.3, 25.6)   # row, col of the cluster centre
EXPOSURES = (40e3, 25e3)  # s


def _wcs_header(shape) -> str:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.2]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    w.wcs.cdelt = [-1.968 / 3600, 1.968 / 3600]
    return w.to_header().tostring(sep="\n")


def _response() -> Response:
    e = np.linspace(0.3, 11.0, 9)
    return Response(arf_energ_lo=e[:-1], arf_energ_hi=e[1:], specresp=np.full(8, 300.0),
                    rmf_energ_lo=e[:-1], rmf_energ_hi=e[1:], rmf_matrix=np.eye(8),
                    e_min=e[:-1], e_max=e[1:], offset=1)


def _events() -> dict:
    return {"x": np.zeros(0), "y": np.zeros(0), "pi": np.zeros(0, np.int32),
            "energy": np.zeros(0, np.float32)}


def synthetic_bundle(seed: int = 1, has_background: bool = True) -> Bundle:
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    yy, xx = np.mgrid[0:ny, 0:nx]
    r2 = (yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2
    bkg_rate = 0.15 if has_background else 0.0
    rate = 60.0 * (1.0 + r2 / 16.0) ** -1.5 + 0.6 + bkg_rate
    counts = rng.poisson(rate).astype(np.float64)
    background = np.full(SHAPE, bkg_rate * 0.97)  # scaled: not integer-valued
    crop = ~((yy > 33) & (xx < 8))                 # a cut corner
    sources = ((yy - 8) ** 2 + (xx - 38) ** 2 <= 4) | ((yy - 30) ** 2 + (xx - 12) ** 2 <= 2)
    counts[sources] += rng.poisson(50.0, SHAPE)[sources]  # point sources, masked out
    fov1 = (xx < 34) & crop & ~sources
    fov2 = (xx >= 14) & crop & ~sources
    mask = fov1 | fov2
    observations = []
    for n, (fov, t) in enumerate(zip((fov1, fov2), EXPOSURES)):
        expmap = (300.0 * t * (1.0 - 0.004 * np.abs(xx - 20 - 8 * n))).astype(np.float32)
        expmap[~fov] = 0.0
        observations.append(ObsData(
            obsid=f"10{n + 1:02d}", exposure=t, bkg_exposure=4 * t, bkg_scale=0.25,
            events=_events(), bkg_events=_events() if has_background else None,
            exposure_map=expmap, fov=fov, response=_response()))
    grid = ImageGrid(shape=SHAPE, x0=3700.5, y0=3900.5, bin=4, wcs_header=_wcs_header(SHAPE))
    return Bundle(grid=grid, counts=counts, background=background,
                  exposure=sum(o.exposure_map.astype(np.float64) for o in observations),
                  mask=mask, observations=observations, config_hash=f"synthetic-{seed}",
                  has_background=has_background)


def make_workdir(root, name="run", acb_cfg=None, resolution="high", bundle=None):
    """config.yaml + <workdir>/prep/bundle.h5 in ``root/name``; returns the config path."""
    folder = root / name
    work = folder / "work"
    write_bundle(work / "prep" / "bundle.h5", bundle or synthetic_bundle())
    data = {
        "cluster": {"name": "synthetic", "redshift": 0.1, "nh": 0.03},
        "workdir": "work",
        "observations": [{"obsid": "1001"}, {"obsid": "1002"}],
        "acb": {"target_sn": 12.0, "max_radius": 15.0, **(acb_cfg or {})},
        "fit": {"resolution": resolution, "model": "xsphabs*xsbremss"},
    }
    path = folder / "config.yaml"
    path.write_text(dump_config(data))
    return path


def _outputs(config):
    cfg = load_config(config, check_files=False)
    return scalemap_paths(cfg)


def _read_outputs(config):
    fits_path, regions_path = _outputs(config)
    with fits.open(fits_path) as hdul:
        data = hdul[0].data.copy()
        header = hdul[0].header.copy()
    table = read_regions(regions_path)
    return data, header, table


def _same_outputs(a, b):
    da, ha, ta = _read_outputs(a)
    db, hb, tb = _read_outputs(b)
    assert da.dtype == db.dtype and da.tobytes() == db.tobytes()
    assert ha == hb
    for name in ROW_FIELDS + OBS_FIELDS:
        x, y = getattr(ta, name), getattr(tb, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
    assert ta.content_hash() == tb.content_hash()
    assert (ta.config_hash, ta.bundle_hash, ta.obsids) == (tb.config_hash, tb.bundle_hash,
                                                           tb.obsids)
    for fa, fb in zip(_outputs(a), _outputs(b)):
        assert fa.read_bytes() == fb.read_bytes(), fa.name


@pytest.fixture(scope="module")
def single_rank_run(tmp_path_factory):
    """The reference: ``hpcxt scalemap`` with no launcher (one rank)."""
    root = tmp_path_factory.mktemp("acb_ref")
    config = make_workdir(root)
    proc = run_hpcxt("scalemap", config, timeout=120, check=True)
    return config, proc


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 3])
def test_scalemap_identical_on_1_2_3_ranks(tmp_path, single_rank_run, nprocs):
    ref, _ = single_rank_run
    config = make_workdir(tmp_path)
    proc = run_hpcxt("scalemap", config, nprocs=nprocs, timeout=180, check=True)
    _same_outputs(ref, config)
    # the tiles really were spread: every rank solved some
    line = next(ln for ln in proc.stderr.splitlines() if "tiles, per rank" in ln)
    per_rank = line.split("tiles, per rank ")[1].split(";")[0].split(", ")
    assert len(per_rank) == nprocs and all(int(n) > 0 for n in per_rank), line


def test_rerun_is_up_to_date_and_a_changed_target_recomputes(tmp_path, single_rank_run):
    ref, _ = single_rank_run
    config = make_workdir(tmp_path)
    first = run_hpcxt("scalemap", config, timeout=120, check=True)
    assert "up to date" not in first.stderr
    fits_path, regions_path = _outputs(config)
    stamps = (fits_path.stat().st_mtime_ns, regions_path.stat().st_mtime_ns)
    again = run_hpcxt("scalemap", config, timeout=120, check=True)
    assert "up to date" in again.stderr
    assert (fits_path.stat().st_mtime_ns, regions_path.stat().st_mtime_ns) == stamps
    _same_outputs(ref, config)  # and a fresh run gave the same files
    text = config.read_text().replace("target_sn: 12.0", "target_sn: 10.0")
    config.write_text(text)
    third = run_hpcxt("scalemap", config, timeout=120, check=True)
    assert "up to date" not in third.stderr
    _, header, table = _read_outputs(config)
    assert header["TARGETSN"] == 10.0 and table.target_sn == 10.0


def test_scalemap_files_and_region_table(single_rank_run):
    config, proc = single_rank_run
    bundle = synthetic_bundle()
    radius, header, table = _read_outputs(config)
    cfg = load_config(config, check_files=False)
    params = acb.ScaleMapParams(target_sn=12.0, max_radius=15.0, radius_step=0.125,
                                mode="background_subtracted")
    want = acb.scale_map(bundle.counts, bundle.background, bundle.mask, params)
    assert radius.dtype.kind == "f" and radius.dtype.itemsize == 8 and radius.shape == SHAPE
    np.testing.assert_array_equal(radius, want)
    assert np.isnan(radius[~bundle.mask]).all()
    assert header["BUNIT"] == "pixel" and header["SNMODE"] == "background_subtracted"
    assert header["TARGETSN"] == 12.0 and header["CTYPE1"] == "RA---TAN"
    assert "radius min" in proc.stderr and "regions:" in proc.stderr
    # region table: every mapped pixel with a radius, row-major ids
    has = bundle.mask & np.isfinite(radius)
    assert len(table) == has.sum()
    np.testing.assert_array_equal(table.region_id, np.arange(len(table)))
    np.testing.assert_array_equal(table.row * SHAPE[1] + table.col, np.flatnonzero(has))
    np.testing.assert_array_equal(table.radius, radius[table.row, table.col])
    np.testing.assert_array_equal(table.radius_sky, table.radius * 4)
    x, y = bundle.grid.pixel_to_sky(table.row, table.col)
    np.testing.assert_array_equal(table.x, x)
    np.testing.assert_array_equal(table.y, y)
    assert table.obsids == ["1001", "1002"] and table.step == 1
    assert table.bundle_hash == "synthetic-1"
    # per observation: coverage of the circle, its exposure, used flags
    ii, jj = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    for n in range(0, len(table), 7):
        r = Fraction(float(table.radius[n]))
        circle = ((ii - table.row[n]) ** 2 + (jj - table.col[n]) ** 2
                  <= math.floor(r * r)) & bundle.mask
        for o, obs in enumerate(bundle.observations):
            inside = circle & obs.fov
            assert table.fraction[n, o] == inside.sum() / circle.sum()
            mean = obs.exposure_map[inside].astype(np.float64).mean() if inside.any() else 0.0
            assert table.effective_exposure[n, o] == pytest.approx(mean, rel=1e-12, abs=0)
    # exposure time: EXPOSURE x fraction x (map over the circle / the map's on-axis value)
    refs = np.array([np.percentile(o.exposure_map[o.fov], 99.9) for o in bundle.observations])
    np.testing.assert_allclose(table.exposure_time,
                               table.fraction * table.effective_exposure
                               * (np.array(EXPOSURES) / refs)[None, :], rtol=1e-12)
    assert np.all(table.exposure_time <= np.array(EXPOSURES)[None, :] * 1.001)
    np.testing.assert_array_equal(table.used, table.fraction >= cfg.fit.min_obs_fraction)
    assert table.used[:, 0].any() and not table.used[:, 0].all()
    assert table.used[:, 1].any() and not table.used[:, 1].all()
    assert table.used.any(axis=1).all()


def test_cluster_scalemap_small_in_core_large_outside_and_circles_reach_target(tmp_path):
    """On the synthetic cluster (the simulated+prepped one is not in conftest yet)."""
    from mpi4py import MPI

    config = make_workdir(tmp_path, resolution="medium")
    cfg = load_config(config, check_files=False)
    run_scalemap(cfg, MPI.COMM_SELF)
    radius, _, table = _read_outputs(config)
    bundle = synthetic_bundle()
    ii, jj = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    dist = np.hypot(ii - CENTRE[0], jj - CENTRE[1])
    core = np.nanmedian(radius[(dist < 4) & bundle.mask])
    outskirts = np.nanmedian(radius[(dist > 16) & bundle.mask])
    assert core < 2.0 < 3 * core < outskirts
    assert np.isfinite(radius[bundle.mask]).mean() > 0.9
    # medium resolution: every 3rd row and column
    assert table.step == 3 and np.all(table.row % 3 == 0) and np.all(table.col % 3 == 0)
    # every region's circle reaches the target, the next smaller radius does not
    c = np.where(bundle.mask, bundle.counts, 0.0)
    b = np.where(bundle.mask, bundle.background, 0.0)

    def sn(row, col, r):
        rr = Fraction(float(r))
        inside = (ii - row) ** 2 + (jj - col) ** 2 <= math.floor(rr * rr)
        cs, bs = math.fsum(c[inside].tolist()), math.fsum(b[inside].tolist())
        return (cs - bs) / math.sqrt(cs + bs)

    for row, col, r in zip(table.row, table.col, table.radius):
        assert sn(row, col, r) >= 12.0
        if r > 0.125:
            assert sn(row, col, r - 0.125) < 12.0  # the next smaller radius falls short
    assert len(table) > 100


def test_compute_scalemap_on_comm_self_equals_kernel():
    from mpi4py import MPI

    bundle = synthetic_bundle(seed=3, has_background=False)
    params = acb.ScaleMapParams(target_sn=10.0, max_radius=12.0, mode="counts")
    got = compute_scalemap(bundle.counts, None, bundle.mask, params, MPI.COMM_SELF,
                           tile_size=16)
    want = acb.scale_map(bundle.counts, None, bundle.mask, params, tile_size=64)
    np.testing.assert_array_equal(got, want)


@pytest.mark.mpi
def test_a_failing_rank_ends_the_job_quickly(tmp_path):
    config = make_workdir(tmp_path)
    t0 = time.monotonic()
    proc = run_hpcxt("scalemap", config, nprocs=3, timeout=60, faults={"fail_rank": 1})
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert "fails on purpose" in proc.stderr
    fits_path, regions_path = _outputs(config)
    assert not fits_path.exists() and not regions_path.exists()


@pytest.mark.mpi
def test_missing_bundle_is_a_one_line_error_on_every_rank(tmp_path):
    config = make_workdir(tmp_path)
    shutil.rmtree(config.parent / "work" / "prep")
    proc = run_hpcxt("scalemap", config, nprocs=2, timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hpcxt: error:")]
    assert lines and all("bundle.h5" in ln and "run 'hpcxt prep' first" in ln for ln in lines)
    assert "Traceback" not in proc.stderr


def test_unreachable_target_names_acb_target_sn(tmp_path):
    config = make_workdir(tmp_path, acb_cfg={"target_sn": 1e5})
    proc = run_hpcxt("scalemap", config, timeout=60)
    assert proc.returncode == 2
    assert "hpcxt: error:" in proc.stderr and "acb.target_sn" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_background_subtracted_without_background_is_refused(tmp_path):
    from mpi4py import MPI

    config = make_workdir(tmp_path, acb_cfg={"sn": "background_subtracted"},
                          bundle=synthetic_bundle(has_background=False))
    cfg = load_config(config, check_files=False)
    with pytest.raises(InputError, match="acb.sn"):
        run_scalemap(cfg, MPI.COMM_SELF)
    # auto falls back to sqrt(C) without a background
    config = make_workdir(tmp_path, name="auto", bundle=synthetic_bundle(has_background=False))
    run_scalemap(load_config(config, check_files=False), MPI.COMM_SELF)
    _, header, _ = _read_outputs(config)
    assert header["SNMODE"] == "counts"


@pytest.mark.mpi
@pytest.mark.slow
def test_simulated_cluster_small_core_large_outskirts_every_circle_reaches_target(
        prepped_small):
    """The simulated + prepped small cluster, scale map on 2 ranks."""
    import yaml

    from hpcxt.io.bundle import read_bundle

    proc = run_hpcxt("scalemap", prepped_small, nprocs=2, timeout=300, check=True)
    cfg = load_config(prepped_small, check_files=False)
    target = float(cfg.acb.target_sn)
    step = float(cfg.acb.radius_step)
    bundle = read_bundle(cfg.stage_dir("prep") / "bundle.h5", load_events=False)
    radius, header, table = _read_outputs(prepped_small)
    assert "regions:" in proc.stderr or "up to date" in proc.stderr
    assert header["SNMODE"] == ("background_subtracted" if bundle.has_background else "counts")
    truth = yaml.safe_load((prepped_small.parent / "truth" / "truth.yaml").read_text())
    col0, row0 = bundle.grid.wcs().world_to_pixel_values(truth["cluster"]["ra"],
                                                         truth["cluster"]["dec"])
    ii, jj = np.mgrid[0:radius.shape[0], 0:radius.shape[1]]
    dist = np.hypot(ii - row0, jj - col0)
    mapped = bundle.mask & np.isfinite(radius)
    core = np.median(radius[mapped & (dist < 5)])
    outskirts = np.median(radius[mapped & (dist > 25)])
    assert 2 * core < outskirts, (core, outskirts)
    # counts in every region's circle reach the target; one step less does not
    c = np.where(bundle.mask, bundle.counts, 0.0)
    b = np.where(bundle.mask, bundle.background, 0.0)

    def sn(row, col, r):
        rr = Fraction(float(r))
        inside = (ii - row) ** 2 + (jj - col) ** 2 <= math.floor(rr * rr)
        cs = math.fsum(c[inside].tolist())
        if header["SNMODE"] == "counts":
            return math.sqrt(cs)
        bs = math.fsum(b[inside].tolist())
        return (cs - bs) / math.sqrt(cs + bs)

    assert len(table) > 50
    for row, col, r in zip(table.row, table.col, table.radius):
        assert sn(row, col, r) >= target
        if r > step:
            assert sn(row, col, r - step) < target
