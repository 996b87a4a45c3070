"""Events of one observation, drawn a time slice (chunk) at a time.

Each chunk is a run of whole ACIS frames. Its photons (cluster cells and
point sources, Poisson with the chunk's share of the livetime) and its
instrument events (particles, the part of the flare inside it, its share
of the ACIS-S and out-of-band events) are drawn, put on the chips and
sorted by time; chunks follow each other in time, so the file they make is
sorted too. One chunk draws exactly what the whole observation drew before
chunks existed, which is what the small and demo presets use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...models import load_xspec, make_model, native_output_silenced
from ..response import fold
from ._acis import (ACIS_I, CHIP_PIXELS, DITHER_AMPLITUDE, DTCOR, FRAME_TIME, GRADE_SHARES,
                    GRADES, PARTICLE_RANGE_KEV, SKY_PIXEL_ARCSEC, CHIP_ORIGINS, channel_energy_eV,
                    dither_offset, draw_from_spectrum, energy_to_pi, flare_pdf, focal_to_sky,
                    frame_times, locate_on_chips, near_chips, particle_pdf, sample_energies,
                    sky_to_focal, vignetting)
from ._pointing import Pointing, offset_to_focal, offset_to_radec
from ._presets import CLUSTER, PSF_SIGMA, SPECTRAL_MODEL, Preset
from ._sky import Cells

#: Largest expected number of photons drawn at once. It bounds the memory of
#: a chunk (about 0.2 kB a photon at the peak, measured with tracemalloc,
#: plus a few arrays of the size of the cell grid); the small and demo
#: presets fit in one chunk.
CHUNK_PHOTONS = 2_000_000
_EVENT_KEYS = ("time", "ccd_id", "chipx", "chipy", "x", "y", "energy")


def spectra(responses: list, levels, gammas) -> tuple:
    """Folded count rates per unit norm: cluster (nobs, nlevel, nchan) and power laws
    (one dict photon index -> (nchan,) per observation)."""
    nh, ab, z = CLUSTER["nh"], CLUSTER["abundance"], CLUSTER["redshift"]
    model, kT, norm = make_model(SPECTRAL_MODEL, nh=nh, abundance=ab, redshift=z,
                                 kT=levels[0], norm=1.0, name="sim")
    xspec = load_xspec()
    absorb = xspec.XSphabs("sim_pl_abs")
    absorb.nH.val = nh
    powerlaw = xspec.XSpowerlaw("sim_pl")
    powerlaw.norm.val = 1.0
    pl_model = absorb * powerlaw
    cluster, plaw = [], []
    with native_output_silenced(1):
        for r in responses:
            rows = []
            for t in levels:
                kT.val = float(t)
                rows.append(fold(r, np.asarray(model(r.arf_energ_lo, r.arf_energ_hi))))
            cluster.append(np.array(rows))
            per_gamma = {}
            for gamma in sorted(set(gammas)):
                powerlaw.PhoIndex.val = float(gamma)
                per_gamma[gamma] = fold(r, np.asarray(pl_model(r.arf_energ_lo, r.arf_energ_hi)))
            plaw.append(per_gamma)
    return np.array(cluster), plaw


@dataclass
class ObservationSky:
    """The cluster cells one observation draws from, with their detection rates."""

    x: np.ndarray        # offsets from the cluster centre, arcsec
    y: np.ndarray
    size: float          # cell side, arcsec
    level: np.ndarray    # index into the temperature levels
    rate: np.ndarray     # counts/s on axis (norm x counts per unit norm)
    vign: np.ndarray     # vignetting at the cell's centre


def observation_sky(P: Preset, ptg: Pointing, cwcs, cells: Cells, cluster_rates) -> ObservationSky:
    """The cells of ``cells`` that observation ``ptg`` draws from, and their rates.

    With ``P.cells_near_field`` only cells that the dither can bring onto a
    chip are kept; otherwise all of them (their photons off the chips are
    lost later, as in a real observation).
    """
    x, y, level, norm = cells.x, cells.y, cells.level, cells.norm
    if P.cells_near_field:
        _, _, p, q = offset_to_focal(cwcs, ptg, x, y)
        margin = DITHER_AMPLITUDE + cells.size / SKY_PIXEL_ARCSEC + 2.0
        keep = near_chips(p, q, margin)
        x, y, level, norm = x[keep], y[keep], level[keep], norm[keep]
    aim = np.asarray(ptg.spec.aim_offset, float)
    off_axis_px = np.hypot(x - aim[0], y - aim[1]) / SKY_PIXEL_ARCSEC
    per_norm = cluster_rates.sum(axis=1)[level]  # counts/s per unit norm
    return ObservationSky(x=x, y=y, size=cells.size, level=level, rate=norm * per_norm,
                          vign=vignetting(off_axis_px))


def point_source_vignetting(P: Preset, ptg: Pointing) -> list:
    """Vignetting of each point source in this observation."""
    aim = np.asarray(ptg.spec.aim_offset, float)
    return [vignetting(np.hypot(sx - aim[0], sy - aim[1]) / SKY_PIXEL_ARCSEC)
            for sx, sy, _, _ in P.point_sources]


@dataclass(frozen=True)
class Chunk:
    """A run of whole frames ``[k0, k1)`` of the observation's ``frames``."""

    t0: float
    t1: float
    k0: int
    k1: int
    frames: int
    live: float      # livetime, s

    def share(self, n: int) -> int:
        """This chunk's part of ``n`` events spread evenly over the frames."""
        return n * self.k1 // self.frames - n * self.k0 // self.frames


