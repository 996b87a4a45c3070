"""What the user gets beside the observations: the truth, DS9 regions, a config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ...io.config import dump_config, load_config
from ...io.workdir import SimulationTruth, write_text_atomic
from ._acis import IMAGE_BIN
from ._files import region_text, write_fits_image
from ._pointing import Pointing, image_grid, offset_to_radec, radec_to_offset
from ._presets import CLUSTER, SOURCE_REGION_RADIUS, SPECTRAL_MODEL, ZONE_KT, Preset
from ._sky import quantise, temperature_field, zone_interiors

#: Margin of the truth images around the crop, arcsec.
TRUTH_MARGIN = 30.0
_CREATOR = "hpcxt.prep.simulate"


def observation_truth(ptg: Pointing, n_events: int, n_bkg: int, bkg_exposure: float) -> dict:
    """The truth.yaml entry of one observation."""
    s = ptg.spec
    f0 = s.tstart + s.flare_start
    return {
        "obsid": s.obsid, "exposure": float(ptg.exposure), "ontime": float(s.ontime),
        "tstart": float(s.tstart), "tstop": float(ptg.tstop),
        "background_exposure": float(bkg_exposure),
        "ra_nom": ptg.ra_nom, "dec_nom": ptg.dec_nom, "ra_pnt": ptg.ra_pnt,
        "dec_pnt": ptg.dec_pnt, "roll": float(s.roll_deg),
        "aim_x": ptg.aim_xy[0], "aim_y": ptg.aim_xy[1],
        "flare": {"start": float(f0), "stop": float(f0 + s.flare_duration),
                  "factor": float(s.flare_factor)},
        "events": int(n_events), "background_events": int(n_bkg),
    }


def _truth_images(paths: SimulationTruth, P: Preset, cwcs, ref: Pointing, levels) -> list:
    """temperature.fits (keV) and zones.fits over the crop plus a margin, on the
    first observation's sky frame, binned by IMAGE_BIN."""
    cx, cy = P.crop_centre
    hw, hh = P.crop_size[0] / 2 + TRUTH_MARGIN, P.crop_size[1] / 2 + TRUTH_MARGIN
    bx = np.array([cx - hw, cx + hw, cx + hw, cx - hw])
    by = np.array([cy - hh, cy - hh, cy + hh, cy + hh])
    ra, dec = offset_to_radec(cwcs, bx, by)
    sx, sy = ref.wcs.wcs_world2pix(ra, dec, 1)
    x0, y0, (ny, nx) = image_grid(sx, sy)
    xc = x0 + IMAGE_BIN * (np.arange(nx) + 0.5)
    yc = y0 + IMAGE_BIN * (np.arange(ny) + 0.5)
    xx, yy = np.meshgrid(xc, yc)
    ra, dec = ref.wcs.wcs_pix2world(xx, yy, 1)
    ox, oy = radec_to_offset(cwcs, ra, dec)
    kT = levels[quantise(temperature_field(ox, oy, P), levels)].astype(np.float32)
    sources = [(s[0], s[1]) for s in P.point_sources]
    zones = zone_interiors(ox, oy, P, sources, source_margin=2 * SOURCE_REGION_RADIUS)
    extra = {"OBJECT": CLUSTER["name"], "CREATOR": _CREATOR}
    t_path, z_path = paths.temperature, paths.zones
    write_fits_image(t_path, kT, ref.frame, x0, y0, "keV", extra)
    write_fits_image(z_path, zones.astype(np.int16), ref.frame, x0, y0, "",
                     {**extra, "ZONE1": "core", "ZONE2": "ambient", "ZONE3": "shock",
                      "MARGIN": (P.zone_margin, "arcsec from every zone edge")})
    return [t_path, z_path]


def _point_source_truth(P: Preset, cwcs, pointings) -> list:
    out = []
    for (px, py, rate, gamma) in P.point_sources:
        ra_s, dec_s = (float(v) for v in offset_to_radec(cwcs, px, py))
        entry = {"ra": ra_s, "dec": dec_s, "counts_per_s": float(rate),
                 "photon_index": float(gamma), "x": {}, "y": {}}
        for ptg in pointings:
            x, y = ptg.wcs.wcs_world2pix(np.array([ra_s]), np.array([dec_s]), 1)
            entry["x"][ptg.spec.obsid] = float(x[0])
            entry["y"][ptg.spec.obsid] = float(y[0])
        out.append(entry)
    return out


