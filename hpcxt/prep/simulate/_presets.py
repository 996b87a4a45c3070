"""What is simulated: the cluster, its zones, and the presets (observations, crop, rates)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._acis import AIM_PLANE, SKY_PIXEL_ARCSEC, rotation

#: The simulated cluster (centre RA/Dec in degrees; nh in 1e22 cm^-2).
CLUSTER = {"name": "sim_merger", "ra": 165.0, "dec": 40.0, "redshift": 0.1, "nh": 0.03,
           "abundance": 0.3, "beta": 2.0 / 3.0}
ZONE_KT = {"core": 3.0, "ambient": 7.0, "shock": 12.0}
ZONE_IDS = {"core": 1, "ambient": 2, "shock": 3}
SPECTRAL_MODEL = "xsphabs*xsbremss"
#: Radius of the point-source exclusion circles written to sources.reg, arcsec.
SOURCE_REGION_RADIUS = 4.0
#: Gaussian PSF sigma of the point sources, arcsec (FWHM about 1.4 arcsec).
PSF_SIGMA = 0.6


@dataclass(frozen=True)
class ObservationSpec:
    """One simulated observation.

    Offsets are arcsec in the cluster's tangent plane (+x west, +y north).
    """

    obsid: str
    aim_offset: tuple        # aim point relative to the cluster centre, arcsec
    nominal_offset: tuple    # tangent point (RA_NOM, DEC_NOM) relative to the aim point, arcsec
    roll_deg: float
    ontime: float            # s
    tstart: float            # s since MJDREF
    flare_start: float       # s after TSTART
    flare_duration: float    # s
    flare_factor: float      # flare rate / quiescent particle rate
    contamination: float     # relative contaminant depth of the ARF


@dataclass(frozen=True)
class Preset:
    """Everything that differs between the small, demo and large simulations."""

    name: str
    observations: tuple
    cell_px: float                 # sky pixels per simulation cell
    sim_radius: float              # arcsec: cluster emission is drawn within this radius
    core_radius_beta: float        # beta-model core radius, arcsec
    core_radius: float             # cool-core circle radius, arcsec
    shock_centre: tuple            # arcsec
    shock_axes: tuple              # semi-axes (along its own x, y), arcsec
    shock_angle_deg: float         # its x axis, from west towards north
    transition: float              # tanh width of the zone edges, arcsec
    zone_margin: float             # truth zones keep this far from every edge, arcsec
    crop_centre: tuple             # arcsec
    crop_size: tuple               # width, height, arcsec
    cluster_rate: float            # counts/s of the 7-keV-equivalent cluster within sim_radius
    shock_brightness: float        # surface-brightness jump of the shocked (compressed) gas
    point_sources: tuple           # (x, y arcsec, counts/s, photon index)
    particle_rate: float           # counts/s over ACIS-I, 0.3-12 keV
    acis_s_events: int
    out_of_band_events: int
    bkg_exposure_factor: float
    target_sn: float
    resolution: str
    # Draw photons only from the cells each observation's chips can reach.
    # It saves most of the work of a mosaic, whose pointings each see a
    # quarter of the sky; it changes the random stream, so the small and
    # demo presets (whose files are pinned by seed) leave it off.
    cells_near_field: bool = False


def mosaic_tile(obsid: str, centre: tuple, roll_deg: float, **spec) -> ObservationSpec:
    """An observation whose ACIS-I array is centred on ``centre`` (arcsec from the cluster).

    The aim point sits off the array centre (:data:`AIM_PLANE`), so it moves
    with the roll: it is the array centre plus the rolled aim-point offset.
    """
    shift = rotation(roll_deg) @ np.asarray(AIM_PLANE, float) * SKY_PIXEL_ARCSEC
    aim = (round(centre[0] + float(shift[0]), 3), round(centre[1] + float(shift[1]), 3))
    return ObservationSpec(obsid=obsid, aim_offset=aim, roll_deg=roll_deg, **spec)


def _large_observations() -> tuple:
    """A 2 x 2 mosaic of 150 ks pointings, the arrays overlapping over the cluster centre."""
    tiles = []
    for k, (sx, sy) in enumerate(((-1, 1), (1, 1), (-1, -1), (1, -1))):
        tiles.append(mosaic_tile(
            f"{2001 + k}", centre=(470.0 * sx, 470.0 * sy), roll_deg=3.0 + 90.0 * k,
            nominal_offset=((6.0, -4.0), (-5.0, 7.0), (4.0, 5.0), (-6.0, -3.0))[k],
            ontime=150000.0, tstart=6.90e8 + 1.0e7 * k, flare_start=40000.0 + 20000.0 * k,
            flare_duration=5000.0, flare_factor=6.0, contamination=1.0 + 0.05 * k))
    return tuple(tiles)


PRESETS = {
    "small": Preset(
        name="small",
        observations=(
            ObservationSpec("1001", (-20.0, -30.0), (6.0, -4.0), 20.0, 20000.0, 6.30e8,
                            9000.0, 2500.0, 7.0, 1.0),
            ObservationSpec("1002", (40.0, 25.0), (-5.0, 7.0), 80.0, 28000.0, 6.62e8,
                            17000.0, 2000.0, 6.0, 1.15),
        ),
        cell_px=2.0, sim_radius=240.0, core_radius_beta=30.0, core_radius=38.0,
        shock_centre=(80.0, 0.0), shock_axes=(30.0, 60.0), shock_angle_deg=0.0,
        transition=2.0, zone_margin=20.0, crop_centre=(22.0, 0.0), crop_size=(180.0, 135.0),
        cluster_rate=1.2, shock_brightness=2.5,
        point_sources=((-45.0, 45.0, 0.010, 1.7), (55.0, -50.0, 0.012, 1.5),
                       (-20.0, -52.0, 0.008, 1.9), (140.0, 90.0, 0.010, 1.7)),
        particle_rate=0.4, acis_s_events=40, out_of_band_events=40,
        bkg_exposure_factor=5.0, target_sn=25.0, resolution="low"),
    "demo": Preset(
        name="demo",
        observations=(
            ObservationSpec("1001", (-20.0, -30.0), (6.0, -4.0), 20.0, 40000.0, 6.30e8,
                            21000.0, 4000.0, 7.0, 1.0),
            ObservationSpec("1002", (40.0, 25.0), (-5.0, 7.0), 80.0, 60000.0, 6.62e8,
                            38000.0, 3000.0, 6.0, 1.15),
        ),
        cell_px=2.0, sim_radius=480.0, core_radius_beta=60.0, core_radius=60.0,
        shock_centre=(150.0, 10.0), shock_axes=(55.0, 120.0), shock_angle_deg=10.0,
        transition=3.0, zone_margin=20.0, crop_centre=(40.0, 0.0), crop_size=(430.0, 420.0),
        cluster_rate=6.0, shock_brightness=2.5,
        point_sources=((-120.0, 150.0, 0.012, 1.7), (180.0, -160.0, 0.015, 1.5),
                       (-60.0, -130.0, 0.010, 1.9), (90.0, 125.0, 0.020, 1.7),
                       (330.0, 260.0, 0.012, 1.7)),
        particle_rate=0.4, acis_s_events=80, out_of_band_events=80,
        bkg_exposure_factor=5.0, target_sn=40.0, resolution="low"),
    # A bright, nearby merger in a 2 x 2 mosaic: a 2016" (33.6') square crop,
    # 1024 x 1024 image pixels of 4 sky pixels, and over 30 million events.
    # Cells of 4 sky pixels (one image pixel) keep the cluster model's grid
    # at about 1.7 million cells.
    "large": Preset(
        name="large",
        observations=_large_observations(),
        cell_px=4.0, sim_radius=1450.0, core_radius_beta=150.0, core_radius=120.0,
        shock_centre=(420.0, 60.0), shock_axes=(120.0, 260.0), shock_angle_deg=10.0,
        transition=4.0, zone_margin=20.0, crop_centre=(0.0, 0.0),
        crop_size=(2016.0, 2016.0), cluster_rate=230.0, shock_brightness=2.5,
        point_sources=((-300.0, 350.0, 0.03, 1.7), (380.0, -420.0, 0.04, 1.5),
                       (-150.0, -330.0, 0.02, 1.9), (250.0, 300.0, 0.05, 1.7),
                       (-700.0, -650.0, 0.03, 1.7), (760.0, 620.0, 0.03, 1.8),
                       (-820.0, 540.0, 0.02, 1.6), (640.0, -780.0, 0.03, 1.7)),
        particle_rate=0.4, acis_s_events=200, out_of_band_events=200,
        bkg_exposure_factor=5.0, target_sn=50.0, resolution="low", cells_near_field=True),
}