def time_chunks(ptg: Pointing, n_chunks: int) -> list:
    """Split the observation into ``n_chunks`` runs of whole frames (the first starts at
    TSTART, the last ends at TSTOP)."""
    s = ptg.spec
    frames = max(int(np.floor(s.ontime / FRAME_TIME + 1e-9)), 1)
    n_chunks = max(1, min(int(n_chunks), frames))
    edges = [j * frames // n_chunks for j in range(n_chunks + 1)]
    times = [s.tstart + k * FRAME_TIME for k in edges]
    times[0], times[-1] = s.tstart, ptg.tstop
    return [Chunk(t0=times[j], t1=times[j + 1], k0=edges[j], k1=edges[j + 1], frames=frames,
                  live=ptg.exposure * ((edges[j + 1] - edges[j]) / frames))
            for j in range(n_chunks)]


def sky_photons(rng, P: Preset, sky: ObservationSky, cluster_rates, pl_rates, ps_vign,
                live: float):
    """Photons of the cluster and point sources in ``live`` seconds (before the chips):
    offsets (arcsec) and 0-based channel indices."""
    mu = sky.rate * live * sky.vign
    which = np.repeat(np.arange(mu.size), rng.poisson(mu))
    xs = [sky.x[which] + (rng.random(which.size) - 0.5) * sky.size]
    ys = [sky.y[which] + (rng.random(which.size) - 0.5) * sky.size]
    chan = np.empty(which.size, dtype=np.int64)
    lev = sky.level[which]
    del which
    for k in range(cluster_rates.shape[0]):
        sel = np.flatnonzero(lev == k)
        chan[sel] = draw_from_spectrum(rng, cluster_rates[k], sel.size)
    chans = [chan]
    for (sx, sy, rate, gamma), v in zip(P.point_sources, ps_vign):
        n = rng.poisson(rate * live * v)
        xs.append(sx + rng.normal(0.0, PSF_SIGMA, n))
        ys.append(sy + rng.normal(0.0, PSF_SIGMA, n))
        chans.append(draw_from_spectrum(rng, pl_rates[gamma], n))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(chans)


def events_on_chips(rng, ptg: Pointing, cwcs, ox, oy, chan_idx, t) -> dict:
    """Sky photons (offsets in arcsec) at times ``t`` -> the events that land on a chip."""
    ra, dec = offset_to_radec(cwcs, ox, oy)
    x, y = ptg.wcs.wcs_world2pix(ra, dec, 1)
    dx, dy = dither_offset(t, ptg.spec.tstart)
    p, q = sky_to_focal(x, y, ptg.aim_xy, ptg.spec.roll_deg, dx, dy)
    ccd, cx, cy = locate_on_chips(p, q, ACIS_I)
    on = ccd >= 0
    return {"time": t[on], "ccd_id": ccd[on], "chipx": cx[on], "chipy": cy[on],
            "x": x[on], "y": y[on], "energy": channel_energy_eV(rng, chan_idx[on])}


def particle_events(rng, ptg: Pointing, n: int, t0: float, t1: float, pdf, ccds,
                    e_range=PARTICLE_RANGE_KEV) -> dict:
    """``n`` particle events in [t0, t1] spread evenly over ``ccds`` (flat on the chips)."""
    t = frame_times(rng, n, t0, t1, ptg.spec.tstart)
    pick = rng.integers(0, len(ccds), n)
    ccd = np.asarray(ccds, dtype=np.int16)[pick]
    origins = np.array([CHIP_ORIGINS[int(k)] for k in ccds], dtype=float)[pick]
    cx = rng.uniform(0.0, CHIP_PIXELS, n)
    cy = rng.uniform(0.0, CHIP_PIXELS, n)
    dx, dy = dither_offset(t, ptg.spec.tstart)
    x, y = focal_to_sky(origins[:, 0] + cx, origins[:, 1] + cy, ptg.aim_xy,
                        ptg.spec.roll_deg, dx, dy)
    energy = sample_energies(rng, n, pdf, *e_range) * 1000.0
    return {"time": t, "ccd_id": ccd, "chipx": cx, "chipy": cy, "x": x, "y": y, "energy": energy}


def _flat(e):
    return np.ones_like(e)


def instrument_events(rng, P: Preset, ptg: Pointing, c: Chunk) -> list:
    """Particle background with the flare's part in this chunk, ACIS-S and out-of-band
    events."""
    s = ptg.spec
    n_quiet = rng.poisson(P.particle_rate * c.live)
    f0 = max(s.tstart + s.flare_start, c.t0)
    f1 = min(s.tstart + s.flare_start + s.flare_duration, c.t1)
    n_flare = rng.poisson(P.particle_rate * (s.flare_factor - 1.0) * max(f1 - f0, 0.0) * DTCOR)
    n_low = P.out_of_band_events // 2
    return [
        particle_events(rng, ptg, n_quiet, c.t0, c.t1, particle_pdf, ACIS_I),
        particle_events(rng, ptg, n_flare, f0, f1, flare_pdf, ACIS_I),
        particle_events(rng, ptg, c.share(P.acis_s_events), c.t0, c.t1, particle_pdf, (6,)),
        particle_events(rng, ptg, c.share(n_low), c.t0, c.t1, _flat, ACIS_I, (0.05, 0.29)),
        particle_events(rng, ptg, c.share(P.out_of_band_events - n_low), c.t0, c.t1, _flat,
                        ACIS_I, (12.2, 14.9)),
    ]


def concat(parts: list) -> dict:
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in _EVENT_KEYS}


