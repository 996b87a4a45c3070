"""Flare rejection on a binned light curve: the rules of CIAO's ``deflare``.

``deflare`` (ciao-contrib ``lightcurves.py``) has two methods, and both prep
backends use the one chosen in ``prep.deflare.method``: the ``ciao`` backend
runs ``deflare`` itself, the ``products`` backend calls :func:`good_bins` on
the light curve it bins from the event file. Given the same light curve
(counts and exposure per bin) both give the same good bins.

``clean`` (``lc_clean``, deflare's default)
    1. A first mean: the mean rate of the bins with a non-zero rate,
       ``m0``. The bins within ``m0 +- clip * sqrt(m0 / bin_width)`` (a
       Poisson standard deviation of that mean, ``clip`` = ``nsigma``) give
       the mean ``m`` (or ``m`` = ``mean`` when given).
    2. The good bins are those with ``m / scale < rate < m * scale``
       (``scale`` 1.2), or, when ``stddev`` is given,
       ``m - stddev * sqrt(m / bin_width) < rate < m + stddev * sqrt(...)``.
    3. Fewer than ``minfrac`` (0.1) of the non-zero bins good is an error.

``sigma`` (``lc_sigma_clip``)
    1. Start from the bins with a non-zero rate; repeat until no bin is
       removed: mean and standard deviation of the kept rates, remove the
       kept bins more than ``nsigma`` standard deviations from the mean.
       There is no iteration limit: every pass removes a bin or stops.
    2. If every run of consecutive kept bins is at least ``minlength`` (3)
       bins long (or ``minlength`` is 1), the good bins are those whose rate
       lies strictly inside the last pass's ``mean +- nsigma * std`` (this
       can re-admit a bin removed in an early pass, and zero-rate bins when
       the lower limit is negative, as ``dmgti`` does with the rate
       filter); otherwise the kept bins in runs of at least ``minlength``.

``bin_width`` is the largest exposure of a bin (s), rates are counts per
second of exposure, and a bin with no exposure has rate 0, as in the
``COUNT_RATE`` and ``EXPOSURE`` columns ``dmextract opt=ltc1`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The two methods of CIAO's deflare (``method`` parameter).
METHODS = ("clean", "sigma")
#: Below this kept share of a light curve's exposure, prep warns (both backends).
LOW_KEPT_FRACTION = 0.8


class DeflareError(ValueError):
    """The light curve cannot be cleaned with these settings (deflare fails too)."""


@dataclass(frozen=True)
class DeflareRule:
    """The settings of one ``deflare`` run; names and defaults as in deflare.par.

    ``mean`` and ``stddev`` of None are deflare's 0 (not given).
    """

    method: str = "clean"
    nsigma: float = 3.0
    scale: float = 1.2
    stddev: float | None = None
    mean: float | None = None
    minfrac: float = 0.1
    minlength: int = 3

    @classmethod
    def from_config(cls, section) -> "DeflareRule":
        """The rule of a ``prep.deflare`` config section (or a plain dict)."""
        get = section.get if isinstance(section, dict) else lambda k, d=None: getattr(section, k, d)
        return cls(method=get("method", "clean"), nsigma=float(get("nsigma", 3.0)),
                   scale=float(get("scale", 1.2)), stddev=get("stddev"), mean=get("mean"),
                   minfrac=float(get("minfrac", 0.1)), minlength=int(get("minlength", 3)))

    def tool_args(self) -> list[str]:
        """The ``deflare`` parameters of this rule (those of its method only)."""
        args = [f"method={self.method}", f"nsigma={self.nsigma:g}"]
        if self.method == "clean":
            args += [f"scale={self.scale:g}", f"minfrac={self.minfrac:g}",
                     f"stddev={self.stddev or 0:g}", f"mean={self.mean or 0:g}"]
        else:
            args.append(f"minlength={self.minlength:d}")
        return args


def rates(counts, exposure) -> np.ndarray:
    """Count rate per bin (counts/s), 0 where a bin has no exposure."""
    counts = np.asarray(counts, float)
    exposure = np.asarray(exposure, float)
    out = np.zeros_like(counts)
    np.divide(counts, exposure, out=out, where=exposure > 0)
    return out


def clean_good_bins(rate, bin_width: float, rule: DeflareRule) -> np.ndarray:
    """Good bins by ``lc_clean``'s rule (see the module docstring).

    Parameters
    ----------
    rate : ndarray (m,)
        Count rate per bin, counts/s.
    bin_width : float
        Largest exposure of a bin, s.

    Returns
    -------
    ndarray (m,) bool
    """
    rate = np.asarray(rate, float)
    nonzero = rate > 0
    if not nonzero.any():
        raise DeflareError("no light-curve bin has a count rate above 0")
    mean = rule.mean
    if not mean:
        first = rate[nonzero].mean()
        half = rule.nsigma * np.sqrt(first / bin_width)
        near = (rate > first - half) & (rate < first + half)
        if not near.any():
            raise DeflareError(f"no bin lies within {rule.nsigma:g} sigma of the mean rate "
                               f"{first:g} ct/s")
        mean = rate[near].mean()
    if rule.stddev:
        half = rule.stddev * np.sqrt(mean / bin_width)
        lo, hi = mean - half, mean + half
    else:
        lo, hi = mean / rule.scale, mean * rule.scale
    good = (rate > lo) & (rate < hi)
    frac = good.sum() / nonzero.sum()
    if frac < rule.minfrac:
        raise DeflareError(f"only {good.sum()} of {nonzero.sum()} light-curve bins are good "
                           f"({frac:.3g} < minfrac {rule.minfrac:g})")
    return good


def _long_runs(flags: np.ndarray, minlength: int) -> tuple[np.ndarray, bool]:
    """``flags`` with runs of True shorter than ``minlength`` cleared; and whether none was."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    long_enough = (stops - starts) >= minlength
    out = np.zeros_like(flags)
    for a, b in zip(starts[long_enough], stops[long_enough]):
        out[a:b] = True
    return out, bool(long_enough.all())


