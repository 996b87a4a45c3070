"""Prep reads and filters event files in chunks: same bundle, bounded memory (issue 15, item 2)."""

from __future__ import annotations

import math
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest
from astropy.io import fits

from hpcxt.errors import InputError
from hpcxt.io.config import load_config
from hpcxt.io.fitsio import ChunkStats, SkyFrame, open_events, read_events
from hpcxt.prep import products as P
from hpcxt.prep.regionfile import read_region_file
from hpcxt.stages.prep import run_prep

#: Rows per chunk in these tests: far fewer than the small preset's event files hold.
TINY_CHUNK = 997
#: Bundle attributes that name input paths, which differ between two copies.
PATH_ATTRS = {"source_file", "background_file"}


def _bundle_contents(path) -> dict:
    """Every dataset (as an array) and attribute (but input paths) of an HDF5 file, by name."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for key, value in obj.attrs.items():
                if key not in PATH_ATTRS:
                    out[f"{name}@{key}"] = value
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        visit("/", f)
        f.visititems(visit)
    return out


def _inputs(cfg):
    o = cfg.observations[0]
    return (o.events, o.background, read_region_file(cfg.prep.point_sources, "prep.point_sources"),
            read_region_file(cfg.prep.crop_region, "prep.crop_region"))


def _assert_same_clean(a: P.CleanEvents, b: P.CleanEvents) -> None:
    for col in ("x", "y", "pi", "energy"):
        av, bv = getattr(a, col), getattr(b, col)
        assert av.dtype == bv.dtype and np.array_equal(av, bv), col
    assert a.removed == b.removed and a.n_input == b.n_input
    assert a.exposure == b.exposure
    assert (a.scale_band_counts, a.scale_band_counts_outside) == \
        (b.scale_band_counts, b.scale_band_counts_outside)
    for iv in ("good_time", "flare_intervals"):
        for x, y in zip(getattr(a, iv), getattr(b, iv)):
            np.testing.assert_array_equal(x, y)


def test_chunked_prep_gives_the_whole_read_bundle(prepped_small, simulated_small, tmp_path):
    """The small preset's files hold ~38,000-57,000 rows: 997-row chunks, ~40 to 60 a file."""
    whole_cfg = load_config(prepped_small)
    assert whole_cfg.prep.chunk_rows > 100_000  # the reference read each file in one chunk
    shutil.copytree(simulated_small, tmp_path / "sim", ignore=shutil.ignore_patterns("work"))
    cfg = load_config(tmp_path / "sim" / "config.yaml")
    stats = ChunkStats()
    chunked = run_prep(cfg, chunk_rows=TINY_CHUNK, read_stats=stats)

    whole = _bundle_contents(whole_cfg.stage_dir("prep") / "bundle.h5")
    got = _bundle_contents(chunked)
    assert got.keys() == whole.keys()
    assert any(k.endswith("events/x") for k in got)  # the events are among what is compared
    for name, value in whole.items():
        assert np.array_equal(np.asarray(got[name]), np.asarray(value)), name
    for name in ("counts.fits", "background.fits", "exposure.fits", "mask.fits"):
        with fits.open(whole_cfg.stage_dir("prep") / name) as a, \
                fits.open(cfg.stage_dir("prep") / name) as b:
            np.testing.assert_array_equal(a[0].data, b[0].data)
    assert (cfg.stage_dir("prep") / "summary.json").read_text() == \
        (whole_cfg.stage_dir("prep") / "summary.json").read_text()

    # deflaring reads each source file twice (light curve, then filters), a background once
    expected = 0
    for o in cfg.observations:
        expected += 2 * math.ceil(len(open_events(o.events)) / TINY_CHUNK)
        expected += math.ceil(len(open_events(o.background, need_time=False)) / TINY_CHUNK)
    assert stats.chunks == expected
    assert stats.max_chunk_rows == TINY_CHUNK
    assert stats.max_live_chunks == 1


