"""A small XSPEC table model that stands in for APEC in the tests. NOT APEC.

No abundance-sensitive plasma model evaluates here without AtomDB, so the
abundance tests build their own OGIP 92-009 additive table model
(``atable``): XSPEC's bremsstrahlung continuum plus two Gaussian line
complexes, near 1 keV (an Fe-L-like blend) and at 6.7 keV (Fe XXV K),
whose equivalent widths are proportional to the abundance and vary with
kT. The physics is made up; the shape of the problem is APEC's: at fixed
kT the spectrum is linear in the abundance, and the lines are what
constrain it.

Parameters named as APEC's (``kT``, ``Abundanc``) plus ``redshift``
(the table's ``REDSHIFT = T`` keyword, Sherpa's own parameter), so
:data:`hpcxt.models.TABLE_PARAMETER_NAMES` recognises them.

Written with astropy: PRIMARY, PARAMETERS, ENERGIES, SPECTRA extensions,
spectra in photons cm^-2 s^-1 per energy bin for norm 1, the first
parameter looping slowest (as ``itertools.product``).
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import numpy as np

#: Tabulated parameter grids: kT (keV, log interpolation) and abundance (solar).
KT_GRID = np.geomspace(1.0, 20.0, 25)
ABUNDANCE_GRID = np.linspace(0.0, 2.0, 5)
#: Energy grid of the table, keV (covers the test responses' 0.3-11 keV).
ENERGY_EDGES = np.arange(0.1, 12.0 + 1e-9, 0.01)
#: Line complexes: (energy keV, Gaussian sigma keV, equivalent width at solar
#: abundance keV, kT of the largest width keV, width of that peak in ln kT).
LINES = ((1.0, 0.08, 0.5, 1.2, 0.6), (6.7, 0.04, 0.9, 5.0, 0.8))


def line_equivalent_widths(kT: float, abundance: float) -> list[float]:
    """Equivalent width of each complex of :data:`LINES`, keV."""
    return [abundance * ew * np.exp(-0.5 * (np.log(kT / peak) / width) ** 2)
            for _, _, ew, peak, width in LINES]


def standin_spectrum(kT: float, abundance: float, elo, ehi) -> np.ndarray:
    """Photons cm^-2 s^-1 per bin for norm 1: xsbremss plus the lines."""
    from scipy.special import erf

    from hpcxt.models import load_xspec

    xspec = load_xspec()
    brems = xspec.XSbremss("standin_brems")
    brems.kT.val = kT
    brems.norm.val = 1.0
    with contextlib.redirect_stdout(io.StringIO()):
        cont = np.asarray(brems(elo, ehi), dtype=float)
    density = cont / (ehi - elo)   # photons cm^-2 s^-1 keV^-1
    emid = 0.5 * (elo + ehi)
    out = cont.copy()
    for (e0, sig, _, _, _), ew in zip(LINES, line_equivalent_widths(kT, abundance)):
        flux = ew * np.interp(e0, emid, density)
        cdf = 0.5 * (1 + erf((np.append(elo, ehi[-1]) - e0) / (np.sqrt(2) * sig)))
        out += flux * np.diff(cdf)
    return out


def write_standin_table(path) -> Path:
    """Write the stand-in table model to ``path`` (OGIP 92-009 atable); return it."""
    from astropy.io import fits

    path = Path(path)
    elo, ehi = ENERGY_EDGES[:-1], ENERGY_EDGES[1:]
    grids = (KT_GRID, ABUNDANCE_GRID)
    paramvals = np.array(list(itertools.product(*grids)), dtype=np.float32)
    spectra = np.array([standin_spectrum(float(kT), float(z), elo, ehi)
                        for kT, z in paramvals], dtype=np.float32)

    def ogip(h, clas2=None):
        h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
        h["HDUCLAS1"] = ("XSPEC TABLE MODEL", "model spectra for XSPEC")
        if clas2:
            h["HDUCLAS2"] = clas2
        h["HDUVERS"] = "1.0.0"
        return h

    primary = fits.PrimaryHDU()
    ph = ogip(primary.header)
    ph["HDUVERS"] = "1.2.0"
    ph["MODLNAME"] = ("apecstd", "stand-in for APEC, NOT APEC (hpcxt tests)")
    ph["MODLUNIT"] = "photons/cm^2/s"
    ph["ADDMODEL"] = (True, "additive table model")
    ph["REDSHIFT"] = (True, "redshift is a parameter")
    ph["ESCALE"] = False
    ph["LOELIMIT"] = 0.0
    ph["HIELIMIT"] = 0.0
    nval = max(len(g) for g in grids)
    values = np.zeros((len(grids), nval), dtype=np.float32)
    for i, g in enumerate(grids):
        values[i, :len(g)] = g
    params = fits.BinTableHDU.from_columns([
        fits.Column("NAME", "12A", array=np.array(["kT", "Abundanc"])),
        fits.Column("METHOD", "J", array=np.array([1, 0])),
        fits.Column("INITIAL", "E", array=np.array([5.0, 0.3])),
        fits.Column("DELTA", "E", array=np.array([0.01, 0.01])),
        fits.Column("MINIMUM", "E", array=np.array([g[0] for g in grids])),
        fits.Column("BOTTOM", "E", array=np.array([g[0] for g in grids])),
        fits.Column("TOP", "E", array=np.array([g[-1] for g in grids])),
        fits.Column("MAXIMUM", "E", array=np.array([g[-1] for g in grids])),
        fits.Column("NUMBVALS", "J", array=np.array([len(g) for g in grids])),
        fits.Column("VALUE", f"{nval}E", array=values),
    ], name="PARAMETERS")
    ogip(params.header, "PARAMETERS")
    params.header["NINTPARM"] = len(grids)
    params.header["NADDPARM"] = 0
    energies = fits.BinTableHDU.from_columns([
        fits.Column("ENERG_LO", "E", unit="keV", array=elo.astype(np.float32)),
        fits.Column("ENERG_HI", "E", unit="keV", array=ehi.astype(np.float32)),
    ], name="ENERGIES")
    ogip(energies.header, "ENERGIES")
    spec = fits.BinTableHDU.from_columns([
        fits.Column("PARAMVAL", f"{len(grids)}E", array=paramvals),
        fits.Column("INTPSPEC", f"{elo.size}E", unit="photons/cm^2/s", array=spectra),
    ], name="SPECTRA")
    ogip(spec.header, "MODEL SPECTRA")
    fits.HDUList([primary, params, energies, spec]).writeto(path, overwrite=True)
    return path


def table_rate(response, table_path, kT: float, abundance: float, norm: float,
               nh: float = 0.03, redshift: float = 0.1) -> np.ndarray:
    """Expected counts/s per channel of ``xsphabs*atable{table_path}`` through ``response``.

    Evaluated by Sherpa's own table-model interpolation, the model the fits use.
    """
    from hpcxt.models import build_model

    pm = build_model(f"xsphabs*atable{{{table_path}}}", nh, abundance, redshift, kT=kT,
                     norm=norm, name="truth")
    with contextlib.redirect_stdout(io.StringIO()):
        photons = np.asarray(pm.model(response.arf_energ_lo, response.arf_energ_hi))
    return (photons * response.specresp) @ response.rmf_matrix.astype(np.float64)
