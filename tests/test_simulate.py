"""The synthetic Chandra observation simulator (small preset)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from conftest import run_hpcxt
from hpcxt.errors import InputError
from hpcxt.io.config import load_config
from hpcxt.prep import simulate as sim
from hpcxt.prep.response import read_response

EVENT_COLUMNS = {"time": "s", "ccd_id": None, "node_id": None, "chipx": "pixel",
                 "chipy": "pixel", "x": "pixel", "y": "pixel", "energy": "eV", "pi": "chan",
                 "grade": None, "status": None}
EVENT_KEYS = ("TELESCOP", "INSTRUME", "DETNAM", "OBS_ID", "OBJECT", "EXPOSURE", "LIVETIME",
              "ONTIME", "TSTART", "TSTOP", "RA_NOM", "DEC_NOM", "ROLL_NOM", "RA_PNT",
              "DEC_PNT", "DATAMODE", "HDUCLASS", "HDUCLAS1", "HDUCLAS2", "MJDREF", "TIMESYS",
              "TIMEUNIT", "HDUNAME")


@pytest.fixture(scope="module")
def sim_dir(simulated_small):
    """The small preset, seed 1 (conftest's session fixture)."""
    return simulated_small


@pytest.fixture(scope="module")
def truth(sim_dir):
    return yaml.safe_load((sim_dir / "truth" / "truth.yaml").read_text())


def _events(path, ext="EVENTS"):
    with fits.open(path) as hdul:
        return hdul[ext].data.copy(), hdul[ext].header.copy(), [h.header.copy() for h in hdul]


def _evt_path(d, obsid, kind="repro_evt2"):
    return d / f"obs{obsid}" / f"acisf{obsid}_{kind}.fits"


def _column_wcs(header, data_names):
    """The sky WCS of an event file's x/y columns (1-based sky pixels)."""
    ix = [n.lower() for n in data_names].index("x") + 1
    iy = [n.lower() for n in data_names].index("y") + 1
    w = WCS(naxis=2)
    w.wcs.ctype = [header[f"TCTYP{ix}"], header[f"TCTYP{iy}"]]
    w.wcs.crpix = [header[f"TCRPX{ix}"], header[f"TCRPX{iy}"]]
    w.wcs.crval = [header[f"TCRVL{ix}"], header[f"TCRVL{iy}"]]
    w.wcs.cdelt = [header[f"TCDLT{ix}"], header[f"TCDLT{iy}"]]
    return w


def _zone_of_events(d, ev, header):
    """Truth zone (0-3) under each event, through both files' WCS."""
    with fits.open(d / "truth" / "zones.fits") as hdul:
        zones = hdul[0].data.copy()
        zw = WCS(hdul[0].header)
    ra, dec = _column_wcs(header, ev.names).wcs_pix2world(ev["x"], ev["y"], 1)
    col, row = zw.wcs_world2pix(ra, dec, 0)
    col, row = np.round(col).astype(int), np.round(row).astype(int)
    ok = (col >= 0) & (row >= 0) & (col < zones.shape[1]) & (row < zones.shape[0])
    out = np.zeros(len(ev), dtype=int)
    out[ok] = zones[row[ok], col[ok]]
    return out


# --------------------------------------------------------------------------
# kernels


def test_focal_plane_round_trip_and_chips():
    rng = np.random.default_rng(3)
    p, q = rng.uniform(-1100, 1100, 500), rng.uniform(-1100, 1100, 500)
    x, y = sim.focal_to_sky(p, q, (4100.0, 4090.0), 110.0, 3.0, -2.0)
    p2, q2 = sim.sky_to_focal(x, y, (4100.0, 4090.0), 110.0, 3.0, -2.0)
    np.testing.assert_allclose(p2, p, atol=1e-9)
    np.testing.assert_allclose(q2, q, atol=1e-9)
    ccd, cx, cy = sim.locate_on_chips(np.array([-500.0, 500.0, -500.0, 500.0, 0.0, 0.0]),
                                      np.array([500.0, 500.0, -500.0, -500.0, 0.0, 3000.0]),
                                      sim.ACIS_I)
    np.testing.assert_array_equal(ccd, [0, 1, 2, 3, -1, -1])  # the gap, then far off
    assert np.all((cx[:4] >= 0) & (cx[:4] < 1024) & (cy[:4] >= 0) & (cy[:4] < 1024))


def test_chip_coverage_under_dither():
    t = np.linspace(0, 20000, 4001)
    dx, dy = sim.dither_offset(t, 0.0)
    amp = sim.DITHER_AMPLITUDE
    p = np.array([-500.0, 0.0, 5000.0, sim.CHIP_ORIGINS[1][0] + 2.0])
    q = np.array([500.0, 500.0, 5000.0, 500.0])
    cover = sim.chip_coverage(p, q, dx, dy)
    assert cover[0] == 1.0 and cover[2] == 0.0
    # A sinusoidal dither of amplitude A spends 1 - (2/pi) asin(g/A) of the
    # time beyond +-g: the middle of the 20-pixel gap is on a chip that long.
    half_gap = sim.CHIP_GAP / 2
    assert cover[1] == pytest.approx(1 - 2 / np.pi * np.arcsin(half_gap / amp), abs=0.03)
    # 2 pixels inside a chip's edge: on it while the shift is below 2 pixels.
    assert cover[3] == pytest.approx(0.5 + np.arcsin(2.0 / amp) / np.pi, abs=0.03)


def test_temperature_levels_and_zones():
    P = sim.PRESETS["small"]
    levels = sim.temperature_levels()
    assert {3.0, 7.0, 12.0} <= set(levels.tolist())
    assert np.all(np.diff(levels) > 0)
    kT = sim.temperature_field(np.array([0.0, -120.0, P.shock_centre[0]]),
                               np.array([0.0, 0.0, P.shock_centre[1]]), P)
    np.testing.assert_allclose(levels[sim.quantise(kT, levels)], [3.0, 7.0, 12.0])
    r_in = P.core_radius - P.zone_margin
    r_out = P.core_radius + P.zone_margin
    # East of the centre (negative x), away from the shock on the west.
    x = -np.array([0.0, r_in - 0.5, r_in + 0.5, r_out - 0.5, r_out + 0.5])
    np.testing.assert_array_equal(sim.zone_interiors(x, np.zeros_like(x), P), [1, 1, 0, 0, 2])
    # The shock interior: the ellipse's inner part, margin kept on the minor axis.
    a = P.shock_axes[0]
    xs = P.shock_centre[0] + np.array([0.0, a - P.zone_margin - 0.5, a - P.zone_margin + 0.5])
    np.testing.assert_array_equal(sim.zone_interiors(xs, np.zeros(3), P), [3, 3, 0])


def test_unknown_preset_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown preset"):
        sim.simulate(tmp_path, preset="huge")


def test_presets_give_the_intended_number_of_regions():
    # Fit regions ~ crop in image pixels (bin 4 = 1.968") sampled every
    # 'step' pixels (low resolution: 5).
    step = {"high": 1, "medium": 3, "low": 5}
    for name, lo, hi in (("small", 100, 300), ("demo", 1500, 2500)):
        P = sim.PRESETS[name]
        nx = P.crop_size[0] / (sim.IMAGE_BIN * sim.SKY_PIXEL_ARCSEC)
        ny = P.crop_size[1] / (sim.IMAGE_BIN * sim.SKY_PIXEL_ARCSEC)
        s = step[P.resolution]
        assert lo <= math.ceil(nx / s) * math.ceil(ny / s) <= hi, name


# --------------------------------------------------------------------------
# the files


def test_event_files_look_like_chandra_evt2(sim_dir, truth):
    d = sim_dir
    crvals = []
    for obs in truth["observations"]:
        ev, h, headers = _events(_evt_path(d, obs["obsid"]))
        names = [n.lower() for n in ev.names]
        assert set(EVENT_COLUMNS) <= set(names)
        for col, unit in EVENT_COLUMNS.items():
            i = names.index(col) + 1
            if unit:
                assert h[f"TUNIT{i}"] == unit, col
        for key in EVENT_KEYS:
            assert key in h, key
        assert (h["TELESCOP"], h["INSTRUME"], h["DETNAM"]) == ("CHANDRA", "ACIS", "ACIS-0123")
        assert h["OBS_ID"] == obs["obsid"] and h["HDUCLAS1"] == "EVENTS"
        assert h["EXPOSURE"] == pytest.approx(obs["exposure"])
        ix, iy = names.index("x") + 1, names.index("y") + 1
        assert (h[f"TCTYP{ix}"], h[f"TCTYP{iy}"]) == ("RA---TAN", "DEC--TAN")
        assert h[f"TCRPX{ix}"] == h[f"TCRPX{iy}"] == 4096.5
        assert h[f"TCDLT{ix}"] == pytest.approx(-0.000136666667)
        assert h[f"TCDLT{iy}"] == pytest.approx(0.000136666667)
        assert h[f"TCUNI{ix}"] == "deg"
        assert (h[f"TLMIN{ix}"], h[f"TLMAX{ix}"]) == (0.5, 8192.5)
        assert (h[f"TCRVL{ix}"], h[f"TCRVL{iy}"]) == (h["RA_NOM"], h["DEC_NOM"])
        crvals.append((h[f"TCRVL{ix}"], h[f"TCRVL{iy}"]))
        gtis = [g for g in headers[2:] if g["EXTNAME"] == "GTI"]
        assert sorted(g["CCD_ID"] for g in gtis) == [0, 1, 2, 3]
        with fits.open(_evt_path(d, obs["obsid"])) as hdul:
            for hdu in hdul[2:]:
                assert hdu.columns.names == ["START", "STOP"]
                assert hdu.data["START"][0] == h["TSTART"] and hdu.data["STOP"][0] == h["TSTOP"]
    # Different tangent points: prep has to reproject.
    assert crvals[0] != crvals[1]
    ra_sep = (crvals[0][0] - crvals[1][0]) * np.cos(np.deg2rad(crvals[0][1])) * 3600
    dec_sep = (crvals[0][1] - crvals[1][1]) * 3600
    assert 60 <= math.hypot(ra_sep, dec_sep) <= 150  # arcsec


def test_events_land_on_chips_and_include_junk(sim_dir, truth):
    d = sim_dir
    for obs in truth["observations"]:
        ev, h, _ = _events(_evt_path(d, obs["obsid"]))
        assert set(np.unique(ev["ccd_id"])) == {0, 1, 2, 3, 6}
        assert 0 < np.count_nonzero(ev["ccd_id"] == 6) < 0.01 * len(ev)
        assert ev["chipx"].min() >= 1 and ev["chipx"].max() <= 1024
        assert ev["chipy"].min() >= 1 and ev["chipy"].max() <= 1024
        np.testing.assert_array_equal(ev["node_id"], (ev["chipx"] - 1) // 256)
        assert np.count_nonzero(ev["energy"] < 300) > 5
        assert np.count_nonzero(ev["energy"] > 12000) > 5
        expected_pi = np.floor(ev["energy"].astype(float) / 14.6).astype(int) + 1
        np.testing.assert_array_equal(ev["pi"], expected_pi)
        assert np.all(np.diff(ev["time"]) >= 0)
        assert ev["time"].min() >= h["TSTART"] and ev["time"].max() <= h["TSTOP"]
        assert set(np.unique(ev["grade"])) <= {0, 2, 3, 4, 6}
        assert ev["status"].shape[1] == 32 and not ev["status"].any()


def test_sky_positions_agree_with_the_wcs(sim_dir, truth):
    """The cluster peak sits at the truth RA/Dec in both files' own frames."""
    d = sim_dir
    ra0, dec0 = truth["cluster"]["ra"], truth["cluster"]["dec"]
    for obs in truth["observations"]:
        ev, h, _ = _events(_evt_path(d, obs["obsid"]))
        w = _column_wcs(h, ev.names)
        x0, y0 = w.wcs_world2pix([ra0], [dec0], 1)
        soft = (ev["energy"] > 500) & (ev["energy"] < 7000)
        r = np.hypot(ev["x"] - x0[0], ev["y"] - y0[0])
        near = soft & (r < 20 / 0.492)
        assert near.sum() > 500
        # The beta model is symmetric about the centre: the centroid of a
        # circle about the true centre lands on it (the nearby edge of the
        # cool core makes no asymmetry in counts, only in spectra).
        cx, cy = ev["x"][near].mean() - x0[0], ev["y"][near].mean() - y0[0]
        assert math.hypot(cx, cy) * 0.492 < 1.5


def test_point_sources_at_truth_positions(sim_dir, truth):
    d = sim_dir
    assert 3 <= len(truth["point_sources"]) <= 5
    for obs in truth["observations"]:
        oid = obs["obsid"]
        ev, h, _ = _events(_evt_path(d, oid))
        w = _column_wcs(h, ev.names)
        for src in truth["point_sources"]:
            x, y = w.wcs_world2pix([src["ra"]], [src["dec"]], 1)
            assert x[0] == pytest.approx(src["x"][oid], abs=1e-3)
            assert y[0] == pytest.approx(src["y"][oid], abs=1e-3)
            r = np.hypot(ev["x"] - x[0], ev["y"] - y[0]) * 0.492  # arcsec
            inner = np.count_nonzero(r < 2.0)
            annulus = np.count_nonzero((r > 6.0) & (r < 16.0))
            expected = annulus * 2.0 ** 2 / (16.0 ** 2 - 6.0 ** 2)
            assert inner > 30
            assert inner > expected + 5 * math.sqrt(expected + 1), (oid, src)


def test_core_is_softer_than_the_shock(sim_dir, truth):
    d = sim_dir
    energies = {1: [], 2: [], 3: []}
    for obs in truth["observations"]:
        ev, h, _ = _events(_evt_path(d, obs["obsid"]))
        zone = _zone_of_events(d, ev, h)
        band = (ev["energy"] > 500) & (ev["energy"] < 7000) & (ev["ccd_id"] < 4)
        for z in energies:
            energies[z].append(ev["energy"][band & (zone == z)])
    e = {z: np.concatenate(v).astype(float) for z, v in energies.items()}
    assert min(len(v) for v in e.values()) > 300
    mean = {z: v.mean() for z, v in e.items()}
    err = {z: v.std() / math.sqrt(len(v)) for z, v in e.items()}
    assert mean[3] - mean[1] > 3 * math.hypot(err[1], err[3])
    assert mean[2] - mean[1] > 3 * math.hypot(err[1], err[2])


def test_flare_shows_in_the_hard_light_curve(sim_dir, truth):
    d = sim_dir
    for obs in truth["observations"]:
        ev, h, _ = _events(_evt_path(d, obs["obsid"]))
        f0, f1 = truth["flares"][obs["obsid"]]
        assert h["TSTART"] < f0 < f1 < h["TSTOP"]
        hard = (ev["energy"] > 9000) & (ev["energy"] < 12000) & (ev["ccd_id"] < 4)
        in_flare = (ev["time"] >= f0) & (ev["time"] < f1)
        rate_in = np.count_nonzero(hard & in_flare) / (f1 - f0)
        rate_out = np.count_nonzero(hard & ~in_flare) / (h["TSTOP"] - h["TSTART"] - (f1 - f0))
        assert rate_in > 3 * rate_out


def test_background_file(sim_dir, truth):
    d = sim_dir
    for obs in truth["observations"]:
        oid = obs["obsid"]
        ev, h, _ = _events(_evt_path(d, oid))
        bev, bh, bheaders = _events(_evt_path(d, oid, "bkg_evt2"))
        names = [n.lower() for n in bev.names]
        ix = names.index("x") + 1
        src_ix = [n.lower() for n in ev.names].index("x") + 1
        assert bh[f"TCRVL{ix}"] == h[f"TCRVL{src_ix}"]
        assert bh["EXPOSURE"] == pytest.approx(5 * h["EXPOSURE"])
        gti = [g for g in bheaders[2:] if g["EXTNAME"] == "GTI"]
        assert len(gti) == 1
        assert set(np.unique(bev["ccd_id"])) == {0, 1, 2, 3}
        # Same particle spectrum: the 9.5-12 keV rate per second of exposure
        # matches the source file's outside the flare.
        f0, f1 = truth["flares"][oid]
        band = lambda e: (e > 9500) & (e < 12000)  # noqa: E731
        quiet = band(ev["energy"]) & (ev["ccd_id"] < 4) & ~((ev["time"] >= f0) & (ev["time"] < f1))
        src_rate = quiet.sum() / (h["EXPOSURE"] * (1 - (f1 - f0) / h["ONTIME"]))
        bkg_rate = np.count_nonzero(band(bev["energy"])) / bh["EXPOSURE"]
        assert bkg_rate == pytest.approx(src_rate, rel=0.15)
        # No flare: a 2 ks light curve of the background is flat.
        counts, _ = np.histogram(bev["time"][band(bev["energy"])],
                                 bins=np.arange(bh["TSTART"], bh["TSTOP"] + 1, 2000.0))
        assert counts.max() < 1.6 * np.median(counts)


def test_exposure_maps(sim_dir, truth):
    from regions import Regions
    d = sim_dir
    crop = Regions.read(str(d / "regions" / "crop.reg"), format="ds9")[0]
    for obs in truth["observations"]:
        oid = obs["obsid"]
        with fits.open(d / f"obs{oid}" / f"acisf{oid}_expmap.fits") as hdul:
            h = hdul[0].header
            emap = hdul[0].data.astype(float)
        assert h["BUNIT"] == "cm**2 s"
        assert (h["CTYPE1"], h["CTYPE2"]) == ("RA---TAN", "DEC--TAN")
        assert (h["WCSNAMEP"], h["CTYPE1P"], h["CTYPE2P"]) == ("PHYSICAL", "x", "y")
        assert h["CDELT1P"] == h["CDELT2P"] == 4 and h["LTM1_1"] == h["LTM2_2"] == 0.25
        # Physical and celestial transforms agree with the event file's frame.
        ev, eh, _ = _events(_evt_path(d, oid))
        ew = _column_wcs(eh, ev.names)
        iw = WCS(h)
        col, row = 10.0, 20.0  # 0-based image pixel
        x = h["CRVAL1P"] + h["CDELT1P"] * (col + 1 - h["CRPIX1P"])
        y = h["CRVAL2P"] + h["CDELT2P"] * (row + 1 - h["CRPIX2P"])
        assert (col + 1) == pytest.approx(h["LTM1_1"] * x + h["LTV1"])
        ra, dec = iw.wcs_pix2world([col], [row], 0)
        ex, ey = ew.wcs_world2pix(ra, dec, 1)
        assert (ex[0], ey[0]) == pytest.approx((x, y), abs=1e-6)
        # Zero off the chips, up to EXPOSURE x area, vignetted towards the corners.
        area = float(read_response(d / f"obs{oid}" / f"acisf{oid}.arf",
                                   d / f"obs{oid}" / f"acisf{oid}.rmf").specresp[
            int((sim.EXPMAP_ENERGY_KEV - 0.3) / 0.01)])
        assert emap[0, 0] == 0 and emap[-1, -1] == 0
        assert 0.5 < np.count_nonzero(emap > 0) / emap.size < 0.9
        assert emap.max() <= h["EXPOSURE"] * area * 1.01
        assert emap.max() >= 0.95 * h["EXPOSURE"] * area
        yy, xx = np.indices(emap.shape)
        ax = h["LTM1_1"] * obs["aim_x"] + h["LTV1"] - 1
        ay = h["LTM2_2"] * obs["aim_y"] + h["LTV2"] - 1
        assert emap[int(round(ay)), int(round(ax))] >= 0.98 * emap.max()
        dist = np.hypot(xx - ax, yy - ay)
        rim = (emap > 0) & (dist > 0.9 * dist[emap > 0].max())
        assert np.median(emap[rim]) < 0.9 * emap.max()   # vignetting
        # Gaps are partly filled by the dither.
        assert np.count_nonzero((emap > 0.05 * emap.max()) & (emap < 0.6 * emap.max())) > 100
        # The crop lies inside the field.
        mask = crop.to_pixel(iw).to_mask(mode="center").to_image(emap.shape)
        assert mask is not None and mask.sum() > 1000
        assert np.mean(emap[mask > 0] > 0) > 0.99
        # Events land where the exposure map says there is exposure.
        ccd_i = ev["ccd_id"] < 4
        c = np.floor(h["LTM1_1"] * ev["x"][ccd_i] + h["LTV1"] - 0.5).astype(int)
        r = np.floor(h["LTM2_2"] * ev["y"][ccd_i] + h["LTV2"] - 0.5).astype(int)
        inside = (c >= 0) & (r >= 0) & (c < emap.shape[1]) & (r < emap.shape[0])
        assert inside.all()
        assert np.mean(emap[r, c] > 0) > 0.999


def test_surface_brightness_agrees_between_observations(sim_dir, truth):
    """Counts per unit exposure (expmap) in the same sky area agree between the two
    observations: pointing, roll, vignetting, dither and exposure maps are consistent."""
    d = sim_dir
    ra0, dec0 = truth["cluster"]["ra"], truth["cluster"]["dec"]
    brightness = []
    for obs in truth["observations"]:
        oid = obs["obsid"]
        ev, h, _ = _events(_evt_path(d, oid))
        ew = _column_wcs(h, ev.names)
        with fits.open(d / f"obs{oid}" / f"acisf{oid}_expmap.fits") as hdul:
            eh, emap = hdul[0].header, hdul[0].data.astype(float)
        x0, y0 = ew.wcs_world2pix([ra0], [dec0], 1)
        band = (ev["energy"] > 1000) & (ev["energy"] < 7000) & (ev["ccd_id"] < 4)
        r = np.hypot(ev["x"] - x0[0], ev["y"] - y0[0]) * 0.492
        counts = np.count_nonzero(band & (r < 60.0))
        # Exposure summed over the same circle, on the exposure map's pixels.
        yy, xx = np.indices(emap.shape)
        px = (xx + 1 - eh["LTV1"]) / eh["LTM1_1"]
        py = (yy + 1 - eh["LTV2"]) / eh["LTM2_2"]
        inside = np.hypot(px - x0[0], py - y0[0]) * 0.492 < 60.0
        mean_exposure = emap[inside].mean()
        brightness.append((counts / mean_exposure, counts))
    (b1, n1), (b2, n2) = brightness
    assert n1 > 5000 and n2 > 5000
    # Poisson scatter is about 2 %; the second observation's thicker
    # contaminant costs about 1 % above 1 keV.
    assert b2 / b1 == pytest.approx(0.99, abs=0.05)


def test_responses_load(sim_dir, truth):
    d = sim_dir
    resp = [read_response(d / f"obs{o}" / f"acisf{o}.arf", d / f"obs{o}" / f"acisf{o}.rmf")
            for o in truth["obsids"]]
    assert resp[0].rmf_matrix.shape == (1070, 1024)
    # Two observations, two contamination depths: the later one has less soft area.
    assert resp[1].specresp[20] < resp[0].specresp[20]


def test_truth_images_and_yaml(sim_dir, truth):
    d = sim_dir
    with fits.open(d / "truth" / "temperature.fits") as t, \
            fits.open(d / "truth" / "zones.fits") as z:
        kT, zones = t[0].data, z[0].data
        assert t[0].header["BUNIT"] == "keV"
        for h in (t[0].header, z[0].header):
            assert h["CTYPE1"] == "RA---TAN" and h["LTM1_1"] == 0.25 and "LTV2" in h
    assert zones.dtype.kind == "i" and zones.dtype.itemsize == 2
    assert set(np.unique(zones)) == {0, 1, 2, 3}
    for name, zid in (("core", 1), ("ambient", 2), ("shock", 3)):
        assert truth["zones"][name]["id"] == zid
        assert np.count_nonzero(zones == zid) > 50
        np.testing.assert_array_equal(np.unique(kT[zones == zid]), [truth["zones"][name]["kT"]])
    assert set(np.unique(kT)) <= set(truth["temperature_levels"])
    assert truth["nh"] == 0.03 and truth["redshift"] == 0.1 and truth["abundance"] == 0.3
    assert truth["obsids"] == ["1001", "1002"]
    assert truth["exposure"]["1002"] > truth["exposure"]["1001"]
    rolls = [o["roll"] for o in truth["observations"]]
    assert rolls[0] != rolls[1]


def test_region_files(sim_dir, truth):
    from regions import CircleSkyRegion, RectangleSkyRegion, Regions
    d = sim_dir
    text = (d / "regions" / "crop.reg").read_text()
    assert text.startswith("# Region file format: DS9") and "\nfk5\n" in text
    crop = Regions.read(str(d / "regions" / "crop.reg"), format="ds9")
    assert len(crop) == 1 and isinstance(crop[0], RectangleSkyRegion)
    P = sim.PRESETS["small"]
    assert crop[0].width.to_value("arcsec") == pytest.approx(P.crop_size[0])
    srcs = Regions.read(str(d / "regions" / "sources.reg"), format="ds9")
    assert len(srcs) == len(truth["point_sources"])
    for reg, src in zip(srcs, truth["point_sources"]):
        assert isinstance(reg, CircleSkyRegion)
        assert reg.center.ra.deg == pytest.approx(src["ra"], abs=1e-6)
        assert reg.center.dec.deg == pytest.approx(src["dec"], abs=1e-6)
        assert 2.0 <= reg.radius.to_value("arcsec") <= 6.0


def test_config_validates(sim_dir):
    d = sim_dir
    cfg = load_config(d / "config.yaml")
    assert cfg.obsids == ["1001", "1002"]
    assert cfg.prep.backend == "products"
    assert cfg.fit.model == "xsphabs*xsbremss"
    assert cfg.cluster.nh == 0.03 and cfg.cluster.redshift == 0.1
    assert cfg.workdir_path == d / "work"
    assert 20 <= cfg.acb.target_sn <= 30
    for o in cfg.observations:
        assert o.events.endswith(f"acisf{o.obsid}_repro_evt2.fits")


def test_same_seed_same_files_other_seed_other_events(sim_dir, truth, tmp_path):
    d = sim_dir
    again = sim.simulate(tmp_path / "again", preset="small", seed=1)
    assert again.config == tmp_path / "again" / "config.yaml"
    assert len(again.files) == 16
    for p in again.files:
        assert p.read_bytes() == (d / p.relative_to(tmp_path / "again")).read_bytes(), p.name
    text = again.describe()
    for obs in truth["observations"]:
        oid = obs["obsid"]
        assert again.events[oid] == obs["events"]
        assert f"obsid {oid}: {obs['events']} events" in text
        assert 20_000 <= obs["events"] <= 60_000
    assert "core 3 keV" in text and "shock 12 keV" in text
    # A different seed, through the command line.
    proc = run_hpcxt("simulate", tmp_path / "other", "--seed", "2", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "obsid 1001" in proc.stdout and "core 3 keV" in proc.stdout
    assert "Solar Abundance" not in proc.stdout  # XSPEC's chatter is hidden
    a, _, _ = _events(_evt_path(d, "1001"))
    b, _, _ = _events(_evt_path(tmp_path / "other", "1001"))
    assert len(a) != len(b) or not np.array_equal(a["x"], b["x"])


# --------------------------------------------------------------------------
# chunks, the streamed event file, the large preset


def test_time_chunks_split_whole_frames():
    ptg = _pointing_of("small", 0)
    exposure = ptg.exposure
    for n in (1, 3, 7):
        chunks = sim.time_chunks(ptg, n)
        assert len(chunks) == n
        assert chunks[0].t0 == ptg.spec.tstart and chunks[-1].t1 == ptg.tstop
        for a, b in zip(chunks[:-1], chunks[1:]):
            assert a.t1 == b.t0 and a.k1 == b.k0
            # Boundaries fall between frames, so no frame is cut in two.
            assert (a.t1 - ptg.spec.tstart) / sim.FRAME_TIME == pytest.approx(a.k1, abs=1e-6)
        assert sum(c.live for c in chunks) == pytest.approx(exposure, rel=1e-12)
        assert sum(c.share(41) for c in chunks) == 41
    one = sim.time_chunks(ptg, 1)[0]
    assert one.live == exposure and one.share(41) == 41


def _pointing_of(preset, i):
    from hpcxt.prep.simulate._pointing import cluster_wcs, pointing
    return pointing(sim.PRESETS[preset].observations[i], cluster_wcs())


def _some_events(n, rng):
    return {"time": np.sort(rng.uniform(0, 100, n)), "ccd_id": rng.integers(0, 4, n),
            "node_id": rng.integers(0, 4, n), "chipx": rng.integers(1, 1025, n),
            "chipy": rng.integers(1, 1025, n), "x": rng.uniform(1, 8192, n),
            "y": rng.uniform(1, 8192, n), "energy": rng.uniform(300, 11000, n),
            "pi": rng.integers(1, 1025, n), "grade": rng.integers(0, 7, n),
            "status": rng.random((n, 32)) < 0.1}


def test_event_file_streamed_in_chunks_is_one_valid_table(tmp_path):
    from hpcxt.io.fitsio import read_events
    from hpcxt.prep.simulate._files import event_file
    ptg = _pointing_of("small", 0)
    ev = _some_events(5000, np.random.default_rng(4))
    args = (ptg, "TEST", 0.0, 100.0, 98.7, 100.0, (0, 1, 2, 3))
    with event_file(tmp_path / "one.fits", *args) as out:
        out.write(ev)
    with event_file(tmp_path / "three.fits", *args) as out:
        for sl in (slice(0, 1234), slice(1234, 1234), slice(1234, 5000)):
            out.write({k: v[sl] for k, v in ev.items()})
    assert out.rows == 5000
    assert (tmp_path / "one.fits").read_bytes() == (tmp_path / "three.fits").read_bytes()
    with fits.open(tmp_path / "three.fits") as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "EVENTS"] + ["GTI"] * 4
        data = hdul["EVENTS"].data
        assert hdul["EVENTS"].header["NAXIS2"] == 5000
        for name in ("time", "chipx", "pi", "grade"):
            np.testing.assert_array_equal(data[name], ev[name])
        np.testing.assert_array_equal(data["x"], ev["x"].astype(np.float32))
        np.testing.assert_array_equal(data["status"], ev["status"])
    read = read_events(tmp_path / "three.fits")
    assert len(read) == 5000 and read.exposure == 98.7 and sorted(read.gti) == [0, 1, 2, 3]


def test_event_file_left_unwritten_when_generation_fails(tmp_path):
    from hpcxt.prep.simulate._files import event_file
    ptg = _pointing_of("small", 0)
    ev = _some_events(10, np.random.default_rng(5))
    with pytest.raises(RuntimeError, match="generator failed"):
        with event_file(tmp_path / "evt.fits", ptg, "T", 0.0, 100.0, 98.7, 100.0, (None,)) as out:
            out.write(ev)
            raise RuntimeError("generator failed")
    assert list(tmp_path.iterdir()) == []


def test_chunked_simulation_matches_one_chunk_statistically(sim_dir, truth, tmp_path):
    """The small preset drawn in chunks of at most 5000 expected photons (5 and 7)."""
    P = sim.PRESETS["small"]
    chunked = sim.simulate(tmp_path / "chunked", preset="small", seed=1, chunk_photons=5000)
    for obs in truth["observations"]:
        oid = obs["obsid"]
        ev, h, headers = _events(_evt_path(tmp_path / "chunked", oid))
        assert h["NAXIS2"] == len(ev) == chunked.events[oid]
        assert np.all(np.diff(ev["time"]) >= 0)
        assert ev["time"].min() >= h["TSTART"] and ev["time"].max() <= h["TSTOP"]
        # Fixed numbers are shared out exactly; Poisson totals agree within noise.
        assert np.count_nonzero(ev["ccd_id"] == 6) == P.acis_s_events
        n1 = obs["events"]
        assert abs(len(ev) - n1) < 4 * math.sqrt(n1)
        assert len(ev) != n1 or not np.array_equal(ev["x"], _events(_evt_path(sim_dir, oid))[0]["x"])
        f0, f1 = truth["flares"][oid]
        hard = (ev["energy"] > 9000) & (ev["energy"] < 12000) & (ev["ccd_id"] < 4)
        in_flare = (ev["time"] >= f0) & (ev["time"] < f1)
        rate_in = np.count_nonzero(hard & in_flare) / (f1 - f0)
        rate_out = np.count_nonzero(hard & ~in_flare) / (h["TSTOP"] - h["TSTART"] - (f1 - f0))
        assert rate_in > 3 * rate_out
        # The background file does not depend on the chunk size.
        bkg = _evt_path(tmp_path / "chunked", oid, "bkg_evt2")
        assert bkg.read_bytes() == _evt_path(sim_dir, oid, "bkg_evt2").read_bytes()


def test_expected_events_agree_with_the_small_simulation(truth):
    expected = sim.expected_events("small")
    for obs in truth["observations"]:
        n = obs["events"]
        assert abs(n - expected[obs["obsid"]]) < 4 * math.sqrt(n), obs["obsid"]


def test_large_preset_sizes():
    """Declared sizes of the benchmark preset; nothing is drawn."""
    P = sim.PRESETS["large"]
    assert len(P.observations) >= 4
    assert len({o.obsid for o in P.observations}) == len(P.observations)
    pixels = [size / (sim.IMAGE_BIN * sim.SKY_PIXEL_ARCSEC) for size in P.crop_size]
    assert min(pixels) >= 1024
    expected = sim.expected_events("large")
    assert sum(expected.values()) >= 30e6
    # Every observation needs several chunks, so memory stays bounded.
    assert min(expected.values()) > 3 * sim.CHUNK_PHOTONS


def test_mosaic_tile_centres_the_chip_array_where_asked():
    from hpcxt.prep.simulate._pointing import cluster_wcs, offset_to_focal, pointing
    from hpcxt.prep.simulate._presets import mosaic_tile
    cw = cluster_wcs()
    for roll in (0.0, 37.0, 183.0):
        spec = mosaic_tile("9", (300.0, -200.0), roll, nominal_offset=(5.0, -3.0),
                           ontime=1e4, tstart=6e8, flare_start=100.0, flare_duration=10.0,
                           flare_factor=2.0, contamination=1.0)
        _, _, p, q = offset_to_focal(cw, pointing(spec, cw), np.array([300.0]),
                                     np.array([-200.0]))
        # Within a chip pixel (0.5"): the tile's north turns from the cluster's by
        # about dRA sin(Dec) (1.2 mrad here), over the 216" from aim to centre.
        assert math.hypot(p[0], q[0]) < 1.0, roll


def test_command_line_offers_every_preset():
    from hpcxt.cli import build_parser
    for name in sim.PRESETS:
        assert build_parser().parse_args(["simulate", "out", "--preset", name]).preset == name
