"""Pull study of the fitted temperature: which statistic and grouping are unbiased.

Run from the repository root::

    .venv/bin/python benchmarks/pull_study.py --quick   # 200 spectra per cell
    .venv/bin/python benchmarks/pull_study.py           # 1,000 per cell (README table)

``--jobs N`` shares the cells out over N forked processes; ``--counts``,
``--kT``, ``--choices``, ``--backgrounds`` select cells and choices (the
README's rerun of the hot 1,000-count cells uses them).

Simulated regions: two observations (40 and 25 ks) with the ACIS-I-like
1024-channel responses of :func:`hpcxt.prep.response.acis_i_response` (the
second with 20% more contaminant), ``xsphabs*xsbremss`` (nH 0.03e22, z 0.1)
folded through them with Poisson noise, plus a flat-ish unfolded particle
background in the source spectrum and a Poisson background spectrum of the
same circle. Two backgrounds:

``low``   expected background in the source spectra 10% of the source
          counts; background spectra 5 and 4 times deeper (``bkg_scale``
          0.2, 0.25: a blank-sky file, as in ``hpcxt simulate``'s presets);
``high``  50% of the source counts; background spectra about as deep as
          the source's background (``bkg_scale`` 0.8, 1.25).

A cell is (background, expected source counts in 0.7-8 keV over both
observations, true kT). Every choice of statistic and grouping fits the same
spectra of a cell with the template engine (:func:`hpcxt.template_fit.fit_profile`,
conf bounds at 1 sigma, ``kT_init`` 8 keV, ``kT_range`` 0.08-64 keV), with
the statistic and grouping :func:`hpcxt.fit.plan_statistic` gives it, as a
run with those settings would.

Per cell and choice it prints:

``pull``   mean of (kT - truth) / sigma, sigma the bound on the truth's side
           (``kT_hi - kT`` when the fit is below the truth, ``kT - kT_lo``
           otherwise), over the fits with an answer: certified, or not
           certified only because a bound or the best fit lies on
           xsbremss's jump at 13.58 keV (:data:`AT_JUMP`);
``cov``    1-sigma coverage: share of those fits with kT_lo <= truth <= kT_hi;
``unc``    share of regions not certified by the template engine for any
           reason (a run refits those with Sherpa) or not fittable at all.

The summary gives, over the cells with at least 1,000 counts, the worst mean
pull, the range of coverage, the largest share not certified and the largest
share without an answer (no finite bounds, left out of pull and coverage).
Then the choices that meet the bar of issue 10 in every cell with at least
1,000 counts (|mean pull| <= 0.15, coverage 68% +- 5%), and the one closest
to it otherwise (largest excess over the bar, smallest first).

Not a test: nothing is asserted. The same seed gives the same table.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@dataclass(frozen=True)
class Choice:
    """A statistic and its grouping (source and background counts per bin)."""

    key: str
    statistic: str
    min_src: int = 0
    min_bkg: int = 0

    @property
    def label(self) -> str:
        if self.statistic != "wstat":
            return self.statistic
        if self.min_src == 0 and self.min_bkg == 0:
            return "wstat ungrouped"
        return f"wstat {self.min_src}/{self.min_bkg}"


CHOICES = (
    Choice("wstat-10-2", "wstat", 10, 2),
    Choice("wstat-0-1", "wstat", 0, 1),
    Choice("wstat-5-1", "wstat", 5, 1),
    Choice("wstat-20-5", "wstat", 20, 5),
    Choice("wstat-25-0", "wstat", 25, 0),
    Choice("wstat-0-0", "wstat", 0, 0),
    Choice("cstat", "cstat"),
    Choice("chi2gehrels", "chi2gehrels"),
)
COUNTS = (500, 1000, 2500, 5000, 10000)
TEMPERATURES = (1.0, 3.0, 7.0, 11.5, 15.0)
EXPOSURES = (40e3, 25e3)
#: background: (expected background counts in the source spectra as a share
#: of the source counts, bkg_scale of each observation)
BACKGROUNDS = {"low": (0.10, (0.2, 0.25)), "high": (0.50, (0.8, 1.25))}
#: The one reason for not certifying a fit that leaves its answer usable here:
#: xsbremss jumps by 0.3-3% at 13.58 keV, and a bound or best fit there is
#: flagged because Sherpa's optimiser may stop elsewhere; the template's is
#: the profile's answer. Leaving those fits out would select on the result.
AT_JUMP = "best fit or a bound at a jump of the model in kT"
#: The bar of issue 10, in cells with at least MIN_COUNTS counts.
MAX_PULL, COVERAGE, COVERAGE_TOL, MIN_COUNTS = 0.15, 0.68, 0.05, 1000


def setup(choices):
    """Responses, fitted band per observation, templates and per-choice settings."""
    from template_fixtures import responses, settings

    from hpcxt.template_fit import build_templates, energy_band
    resps = responses(2)
    base = settings(errors="conf")
    bands = [energy_band(base, r) for r in resps]
    templates = build_templates(base, resps, band_masks=bands)
    per_choice = {c.key: replace(base, statistic=c.statistic, wstat_min_src=c.min_src,
                                 wstat_min_bkg=c.min_bkg) for c in choices}
    return resps, bands, templates, per_choice


def expected_spectra(resps, bands, kT: float, counts: float, background: str):
    """Expected source+background and background-spectrum counts per observation."""
    from fit_fixtures import background_rate, model_rate
    share, scales = BACKGROUNDS[background]
    rates = [model_rate(r, kT, 1.0) for r in resps]
    norm = counts / sum(t * rate[b].sum() for rate, b, t in zip(rates, bands, EXPOSURES))
    shape = [background_rate(r, 1.0) * t for r, t in zip(resps, EXPOSURES)]
    b_norm = share * counts / sum(s[b].sum() for s, b in zip(shape, bands))
    out = []
    for rate, s, t, scale in zip(rates, shape, EXPOSURES, scales):
        mu_bkg = b_norm * s
        out.append((norm * rate * t + mu_bkg, mu_bkg / scale, t, scale))
    return out


def run_cell(rng, expected, n: int, choices, templates, bands, per_choice):
    """Fit n simulated regions of one cell with every choice.

    Returns
    -------
    dict key -> (list of certified TemplateResult, number of regions not
    certified or not fittable)
    """
    from hpcxt.fit import ObsSpectrum, plan_statistic
    from hpcxt.template_fit import fit_profile

    draws = [(rng.poisson(mu_src, size=(n, mu_src.size)),
              rng.poisson(mu_bkg, size=(n, mu_bkg.size)), t, scale)
             for mu_src, mu_bkg, t, scale in expected]
    fits = {c.key: [] for c in choices}
    bad = dict.fromkeys(fits, 0)
    for i in range(n):
        spectra = [ObsSpectrum(k, src[i], bkg[i], t, scale)
                   for k, (src, bkg, t, scale) in enumerate(draws)]
        for c in choices:
            s = per_choice[c.key]
            plan = plan_statistic(s, s.statistic, spectra, bands)
            res = None
            if plan.statistic is not None:
                try:
                    res = fit_profile(templates, spectra, plan.statistic, plan.groupings,
                                      s.kT_range, s.error_sigma, s.errors, s.kT_init)
                except (ValueError, FloatingPointError):
                    res = None
            if res is None or not res.certified:
                bad[c.key] += 1
            if res is not None and (res.certified or res.reason == AT_JUMP):
                fits[c.key].append(res)
    return {k: (fits[k], bad[k]) for k in fits}


def summarise(results, truth: float, n_regions: int):
    """(mean pull, coverage, not-certified share, fits used) of one cell and choice."""
    fits, bad = results
    kT = np.array([r.kT for r in fits])
    lo = np.array([r.kT_lo for r in fits])
    hi = np.array([r.kT_hi for r in fits])
    ok = np.isfinite(kT) & np.isfinite(lo) & np.isfinite(hi)
    kT, lo, hi = kT[ok], lo[ok], hi[ok]
    if not kT.size:
        return math.nan, math.nan, bad / n_regions, 0
    sigma = np.where(kT < truth, hi - kT, kT - lo)
    pull = (kT - truth) / sigma
    covered = (lo <= truth) & (truth <= hi)
    return float(pull.mean()), float(covered.mean()), bad / n_regions, int(kT.size)


def excess(stats) -> float:
    """How far a cell is outside the bar (0 inside), in units of the bar's tolerances."""
    pull, cov, _, n = stats
    if n == 0 or not np.isfinite(pull):
        return math.inf
    return max(0.0, abs(pull) / MAX_PULL - 1.0, abs(cov - COVERAGE) / COVERAGE_TOL - 1.0)