def finish_events(rng, ev: dict) -> dict:
    """Sort by time; integer chip pixels, node, PI, grade, status."""
    order = np.argsort(ev["time"], kind="stable")
    ev = {k: v[order] for k, v in ev.items()}
    n = ev["time"].size
    chipx = np.clip(np.floor(ev["chipx"]).astype(np.int64) + 1, 1, CHIP_PIXELS)
    chipy = np.clip(np.floor(ev["chipy"]).astype(np.int64) + 1, 1, CHIP_PIXELS)
    # PI from the energy as stored (float32), so readers can recompute it.
    energy = ev["energy"].astype(np.float32)
    return {
        "time": ev["time"].astype(np.float64),
        "ccd_id": ev["ccd_id"].astype(np.int16),
        "node_id": ((chipx - 1) // 256).astype(np.int16),
        "chipx": chipx.astype(np.int16),
        "chipy": chipy.astype(np.int16),
        "x": ev["x"].astype(np.float32),
        "y": ev["y"].astype(np.float32),
        "energy": energy,
        "pi": energy_to_pi(energy.astype(np.float64)),
        "grade": rng.choice(GRADES, size=n, p=GRADE_SHARES),
        "status": np.zeros((n, 32), dtype=bool),
    }


def source_events(rng, P: Preset, ptg: Pointing, cwcs, sky: ObservationSky, cluster_rates,
                  pl_rates, chunk_photons: int = CHUNK_PHOTONS):
    """The events of an observation's evt2 file, in time order, one chunk at a time.

    Yields
    ------
    dict
        Event columns (see :func:`finish_events`) of one chunk.
    """
    ps_vign = point_source_vignetting(P, ptg)
    expected = ptg.exposure * (float(np.sum(sky.rate * sky.vign))
                               + sum(float(ps[2] * v) for ps, v in zip(P.point_sources, ps_vign)))
    for c in time_chunks(ptg, int(np.ceil(expected / chunk_photons))):
        ox, oy, chan = sky_photons(rng, P, sky, cluster_rates, pl_rates, ps_vign, c.live)
        t = frame_times(rng, ox.size, c.t0, c.t1, ptg.spec.tstart)
        parts = [events_on_chips(rng, ptg, cwcs, ox, oy, chan, t)]
        del ox, oy, chan, t
        parts += instrument_events(rng, P, ptg, c)
        yield finish_events(rng, concat(parts))


def background_time(P: Preset, ptg: Pointing) -> tuple:
    """On time and livetime (s) of the observation's blank-sky file."""
    ontime = ptg.spec.ontime * P.bkg_exposure_factor
    return ontime, ontime * DTCOR


def background_events(rng, P: Preset, ptg: Pointing) -> dict:
    """Blank-sky events in this observation's frame: particles only, no flare,
    ``P.bkg_exposure_factor`` times longer."""
    ontime, live = background_time(P, ptg)
    n = rng.poisson(P.particle_rate * live)
    t0 = ptg.spec.tstart
    return finish_events(rng, particle_events(rng, ptg, n, t0, t0 + ontime, particle_pdf, ACIS_I))