def sigma_good_bins(rate, rule: DeflareRule) -> np.ndarray:
    """Good bins by ``lc_sigma_clip``'s rule (see the module docstring).

    Parameters
    ----------
    rate : ndarray (m,)
        Count rate per bin, counts/s.

    Returns
    -------
    ndarray (m,) bool
    """
    rate = np.asarray(rate, float)
    kept = rate > 0
    while True:
        if not kept.any():
            raise DeflareError("no light-curve bin passes the sigma clipping")
        mean, std = rate[kept].mean(), rate[kept].std()
        if std == 0:
            return kept  # every kept bin has the same rate: nothing to clip
        out = kept & (np.abs(rate - mean) > rule.nsigma * std)
        if not out.any():
            break
        kept &= ~out
    lo, hi = mean - rule.nsigma * std, mean + rule.nsigma * std
    runs, all_long = _long_runs(kept, max(int(rule.minlength), 1))
    if not runs.any():
        raise DeflareError(f"no run of {rule.minlength} consecutive bins passes the clipping")
    if rule.minlength <= 1 or all_long:
        return (rate > lo) & (rate < hi)
    return runs


def good_bins(counts, exposure, rule: DeflareRule) -> np.ndarray:
    """Good light-curve bins by the rule of ``rule.method``.

    Parameters
    ----------
    counts, exposure : ndarray (m,)
        Counts and exposure (s) per bin.
    rule : DeflareRule

    Returns
    -------
    ndarray (m,) bool
        True for the bins kept.

    Raises
    ------
    DeflareError
        When deflare would fail on this light curve (no bin with counts,
        fewer good bins than ``minfrac``, no run of ``minlength`` bins).
    """
    exposure = np.asarray(exposure, float)
    rate = rates(counts, exposure)
    if rule.method == "clean":
        return clean_good_bins(rate, float(exposure.max()) if exposure.size else 0.0, rule)
    if rule.method == "sigma":
        return sigma_good_bins(rate, rule)
    raise ValueError(f"unknown deflare method {rule.method!r}; expected one of {METHODS}")


def kept_fraction(exposure, good) -> float:
    """Share of the light curve's exposure in the good bins (0 when it has none)."""
    exposure = np.asarray(exposure, float)
    total = exposure.sum()
    return float(exposure[np.asarray(good, bool)].sum() / total) if total > 0 else 0.0


def low_kept_message(fraction: float, rule: DeflareRule) -> str | None:
    """What to tell the user when deflaring keeps little of the exposure, else None.

    ``lc_clean`` keeps only rates within a factor ``scale`` of its mean; a
    long flare pulls the first estimate of that mean up, and a light curve
    of few counts per bin has a Poisson scatter wider than that factor, so
    either can throw away much quiescent time. Both are visible in the
    light curve; the message says which settings change the outcome.
    """
    if fraction >= LOW_KEPT_FRACTION:
        return None
    if rule.method == "clean":
        advice = ("with a long flare set prep.deflare.mean to the quiescent rate (ct/s); with "
                  "few counts per bin set prep.deflare.stddev (a Poisson cut) or raise "
                  "prep.deflare.bin_seconds; or use method: sigma")
    else:
        advice = "check the light curve; a smaller prep.deflare.minlength keeps short good runs"
    return (f"deflare (method {rule.method}) keeps only {fraction:.0%} of the light curve's "
            f"exposure: {advice}")
