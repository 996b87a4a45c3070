"""The entry point: :func:`simulate` writes every file of a preset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.wcs import WCS

from ...errors import InputError
from ..response import acis_i_response, effective_area, write_arf, write_rmf
from ._acis import ACIS_I, DTCOR, EXPMAP_ENERGY_KEV, chip_coverage
from ._events import (CHUNK_PHOTONS, background_events, background_time, observation_sky,
                      point_source_vignetting, source_events, spectra)
from ._files import event_file, write_fits_image
from ._pointing import cluster_wcs, dither_shifts, exposure_map, offset_to_focal, pointing
from ._presets import CLUSTER, PRESETS, SPECTRAL_MODEL, ZONE_KT, Preset
from ._sky import Cells, cluster_cells, temperature_levels
from ._truth import (observation_files, observation_truth, write_config, write_regions,
                     write_truth)


@dataclass
class SimulationSummary:
    """What :func:`simulate` wrote."""

    outdir: Path
    preset: str
    seed: int
    config: Path
    files: list = field(default_factory=list)
    events: dict = field(default_factory=dict)            # obsid -> rows in evt2
    background_events: dict = field(default_factory=dict)  # obsid -> rows in bkg file
    exposure: dict = field(default_factory=dict)          # obsid -> EXPOSURE, s
    zone_kT: dict = field(default_factory=dict)           # zone -> keV

    def describe(self) -> str:
        lines = [f"simulated {len(self.events)} ACIS-I observations of '{CLUSTER['name']}' "
                 f"(preset {self.preset}, seed {self.seed}) in {self.outdir}"]
        for oid, n in self.events.items():
            lines.append(f"  obsid {oid}: {n} events in {self.exposure[oid] / 1e3:.1f} ks, "
                         f"{self.background_events[oid]} background events")
        zones = ", ".join(f"{k} {v:g} keV" for k, v in self.zone_kT.items())
        lines.append(f"  true temperatures: {zones} ({SPECTRAL_MODEL})")
        lines.append(f"  {len(self.files)} files written; run: hpcxt prep {self.config}")
        return "\n".join(lines)


@dataclass
class SkyModel:
    """What every observation of a preset shares."""

    preset: Preset
    cwcs: WCS               # the cluster's tangent plane, 1 arcsec pixels
    pointings: list         # Pointing per observation
    responses: list         # Response per observation
    levels: np.ndarray      # temperature levels, keV
    cluster_rates: np.ndarray  # (n_obs, n_level, n_channel) counts/s per unit norm
    pl_rates: list          # per observation: photon index -> (n_channel,) counts/s
    cells: Cells


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an InputError naming the choices otherwise."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}",
                         field="preset")
    return PRESETS[name]


def sky_model(P: Preset) -> SkyModel:
    """Pointings, responses, folded spectra and cluster cells of preset ``P``."""
    cwcs = cluster_wcs()
    pointings = [pointing(s, cwcs) for s in P.observations]
    responses = [acis_i_response(contamination=s.contamination) for s in P.observations]
    levels = temperature_levels()
    cluster_rates, pl_rates = spectra(responses, levels, [ps[3] for ps in P.point_sources])
    cells = cluster_cells(P, levels, cluster_rates)
    return SkyModel(preset=P, cwcs=cwcs, pointings=pointings, responses=responses,
                    levels=levels, cluster_rates=cluster_rates, pl_rates=pl_rates, cells=cells)


def simulate(outdir, preset: str = "small", seed: int = 1,
             chunk_photons: int = CHUNK_PHOTONS) -> SimulationSummary:
    """Write synthetic ACIS-I observations, their products, a config and the truth.

    Parameters
    ----------
    outdir : path
        Folder to write into (created; existing files are overwritten).
    preset : {'small', 'demo', 'large'}
        ``small``: two short observations and a compact crop (tests, a few
        seconds); ``demo``: 40 + 60 ks and a crop that gives about 2000 fit
        regions; ``large``: a 2 x 2 mosaic of 150 ks pointings, over 30
        million events and a 1024 x 1024 image (benchmarks, minutes).
    seed : int
        Random seed; the same seed writes the same files, bit for bit.
    chunk_photons : int
        Largest expected number of photons drawn at once: it bounds the
        memory. Changing it changes the files of a preset that needs more
        than one chunk.

    Returns
    -------
    SimulationSummary
    """
    P = get_preset(preset)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    model = sky_model(P)
    summary = SimulationSummary(outdir=outdir, preset=preset, seed=seed,
                                config=outdir / "config.yaml", zone_kT=dict(ZONE_KT))
    files: list[Path] = []
    obs_truth = []
    for i, ptg in enumerate(model.pointings):
        obs_files, truth = _simulate_observation(outdir, model, i, seed, chunk_photons)
        files += obs_files
        obs_truth.append(truth)
        oid = ptg.spec.obsid
        summary.events[oid] = truth["events"]
        summary.background_events[oid] = truth["background_events"]
        summary.exposure[oid] = truth["exposure"]
    files += write_truth(outdir, P, model.cwcs, model.pointings, model.levels, obs_truth)
    files += write_regions(outdir, P, model.cwcs)
    files.append(write_config(outdir, P, model.pointings))
    summary.files = files
    return summary


def _simulate_observation(outdir: Path, model: SkyModel, i: int, seed: int,
                          chunk_photons: int) -> tuple:
    """Events, blank-sky background, exposure map, ARF and RMF of observation ``i``."""
    P, ptg, resp = model.preset, model.pointings[i], model.responses[i]
    s = ptg.spec
    paths = {k: outdir / v for k, v in observation_files(s.obsid).items()}
    # Independent streams per observation and file, so presets and
    # observations can change without reshuffling the others.
    rng = np.random.default_rng(np.random.SeedSequence([seed, i, 1]))
    sky = observation_sky(P, ptg, model.cwcs, model.cells, model.cluster_rates[i])
    with event_file(paths["events"], ptg, CLUSTER["name"], s.tstart, ptg.tstop, ptg.exposure,
                    s.ontime, ACIS_I) as evt:
        for chunk in source_events(rng, P, ptg, model.cwcs, sky, model.cluster_rates[i],
                                   model.pl_rates[i], chunk_photons):
            evt.write(chunk)
    del sky
    rng_b = np.random.default_rng(np.random.SeedSequence([seed, i, 2]))
    b_ontime, b_exposure = background_time(P, ptg)
    with event_file(paths["background"], ptg, "BLANK SKY", s.tstart, s.tstart + b_ontime,
                    b_exposure, b_ontime, (None,)) as bkg:
        bkg.write(background_events(rng_b, P, ptg))

    area = float(effective_area(EXPMAP_ENERGY_KEV, s.contamination))
    emap, x0, y0 = exposure_map(ptg, area)
    write_fits_image(paths["exposure_map"], emap, ptg.frame, x0, y0, "cm**2 s",
                     {"TELESCOP": "CHANDRA", "INSTRUME": "ACIS", "OBS_ID": s.obsid,
                      "EXPOSURE": ptg.exposure, "ENERGY": (EXPMAP_ENERGY_KEV, "keV"),
                      "CREATOR": "hpcxt.prep.simulate"})
    write_arf(paths["arf"], resp, obsid=s.obsid)
    write_rmf(paths["rmf"], resp, obsid=s.obsid)
    files = [paths[k] for k in ("events", "background", "exposure_map", "arf", "rmf")]
    return files, observation_truth(ptg, evt.rows, bkg.rows, b_exposure)


def expected_events(preset: str) -> dict:
    """Expected rows of each observation's evt2 file, computed without drawing any.

    Every cell's and point source's rate times the livetime and the share
    of the dither it spends on a chip (at its centre), plus the instrument's
    events. What :func:`simulate` writes scatters about it as Poisson counts.

    Returns
    -------
    dict
        obsid -> expected number of events.
    """
    P = get_preset(preset)
    model = sky_model(P)
    out = {}
    for i, ptg in enumerate(model.pointings):
        s = ptg.spec
        shifts = dither_shifts(ptg)
        sky = observation_sky(P, ptg, model.cwcs, model.cells, model.cluster_rates[i])
        _, _, p, q = offset_to_focal(model.cwcs, ptg, sky.x, sky.y)
        rate = float(np.sum(sky.rate * sky.vign * chip_coverage(p, q, *shifts)))
        ps = np.array([(x, y, r) for x, y, r, _ in P.point_sources], float).reshape(-1, 3)
        _, _, p, q = offset_to_focal(model.cwcs, ptg, ps[:, 0], ps[:, 1])
        v = np.array(point_source_vignetting(P, ptg), float)
        rate += float(np.sum(ps[:, 2] * v * chip_coverage(p, q, *shifts)))
        flare = P.particle_rate * (s.flare_factor - 1.0) * s.flare_duration * DTCOR
        out[s.obsid] = (rate * ptg.exposure + P.particle_rate * ptg.exposure + flare
                        + P.acis_s_events + P.out_of_band_events)
    return out
