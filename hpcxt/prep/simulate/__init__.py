"""Synthetic Chandra ACIS-I observations of a merging cluster with known temperatures.

``hpcxt simulate OUTDIR`` writes what CIAO (chandra_repro, blanksky +
reproject_events, fluximage, specextract) would give a user, so that every
stage after it can be run and checked against a known answer::

    OUTDIR/config.yaml                       ready for 'hpcxt prep' (backend products)
    OUTDIR/obs<id>/acisf<id>_repro_evt2.fits level-2 events + one GTI per chip
    OUTDIR/obs<id>/acisf<id>_bkg_evt2.fits   blank-sky-like particle background
    OUTDIR/obs<id>/acisf<id>_expmap.fits     exposure map, cm**2 s, binned by 4
    OUTDIR/obs<id>/acisf<id>.arf, .rmf       ACIS-I-like response (hpcxt.prep.response)
    OUTDIR/regions/crop.reg, sources.reg     DS9 regions (fk5)
    OUTDIR/truth/temperature.fits            simulated kT (keV), binned by 4
    OUTDIR/truth/zones.fits                  zone interiors (0 none, 1 core, 2 ambient, 3 shock)
    OUTDIR/truth/truth.yaml                  everything injected

The sky
-------
A beta-model cluster (``beta`` 2/3) at z = 0.1 behind nH = 0.03e22 cm^-2,
whose projected temperature has three zones of constant kT: a cool core
(3 keV, a circle about the centre), the ambient gas (7 keV) and a hot
shocked region (12 keV, an off-centre ellipse on the west side). The
transitions are ``tanh`` steps a few arcsec wide. The spectrum is
``xsphabs*xsbremss`` (the model that needs no AtomDB), plus 3-5 absorbed
power-law point sources with a Gaussian PSF of about 1 arcsec.

How photons are drawn
---------------------
The sky is cut into fine cells (2 sky pixels, about 1 arcsec) in the
cluster's own tangent plane. The temperature is quantised to the zone
values and a few values between them; the folded channel distribution of
each quantised temperature (ARF x RMF of each observation) is computed once.
Each cell gets Poisson counts with mean ``norm x counts-per-norm(kT) x
exposure x vignetting``, each event a PI channel drawn from its
temperature's distribution, an energy uniform inside that channel and a
position uniform inside its cell. Events then get an arrival time (ACIS
frames of 3.24104 s), the telescope's dither (a Lissajous pattern, 8 arcsec
amplitude) and the roll of the observation moves them over the four ACIS-I
chips (1024 x 1024 pixels of 0.492 arcsec, 20-pixel gaps), and those that
miss a chip are lost, as in a real observation; the exposure map averages
the same dither over time.

The particle background is flat over the chips and hard (lots of 9-12 keV
counts, Ni and Au fluorescence lines); it is not folded through the ARF nor
vignetted. One background flare per observation (a few ks at several times
the quiescent rate) shows in the 9-12 keV light curve. A few events land on
ACIS-S (ccd_id 6) and a few lie outside 0.3-11 keV so that prep's filters
have something to remove.

What is simplified: no PSF growth off axis, achromatic vignetting, no bad
pixels or columns, no readout streaks, an exposure map at one energy
(2.3 keV), one ARF/RMF per observation, the aim point 2.5 arcmin from the
chip gaps (so the gaps miss the cool core and the shock), and the blank-sky
file is made in the observation's own frame (as if ``reproject_events``
had already run). Everything is deterministic for a
given seed, headers included (no dates of writing).

Presets
-------
``small`` (tests) and ``demo`` (``hpcxt demo``) are two overlapping
pointings; ``large`` (benchmarks) is a 2 x 2 mosaic of four 150 ks
pointings of a brighter, larger cluster: over 30 million events and a crop
of 1024 x 1024 image pixels. Events are drawn and written a time slice at
a time, so memory stays bounded whatever the preset.

Modules
-------
``_presets``  what is simulated: the cluster, its zones, the presets
``_sky``      the cluster model: brightness, temperature, truth zones, cells
``_acis``     the instrument: chips, dither, vignetting, frames, background spectra
``_pointing`` one observation's sky frame, aim point and exposure map
``_events``   drawing events, a time slice (chunk) at a time
``_files``    Chandra-format files: streamed event files, images, DS9 regions
``_truth``    truth images and truth.yaml, region files, config.yaml
``_simulate`` :func:`simulate`, which writes them all
"""



from ._acis import (ACIS_I, AIM_PLANE, CHIP_GAP, CHIP_ORIGINS, CHIP_PIXELS, DITHER_AMPLITUDE,
                    DITHER_PERIODS, DTCOR, EXPMAP_ENERGY_KEV, FRAME_TIME, GRADE_SHARES, GRADES,
                    IMAGE_BIN, MJDREF, PARTICLE_RANGE_KEV, SKY_PIXEL_ARCSEC,
                    VIGNETTING_AT_CORNER, channel_energy_eV, chip_coverage, dither_offset,
                    draw_from_spectrum, energy_to_pi, flare_pdf, focal_to_sky, frame_times,
                    locate_on_chips, near_chips, particle_pdf, rotation, sample_energies,
                    sky_to_focal, vignetting)
from ._events import CHUNK_PHOTONS, time_chunks
from ._files import EVENT_COLUMNS
from ._presets import (CLUSTER, PRESETS, PSF_SIGMA, SOURCE_REGION_RADIUS, SPECTRAL_MODEL,
                       ZONE_IDS, ZONE_KT, ObservationSpec, Preset)
from ._simulate import SimulationSummary, expected_events, simulate
from ._sky import (beta_profile, brightness_field, quantise, temperature_field,
                   temperature_levels, zone_distances, zone_interiors)

__all__ = [
    "ACIS_I", "AIM_PLANE", "CHIP_GAP", "CHIP_ORIGINS", "CHIP_PIXELS", "CHUNK_PHOTONS", "CLUSTER",
    "DITHER_AMPLITUDE", "DITHER_PERIODS", "DTCOR", "EVENT_COLUMNS", "EXPMAP_ENERGY_KEV",
    "FRAME_TIME", "GRADES", "GRADE_SHARES", "IMAGE_BIN", "MJDREF", "PARTICLE_RANGE_KEV",
    "PRESETS", "PSF_SIGMA", "SKY_PIXEL_ARCSEC", "SOURCE_REGION_RADIUS", "SPECTRAL_MODEL",
    "VIGNETTING_AT_CORNER", "ZONE_IDS", "ZONE_KT", "ObservationSpec", "Preset",
    "SimulationSummary", "beta_profile", "brightness_field", "channel_energy_eV",
    "chip_coverage", "dither_offset", "draw_from_spectrum", "energy_to_pi", "expected_events",
    "flare_pdf", "focal_to_sky", "frame_times", "locate_on_chips", "near_chips",
    "particle_pdf", "quantise", "rotation", "sample_energies", "simulate", "sky_to_focal",
    "temperature_field", "temperature_levels", "time_chunks", "vignetting", "zone_distances",
    "zone_interiors",
]
