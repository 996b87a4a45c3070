"""Synthetic data with known temperatures for the fit tests.

- :func:`default_response`: :func:`hpcxt.prep.response.acis_i_response`, or
  :func:`gaussian_response` (an ACIS-like ARF and a Gaussian-resolution RMF)
  when that module is not there.
- :func:`draw_spectra`: Poisson source and background spectra of a region
  for a known kT through ``xsphabs*xsbremss``.
- :func:`make_fit_workdir`: a small bundle, region table and config.yaml in
  a folder, so ``hpcxt fit CONFIG`` runs without prep or scalemap.

The offline model is ``xsphabs*xsbremss``: xsapec needs AtomDB files, which
are not installed here.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from hpcxt.io.bundle import Bundle, ImageGrid, ObsData, Response, write_bundle
from hpcxt.io.config import dump_config
from hpcxt.io.regions_table import RegionTable, write_regions

MODEL = "xsphabs*xsbremss"
NH = 0.03            # 1e22 cm^-2
REDSHIFT = 0.1
ABUNDANCE = 0.3


def gaussian_response(nchan: int = 1024, chan_width: float = 0.0146, area: float = 400.0,
                      fwhm_at_1keV: float = 0.1) -> Response:
    """ACIS-like response: smooth ARF (cm**2) and Gaussian RMF.

    Energies 0.3-11 keV in 10 eV bins; channel ``i`` (1-based) covers
    ``[(i-1)*chan_width, i*chan_width)`` keV; resolution FWHM grows as
    ``sqrt(E)``.
    """
    edges = np.arange(0.3, 11.0 + 1e-9, 0.01)
    elo, ehi = edges[:-1], edges[1:]
    emid = 0.5 * (elo + ehi)
    specresp = area * np.exp(-0.5 * ((np.log(emid) - np.log(1.5)) / 0.9) ** 2)
    chan_edges = np.arange(nchan + 1) * chan_width
    sigma = fwhm_at_1keV * np.sqrt(emid) / 2.3548
    # Integrate the Gaussian over each channel; clip tails to keep it sparse.
    from scipy.special import erf
    z = (chan_edges[None, :] - emid[:, None]) / (np.sqrt(2.0) * sigma[:, None])
    cdf = 0.5 * (1.0 + erf(z))
    matrix = np.diff(cdf, axis=1)
    matrix[matrix < 1e-6] = 0.0
    matrix /= matrix.sum(axis=1, keepdims=True)
    return Response(arf_energ_lo=elo, arf_energ_hi=ehi, specresp=specresp,
                    rmf_energ_lo=elo, rmf_energ_hi=ehi, rmf_matrix=matrix.astype(np.float32),
                    e_min=chan_edges[:-1], e_max=chan_edges[1:], offset=1)


def default_response() -> Response:
    """The ACIS-I-like response of :mod:`hpcxt.prep.response`, else the Gaussian one."""
    try:
        from hpcxt.prep.response import acis_i_response
    except ImportError:
        return gaussian_response()
    return acis_i_response()


def model_rate(response: Response, kT: float, norm: float) -> np.ndarray:
    """Expected counts/s per channel of xsphabs*xsbremss through ``response``."""
    from hpcxt.models import load_xspec
    xspec = load_xspec()
    absorb, brems = xspec.XSphabs("t_abs"), xspec.XSbremss("t_brems")
    absorb.nH.val = NH
    brems.kT.val = kT
    brems.norm.val = norm
    with contextlib.redirect_stdout(io.StringIO()):
        photons = np.asarray((absorb * brems)(response.arf_energ_lo, response.arf_energ_hi))
    return (photons * response.specresp) @ response.rmf_matrix.astype(np.float64)


def background_rate(response: Response, per_channel: float = 2e-4) -> np.ndarray:
    """A flat-ish particle background, counts/s per channel (unfolded)."""
    nchan = response.rmf_matrix.shape[1]
    e = 0.5 * (response.e_min + response.e_max)
    return per_channel * (0.5 + np.exp(-e / 3.0)) * np.ones(nchan)


def draw_spectra(rng, response: Response, kT: float, norm: float, exposure: float,
                 bkg_scale: float, bkg_rate: np.ndarray):
    """Poisson source (with background) and background spectra of one region.

    The background spectrum is drawn with expectation
    ``bkg_rate * exposure / bkg_scale`` so that ``bkg_scale`` times it is the
    expected background in the source spectrum.
    """
    mu_src = model_rate(response, kT, norm) * exposure
    mu_bkg = bkg_rate * exposure
    src = rng.poisson(mu_src + mu_bkg)
    bkg = rng.poisson(mu_bkg / bkg_scale)
    return src.astype(np.int64), bkg.astype(np.int64)


def _events_from_spectrum(rng, expected: np.ndarray, x0: float, y0: float, radius: float):
    """Events uniformly in a circle with PI drawn from a channel spectrum."""
    counts = rng.poisson(expected)
    pi = np.repeat(np.arange(1, expected.size + 1, dtype=np.int32), counts)
    n = pi.size
    r = radius * np.sqrt(rng.random(n))
    phi = 2 * np.pi * rng.random(n)
    return x0 + r * np.cos(phi), y0 + r * np.sin(phi), pi


def make_fit_workdir(root, n_side: int = 6, seed: int = 3, errors: str = "covar",
                     statistic: str = "wstat", checkpoint_seconds: float = 0.0,
                     batch_size="auto", exposure=(40e3, 25e3), norm_per_region: float = 4e-5,
                     extra_fit: dict | None = None, kT_true=None, source_rate=None,
                     wcs_header: str = "") -> Path:
    """A workdir with prep/bundle.h5, acb/regions.h5 and config.yaml.

    ``n_side`` x ``n_side`` regions on a grid, each a circle of 10 sky pixels
    holding its own source (kT rising from 2 to 10 keV across the grid),
    over a background. Two observations; the second does not cover the
    last column of regions (``used`` False). Region 0 is a tiny circle with
    a handful of counts (a "too few counts" failure) and region 1 is
    covered by no observation. The true temperatures are saved in
    ``kT_true.npy`` next to the config.

    ``kT_true`` (n_side**2 values, keV) replaces the temperatures;
    ``source_rate(response, i, norm)`` (counts/s per channel of region
    ``i``) replaces :func:`model_rate` (e.g. another model).
    ``wcs_header`` (FITS cards, newline-separated) gives the image grid a
    celestial WCS, which ``hpcxt maps`` needs.

    Returns
    -------
    Path
        The config file.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    resp = default_response()
    nobs = len(exposure)
    spacing, radius = 30.0, 10.0
    size = spacing * (n_side + 1)
    bin_ = 4
    ny = nx = int(np.ceil(size / bin_))
    grid = ImageGrid(shape=(ny, nx), x0=0.0, y0=0.0, bin=bin_, wcs_header=wcs_header)
    n = n_side * n_side
    cols, rows = np.meshgrid(np.arange(n_side), np.arange(n_side))
    xc = spacing * (1 + cols.ravel()).astype(float)
    yc = spacing * (1 + rows.ravel()).astype(float)
    kT_true = np.linspace(2.0, 10.0, n) if kT_true is None else np.asarray(kT_true, float)
    if source_rate is None:
        def source_rate(response, i, norm):
            return model_rate(response, kT_true[i], norm)
    norms = np.full(n, norm_per_region)
    norms[0] = norm_per_region * 0.01
    bkg_scale = (0.8, 1.25)[:nobs] if nobs <= 2 else tuple(1.0 for _ in range(nobs))
    brate = background_rate(resp, 5e-6)
    observations = []
    for k in range(nobs):
        xs, ys, pis, bxs, bys, bpis = [], [], [], [], [], []
        for i in range(n):
            mu = source_rate(resp, i, norms[i]) * exposure[k]
            x, y, p = _events_from_spectrum(rng, mu + brate * exposure[k], xc[i], yc[i],
                                            radius)
            xs.append(x), ys.append(y), pis.append(p)
            bx, by, bp = _events_from_spectrum(rng, brate * exposure[k] / bkg_scale[k],
                                               xc[i], yc[i], radius)
            bxs.append(bx), bys.append(by), bpis.append(bp)

        def ev(a, b, c):
            x = np.concatenate(a)
            return {"x": x, "y": np.concatenate(b), "pi": np.concatenate(c).astype(np.int32),
                    "energy": np.zeros(x.size, dtype=np.float32)}

        observations.append(ObsData(
            obsid=str(1000 + k), exposure=float(exposure[k]), bkg_exposure=1e6,
            bkg_scale=float(bkg_scale[k]), events=ev(xs, ys, pis),
            bkg_events=ev(bxs, bys, bpis), exposure_map=np.ones((ny, nx), np.float32),
            fov=np.ones((ny, nx), bool), response=resp))
    zeros = np.zeros((ny, nx))
    bundle = Bundle(grid=grid, counts=zeros, background=zeros, exposure=zeros,
                    mask=np.ones((ny, nx), bool), observations=observations,
                    config_hash="synthetic")
    write_bundle(root / "work" / "prep" / "bundle.h5", bundle)

    used = np.ones((n, nobs), bool)
    fraction = np.ones((n, nobs))
    if nobs > 1:
        last_col = cols.ravel() == n_side - 1
        used[last_col, 1] = False
        fraction[last_col, 1] = 0.05
    used[1, :] = False
    fraction[1, :] = 0.0
    exposure_time = fraction * np.asarray(exposure, float)[None, :]
    radius_sky = np.full(n, radius)
    radius_sky[0] = 2.0   # a handful of counts: "too few counts"
    row_pix, col_pix = grid.sky_to_pixel(xc, yc)
    table = RegionTable(
        region_id=np.arange(n, dtype=np.int64), row=np.floor(row_pix).astype(np.int32),
        col=np.floor(col_pix).astype(np.int32), x=xc, y=yc,
        radius=radius_sky / bin_, radius_sky=radius_sky, fraction=fraction,
        effective_exposure=fraction * 400.0, exposure_time=exposure_time, used=used,
        obsids=[o.obsid for o in observations], config_hash="synthetic",
        bundle_hash="synthetic")
    write_regions(root / "work" / "acb" / "regions.h5", table)
    np.save(root / "kT_true.npy", kT_true)

    # verification against Sherpa (20 Sherpa fits a run) is off here: its own
    # tests (tests/test_engines.py) turn it on. kT_range 0.5-30 keV (the
    # regions are 2-10 keV) builds the template engine's tables in about a
    # quarter of the time the default 0.08-64 keV takes, in every fit launched.
    fit = {"model": MODEL, "kT_init": 8.0, "kT_range": [0.5, 30.0], "statistic": statistic,
           "errors": errors, "min_counts": 100, "checkpoint_seconds": checkpoint_seconds,
           "batch_size": batch_size, "verify_fraction": 0.0}
    fit.update(extra_fit or {})
    cfg = {
        "cluster": {"name": "synthetic", "redshift": REDSHIFT, "nh": NH,
                    "abundance": ABUNDANCE},
        "workdir": "work",
        "observations": [{"obsid": o.obsid} for o in observations],
        "fit": fit,
    }
    path = root / "config.yaml"
    path.write_text(dump_config(cfg))
    return path
