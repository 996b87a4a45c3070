"""The rules of CIAO's deflare (lc_clean, lc_sigma_clip) on light curves with known answers.

The same rules run in the ``products`` backend and, through the stand-in
``deflare``, in the ``ciao`` backend (tests/test_ciao.py checks they agree
on one light curve).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hpcxt.errors import InputError
from hpcxt.prep.deflare import DeflareError, DeflareRule, good_bins, kept_fraction
from hpcxt.prep.products import flare_bins

WIDTH = 100.0  # s per bin


def _curve(rates):
    rates = np.asarray(rates, float)
    return rates * WIDTH, np.full(rates.size, WIDTH)


# 20 quiet bins at 1 ct/s, one each at 1.1 and 0.9, a flare of two bins at
# 3 ct/s and an empty bin. lc_clean: the first mean is 28/24 = 1.167 ct/s;
# the bins within 3 * sqrt(1.167 / 100) = 0.32 of it average 1.0 ct/s.
CLEAN_RATES = [1.0] * 10 + [1.1, 3.0, 3.0, 0.9] + [1.0] * 10 + [0.0]


@pytest.mark.parametrize("settings,kept", [
    ({}, ["1.0", "1.1", "0.9"]),                 # 1.0/1.2 < rate < 1.0*1.2
    ({"scale": 1.05}, ["1.0"]),                  # 0.952 < rate < 1.05
    ({"stddev": 0.5}, ["1.0"]),                  # 1.0 -+ 0.5 * sqrt(1.0/100)
    ({"mean": 2.9, "minfrac": 0.05}, ["3.0"]),   # a given mean replaces the estimate
])
def test_clean_keeps_rates_within_scale_or_stddev_of_the_clipped_mean(settings, kept):
    counts, exposure = _curve(CLEAN_RATES)
    good = good_bins(counts, exposure, DeflareRule("clean", **settings))
    assert sorted({f"{r:.1f}" for r in np.asarray(CLEAN_RATES)[good]}) == sorted(kept)
    assert good.sum() == sum(CLEAN_RATES.count(float(k)) for k in kept)


def test_clean_fails_below_minfrac_as_deflare_does():
    counts, exposure = _curve(CLEAN_RATES)
    # two good bins of 24 with a rate above 0: 0.083 < 0.1
    with pytest.raises(DeflareError, match=r"only 2 of 24 .* < minfrac 0.1"):
        good_bins(counts, exposure, DeflareRule("clean", mean=2.9))
    assert good_bins(counts, exposure, DeflareRule("clean", mean=2.9, minfrac=0.05)).sum() == 2


def _sigma_rates(outliers: dict) -> np.ndarray:
    rates = np.tile([0.9, 1.1], 16)[:32]  # mean 1.0, standard deviation 0.1
    for i, r in outliers.items():
        rates[i] = r
    return rates


def test_sigma_clips_until_no_bin_moves():
    # 3.0 goes in the first pass; 1.5 is 3.7 sigma out only once 3.0 is gone
    rates = _sigma_rates({10: 3.0, 20: 1.5})
    good = good_bins(*_curve(rates), DeflareRule("sigma", nsigma=3.0))
    assert not good[[10, 20]].any() and good.sum() == 30
    # one pass at a time would have kept 1.5: it lies within 3 sigma of the first mean
    first_mean, first_std = rates.mean(), rates.std()
    assert abs(1.5 - first_mean) < 3 * first_std


@pytest.mark.parametrize("minlength,bin_11_kept", [(3, False), (1, True)])
def test_sigma_drops_good_runs_shorter_than_minlength(minlength, bin_11_kept):
    rates = _sigma_rates({10: 3.0, 12: 3.0})  # bin 11 alone between two flare bins
    good = good_bins(*_curve(rates), DeflareRule("sigma", minlength=minlength))
    assert good[11] == bin_11_kept
    assert good.sum() == 30 - (0 if bin_11_kept else 1)


def test_rules_name_only_their_methods_parameters():
    assert DeflareRule("clean", stddev=2.0).tool_args() == [
        "method=clean", "nsigma=3", "scale=1.2", "minfrac=0.1", "stddev=2", "mean=0"]
    assert DeflareRule("sigma", nsigma=2.5).tool_args() == [
        "method=sigma", "nsigma=2.5", "minlength=3"]
    rule = DeflareRule.from_config({"method": "sigma", "nsigma": 2.5, "scale": 1.2,
                                    "stddev": None, "mean": None, "minfrac": 0.1,
                                    "minlength": 4, "band": [9, 12], "enabled": True})
    assert rule == DeflareRule("sigma", nsigma=2.5, minlength=4)


def test_products_flare_bins_report_failures_and_low_kept_time(caplog):
    counts, exposure = _curve(CLEAN_RATES)
    with pytest.raises(InputError, match="deflare method clean: only 2 of 24") as err:
        flare_bins(counts, exposure, DeflareRule("clean", mean=2.9), path="evt2.fits")
    assert err.value.field == "prep.deflare" and err.value.path == "evt2.fits"
    with caplog.at_level(logging.WARNING, logger="hpcxt.prep"):
        bad = flare_bins(counts, exposure, DeflareRule("clean", scale=1.05), obsid="7")
    assert kept_fraction(exposure, ~bad) == pytest.approx(20 / 25)
    assert "keeps only" not in caplog.text  # 80% kept: no warning
    with caplog.at_level(logging.WARNING, logger="hpcxt.prep"):
        flare_bins(counts, exposure, DeflareRule("clean", mean=2.9, minfrac=0.05), obsid="7")
    assert "observation 7: deflare (method clean) keeps only 8%" in caplog.text