def print_tables(table, choices, backgrounds, per_cell: int) -> dict:
    """Markdown tables: one per choice and background, then the verdict. Returns worst excess."""
    print(f"\n{per_cell} regions per cell; entries: mean pull / 1-sigma coverage / "
          f"not certified or failed\n")
    worst = {}
    for c in choices:
        for bg in backgrounds:
            print(f"**{c.label}**, {bg} background\n")
            print("| counts | " + " | ".join(f"{kT:g} keV" for kT in TEMPERATURES) + " |")
            print("|---:|" + "---|" * len(TEMPERATURES))
            for counts in COUNTS:
                cells = []
                for kT in TEMPERATURES:
                    st = table[bg, counts, kT][c.key]
                    pull, cov, unc, _ = st
                    mark = "" if counts < MIN_COUNTS or excess(st) == 0 else " ✗"
                    cells.append(f"{pull:+.2f} / {100 * cov:.0f}% / {100 * unc:.1f}%{mark}")
                    if counts >= MIN_COUNTS:
                        worst[c.key] = max(worst.get(c.key, 0.0), excess(st))
                print(f"| {counts:,} | " + " | ".join(cells) + " |")
            print()
    print(f"Bar (issue 10): |mean pull| <= {MAX_PULL} and coverage {100 * COVERAGE:.0f}% +- "
          f"{100 * COVERAGE_TOL:.0f}% in every cell with at least {MIN_COUNTS:,} counts "
          f"(✗: a cell outside it).\n")
    print("| choice | worst pull (>= 1,000 counts) | coverage range | most not certified | "
          "most without an answer | cells outside the bar | worst excess |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for c in choices:
        sts = [table[bg, n, kT][c.key] for bg in backgrounds for n in COUNTS
               for kT in TEMPERATURES if n >= MIN_COUNTS]
        pulls = [s[0] for s in sts]
        covs = [s[1] for s in sts]
        i = int(np.nanargmax(np.abs(pulls)))
        outside = sum(excess(s) > 0 for s in sts)
        print(f"| {c.label} | {pulls[i]:+.2f} | {100 * np.nanmin(covs):.0f}-"
              f"{100 * np.nanmax(covs):.0f}% | {100 * max(s[2] for s in sts):.1f}% | "
              f"{100 * (1 - min(s[3] for s in sts) / per_cell):.1f}% | "
              f"{outside}/{len(sts)} | {worst[c.key]:.2f} |")
    print()
    ok = [c for c in choices if worst[c.key] == 0]
    if ok:
        print("Meet the bar: " + ", ".join(c.label for c in ok))
    else:
        best = min(choices, key=lambda c: worst[c.key])
        print(f"None meets the bar; closest: {best.label} (worst excess {worst[best.key]:.2f})")
    return worst


_STATE: dict = {}


def _cell(cell):
    """One cell's statistics (run in the parent or a forked worker)."""
    bg, counts, kT, seed, expected = cell
    st = _STATE
    c0 = time.process_time()
    res = run_cell(np.random.default_rng(seed), expected, st["per_cell"], st["choices"],
                   st["templates"], st["bands"], st["per_choice"])
    stats = {k: summarise(v, kT, st["per_cell"]) for k, v in res.items()}
    print(f"  {bg} background, {counts} counts, {kT:g} keV done", file=sys.stderr, flush=True)
    return (bg, counts, kT), stats, time.process_time() - c0


def main(argv=None) -> None:
    global COUNTS, TEMPERATURES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 regions per cell")
    ap.add_argument("--per-cell", type=int, help="regions per cell (default 1000; 200 quick)")
    ap.add_argument("--jobs", type=int, default=1, help="processes (cells are shared out)")
    ap.add_argument("--seed", type=int, default=20261210)
    ap.add_argument("--choices", default=",".join(c.key for c in CHOICES),
                    help="comma-separated keys: " + ", ".join(c.key for c in CHOICES))
    ap.add_argument("--backgrounds", default=",".join(BACKGROUNDS))
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)),
                    help="comma-separated source counts of the cells")
    ap.add_argument("--kT", default=",".join(f"{v:g}" for v in TEMPERATURES),
                    help="comma-separated true temperatures of the cells, keV")
    args = ap.parse_args(argv)
    per_cell = args.per_cell or (200 if args.quick else 1000)
    keys = args.choices.split(",")
    choices = [c for c in CHOICES if c.key in keys]
    backgrounds = args.backgrounds.split(",")
    COUNTS = tuple(int(v) for v in args.counts.split(","))
    TEMPERATURES = tuple(float(v) for v in args.kT.split(","))
    t0, c0 = time.perf_counter(), time.process_time()
    resps, bands, templates, per_choice = setup(choices)
    cells = [(bg, counts, kT, (args.seed, b_i, counts, int(round(kT * 10))),
              expected_spectra(resps, bands, kT, counts, bg))
             for b_i, bg in enumerate(backgrounds) for counts in COUNTS for kT in TEMPERATURES]
    _STATE.update(choices=choices, templates=templates, bands=bands, per_choice=per_choice,
                  per_cell=per_cell)
    if args.jobs > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            done = pool.map(_cell, cells, chunksize=1)
    else:
        done = [_cell(cell) for cell in cells]
    table = {key: stats for key, stats, _ in done}
    cpu = time.process_time() - c0 + sum(c for _, _, c in done if args.jobs > 1)
    n_fits = len(cells) * per_cell * len(choices)
    print_tables(table, choices, backgrounds, per_cell)
    print(f"\n{n_fits:,} fits in {time.perf_counter() - t0:.0f} s wall, {cpu:.0f} s CPU "
          f"({n_fits / cpu:.0f} fits per CPU-second, simulation included); command: "
          f"benchmarks/pull_study.py {' '.join(sys.argv[1:] if argv is None else argv)}")


if __name__ == "__main__":
    main()