def _truth_document(P: Preset, cwcs, pointings, levels, obs_truth) -> dict:
    core_ra, core_dec = CLUSTER["ra"], CLUSTER["dec"]
    sh_ra, sh_dec = (float(v) for v in offset_to_radec(cwcs, *P.shock_centre))
    return {
        "preset": P.name,
        "model": SPECTRAL_MODEL,
        "cluster": {"name": CLUSTER["name"], "ra": core_ra, "dec": core_dec,
                    "redshift": CLUSTER["redshift"], "nh": CLUSTER["nh"],
                    "abundance": CLUSTER["abundance"], "beta": float(CLUSTER["beta"]),
                    "core_radius_arcsec": P.core_radius_beta},
        "nh": CLUSTER["nh"], "redshift": CLUSTER["redshift"], "abundance": CLUSTER["abundance"],
        "zones": {
            "core": {"id": 1, "kT": ZONE_KT["core"], "shape": "circle", "ra": core_ra,
                     "dec": core_dec, "radius_arcsec": P.core_radius},
            "ambient": {"id": 2, "kT": ZONE_KT["ambient"], "shape": "everything else"},
            "shock": {"id": 3, "kT": ZONE_KT["shock"], "shape": "ellipse", "ra": sh_ra,
                      "dec": sh_dec, "semi_axes_arcsec": [float(a) for a in P.shock_axes],
                      "angle_deg_west_to_north": P.shock_angle_deg,
                      "brightness_factor": P.shock_brightness},
        },
        "zone_margin_arcsec": P.zone_margin,
        "transition_arcsec": P.transition,
        "temperature_levels": [float(v) for v in levels],
        "obsids": [p.spec.obsid for p in pointings],
        "exposure": {o["obsid"]: o["exposure"] for o in obs_truth},
        "observations": obs_truth,
        "flares": {o["obsid"]: [o["flare"]["start"], o["flare"]["stop"]] for o in obs_truth},
        "point_sources": _point_source_truth(P, cwcs, pointings),
        "sky_frame_of_images": pointings[0].spec.obsid,
    }


def write_truth(outdir: Path, P: Preset, cwcs, pointings, levels, obs_truth) -> list:
    """truth/temperature.fits, truth/zones.fits and truth/truth.yaml."""
    paths = SimulationTruth(outdir)
    paths.root.mkdir(parents=True, exist_ok=True)
    files = _truth_images(paths, P, cwcs, pointings[0], levels)
    doc = _truth_document(P, cwcs, pointings, levels, obs_truth)
    files.append(write_text_atomic(paths.document, yaml.safe_dump(doc, sort_keys=False),
                                   fsync=False))
    return files


def write_regions(outdir: Path, P: Preset, cwcs) -> list:
    """regions/crop.reg (the preset's box) and regions/sources.reg (a circle a source)."""
    rdir = outdir / "regions"
    ra, dec = (float(v) for v in offset_to_radec(cwcs, *P.crop_centre))
    w, h = P.crop_size
    crop = write_text_atomic(rdir / "crop.reg", region_text(
        [f'box({ra:.7f},{dec:+.7f},{w:.3f}",{h:.3f}",0)']), fsync=False)
    circles = []
    for px, py, _, _ in P.point_sources:
        sra, sdec = (float(v) for v in offset_to_radec(cwcs, px, py))
        circles.append(f'circle({sra:.7f},{sdec:+.7f},{SOURCE_REGION_RADIUS:.3f}")')
    sources = write_text_atomic(rdir / "sources.reg", region_text(circles), fsync=False)
    return [crop, sources]


def observation_files(obsid: str) -> dict:
    """Paths (relative to the output folder) of one observation's files, by config field."""
    o = obsid
    return {"events": f"obs{o}/acisf{o}_repro_evt2.fits",
            "background": f"obs{o}/acisf{o}_bkg_evt2.fits",
            "exposure_map": f"obs{o}/acisf{o}_expmap.fits",
            "arf": f"obs{o}/acisf{o}.arf",
            "rmf": f"obs{o}/acisf{o}.rmf"}


def write_config(outdir: Path, P: Preset, pointings) -> Path:
    """config.yaml for 'hpcxt prep' (products backend), checked by load_config."""
    obs = [{"obsid": p.spec.obsid, **observation_files(p.spec.obsid)} for p in pointings]
    data = {
        "cluster": {"name": CLUSTER["name"], "redshift": CLUSTER["redshift"],
                    "nh": CLUSTER["nh"], "abundance": CLUSTER["abundance"]},
        "workdir": "work",
        "observations": obs,
        # Each observation has one long flare (about 10% of it at 6-7 times the
        # quiescent rate) and under 40 counts per light-curve bin: lc_clean's
        # +-20% cut would throw away much quiescent time and 3-sigma clipping
        # can keep the flare; a 4-sigma Poisson cut (stddev) removes the flare
        # and keeps more than 98% of the rest (seeds 1-6 of both presets).
        "prep": {"backend": "products", "crop_region": "regions/crop.reg",
                 "point_sources": "regions/sources.reg",
                 "deflare": {"method": "clean", "stddev": 4.0}},
        "acb": {"target_sn": P.target_sn},
        "fit": {"resolution": P.resolution, "model": SPECTRAL_MODEL},
    }
    path = write_text_atomic(
        outdir / "config.yaml",
        f"# Simulated by 'hpcxt simulate' (preset {P.name}); the truth is in "
        "truth/.\n# xsphabs*xsbremss needs no AtomDB files.\n" + dump_config(data), fsync=False)
    load_config(path)  # what we write must be what 'hpcxt prep' accepts
    return path