@pytest.mark.parametrize("deflare", [True, False])
def test_clean_events_chunked_equals_astropy_whole_read(prepped_small, deflare):
    """Chunks read by row range from the file give what astropy's whole-table read gives."""
    cfg = load_config(prepped_small)
    events, background, point_sources, crop = _inputs(cfg)
    frame = read_events(events).frame
    deflare_cfg = cfg.prep.deflare if deflare else None
    for path, is_bkg in ((events, False), (background, True)):
        need_time = not is_bkg
        ref = P.clean_events(read_events(path, need_time=need_time), cfg.prep.ccds,
                             deflare_cfg, point_sources, frame, is_background=is_bkg,
                             scale_exclude=crop, chunk_rows=10**9)
        got = P.clean_events(open_events(path, need_time=need_time), cfg.prep.ccds,
                             deflare_cfg, point_sources, frame, is_background=is_bkg,
                             scale_exclude=crop, chunk_rows=TINY_CHUNK)
        _assert_same_clean(got, ref)
        assert sum(ref.removed.values()) > 0 and len(ref.x) > 0
    if deflare:
        assert len(ref.flare_intervals[0]) == 0  # background: never deflared
        src = P.clean_events(read_events(events), cfg.prep.ccds, deflare_cfg, point_sources,
                             frame, scale_exclude=crop)
        assert src.removed["flare"] > 0  # the simulated flare is found chunk by chunk too


def _big_event_file(path, n_rows: int) -> SkyFrame:
    """An event file of ``n_rows`` events spread over 10 ks on chips 0-3, one GTI."""
    rng = np.random.default_rng(3)
    frame = SkyFrame(ra0=150.0, dec0=2.0)
    cols = [
        fits.Column("time", "D", array=np.sort(rng.uniform(0, 1e4, n_rows))),
        fits.Column("ccd_id", "I", array=rng.integers(0, 4, n_rows)),
        fits.Column("chipx", "I", array=rng.integers(1, 1025, n_rows)),
        fits.Column("x", "E", array=rng.uniform(3500, 4500, n_rows)),
        fits.Column("y", "E", array=rng.uniform(3500, 4500, n_rows)),
        fits.Column("energy", "E", array=rng.uniform(300, 11000, n_rows)),
        fits.Column("pi", "J", array=rng.integers(1, 1025, n_rows)),
        fits.Column("status", "32X", array=np.zeros((n_rows, 32), bool)),
    ]
    ev = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    ev.header["TCRVL4"], ev.header["TCRVL5"] = frame.ra0, frame.dec0
    ev.header["EXPOSURE"] = 1e4
    gti = fits.BinTableHDU.from_columns([fits.Column("START", "D", array=[0.0]),
                                         fits.Column("STOP", "D", array=[1e4])], name="GTI")
    fits.HDUList([fits.PrimaryHDU(), ev, gti]).writeto(path)
    return frame


def test_file_larger_than_the_chunk_is_held_one_chunk_at_a_time(tmp_path):
    """300,000 rows, 3,000 a chunk: memory is one chunk, not the file, even while filtering."""
    n_rows, chunk = 300_000, 3_000
    path = tmp_path / "big_evt2.fits"
    frame = _big_event_file(path, n_rows)
    ev = open_events(path)
    row_bytes = ev.table.row_dtype.itemsize
    assert row_bytes == 8 + 2 + 2 + 4 + 4 + 4 + 4 + 4
    column_bytes = 8 + 8 + 4 + 4 + 8 + 2  # x, y, pi, energy, time, ccd_id as prep holds them
    whole_bytes = n_rows * (row_bytes + column_bytes)

    stats = ChunkStats()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        # chip 9 is not in the file: every event is read and filtered, none kept
        out = P.clean_events(ev, [9], None, None, frame, chunk_rows=chunk, stats=stats)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(out.x) == 0 and out.removed["ccd"] == n_rows and out.n_input == n_rows
    assert stats.chunks == n_rows // chunk and stats.rows == n_rows
    assert stats.max_chunk_rows == chunk
    assert stats.max_chunk_bytes == chunk * (row_bytes + column_bytes)
    assert stats.max_live_chunks == 1
    # everything clean_events allocated at once: a few chunks' worth, a small part of the file
    assert peak < 6 * stats.max_chunk_bytes < whole_bytes / 10

    # the same file with events kept: the survivors equal a whole read's
    stats = ChunkStats()
    got = P.clean_events(open_events(path), [0, 1], None, None, frame, chunk_rows=chunk,
                         stats=stats)
    ref = P.clean_events(read_events(path), [0, 1], None, None, frame, chunk_rows=n_rows)
    _assert_same_clean(got, ref)
    assert 0.4 * n_rows < len(got.x) < 0.6 * n_rows
    assert stats.max_live_chunks == 1


def test_scaled_columns_read_by_rows_as_astropy_reads_them(tmp_path):
    """TZERO/TSCAL columns (unsigned ccd_id, scaled energy) come out as astropy scales them."""
    n = 1000
    rng = np.random.default_rng(5)
    cols = [fits.Column("x", "E", array=rng.uniform(3000, 5000, n)),
            fits.Column("y", "D", array=rng.uniform(3000, 5000, n)),
            fits.Column("energy", "J", array=rng.integers(0, 20000, n)),
            fits.Column("pi", "J", array=rng.integers(1, 1025, n)),
            fits.Column("ccd_id", "I", bzero=32768, array=rng.integers(0, 10, n).astype(np.uint16)),
            fits.Column("time", "D", array=np.arange(n, dtype=float))]
    ev = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    ev.header["TCRVL1"], ev.header["TCRVL2"], ev.header["EXPOSURE"] = 10.0, 20.0, 100.0
    path = tmp_path / "scaled.fits"
    fits.HDUList([fits.PrimaryHDU(), ev]).writeto(path)
    fits.setval(path, "TSCAL3", value=0.5, ext=1)  # energy = 0.5 * stored + 100 eV
    fits.setval(path, "TZERO3", value=100.0, ext=1)
    whole = read_events(path)
    assert whole.columns["energy"].min() >= 100.0 and whole.columns["ccd_id"].max() == 9
    parts = list(open_events(path).chunks(300))
    assert [len(p["x"]) for p in parts] == [300, 300, 300, 100]
    for col, ref in whole.columns.items():
        got = np.concatenate([p[col] for p in parts])
        assert got.dtype == ref.dtype and np.array_equal(got, ref), col


def test_non_finite_values_are_refused_with_their_rows(tmp_path):
    path = tmp_path / "nan_evt2.fits"
    _big_event_file(path, 5000)
    with fits.open(path, mode="update") as hdul:
        hdul["EVENTS"].data["energy"][4321] = np.nan
    ev = open_events(path)
    with pytest.raises(InputError, match=r"1 events have non-finite 'energy' \(in rows 4,001-5,000\)"):
        for _ in ev.chunks(1000):
            pass


def test_chunk_rows_is_a_config_field(prepped_small, tmp_path):
    text = prepped_small.read_text().replace("prep:\n", "prep:\n  chunk_rows: 0\n", 1)
    bad = tmp_path / "config.yaml"
    bad.write_text(text)
    with pytest.raises(InputError, match="prep.chunk_rows"):
        load_config(bad, check_files=False)
    assert load_config(prepped_small).prep.chunk_rows == P.DEFAULT_CHUNK_ROWS


def test_blockwise_binning_and_crop_match_one_block(monkeypatch):
    """bin_events and crop_events work a block of events at a time; the answer is the same."""
    from hpcxt.data import ImageGrid

    rng = np.random.default_rng(11)
    n = 10_000
    ce = P.CleanEvents(x=rng.uniform(3900, 4300, n), y=rng.uniform(3900, 4300, n),
                       pi=rng.integers(1, 1025, n).astype(np.int32),
                       energy=rng.uniform(300, 11000, n).astype(np.float32), exposure=1.0,
                       removed={r: 0 for r in P.REASONS}, n_input=n)
    grid = ImageGrid(shape=(60, 70), x0=3950.5, y0=3960.5, bin=4, wcs_header="")
    frame = SkyFrame(ra0=150.0, dec0=2.0)
    select = ce.energy < 5000
    one_block = (P.bin_events(ce.x[select], ce.y[select], grid),
                 P.crop_events(ce, None, grid, frame))
    monkeypatch.setattr(P, "EVENT_BLOCK", 999)
    image = P.bin_events(ce.x, ce.y, grid, select)
    np.testing.assert_array_equal(image, one_block[0])
    assert image.sum() > 0.1 * n
    cropped = P.crop_events(ce, None, grid, frame, in_place=True)
    assert cropped is ce
    _assert_same_clean(cropped, one_block[1])
    assert 0 < cropped.removed["outside_crop"] < n
