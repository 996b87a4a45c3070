"""The ACIS-I-like response and OGIP ARF/RMF reading and writing."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from hpcxt.errors import InputError
from hpcxt.prep.response import (acis_i_response, effective_area, fold, read_response,
                                 write_arf, write_rmf)


@pytest.fixture(scope="module")
def response():
    return acis_i_response()


@pytest.fixture(scope="module")
def written(tmp_path_factory, response):
    d = tmp_path_factory.mktemp("resp")
    return write_arf(d / "a.arf", response, obsid="1001"), write_rmf(d / "a.rmf", response)


def _xspec_model(kT=6.0, norm=1e-3):
    from hpcxt.models import make_model, model_evaluates
    if not model_evaluates("xsphabs*xsbremss"):
        pytest.skip("needs Sherpa built with the XSPEC models (xsphabs, xsbremss)")
    model, _, _ = make_model("xsphabs*xsbremss", nh=0.03, abundance=0.3, redshift=0.1,
                             kT=kT, norm=norm)
    return model


def _sherpa_fold(arf_path, rmf_path, model, exposure):
    """Counts per channel from Sherpa's own reading of the files."""
    from sherpa.astro.data import DataPHA
    from sherpa.astro.instrument import Response1D
    from sherpa.astro.io import read_arf, read_rmf
    rmf = read_rmf(str(rmf_path))
    nchan = int(rmf.detchans)
    first = int(rmf.offset)
    channels = np.arange(first, first + nchan, dtype=float)
    pha = DataPHA("sim", channels, np.zeros(nchan), exposure=exposure)
    pha.set_arf(read_arf(str(arf_path)))
    pha.set_rmf(rmf)
    return np.asarray(pha.eval_model(Response1D(pha)(model)))


def _dense_fold(resp, model, exposure):
    photons = np.asarray(model(resp.arf_energ_lo, resp.arf_energ_hi))
    return exposure * fold(resp, photons)


# --------------------------------------------------------------------------
# the response itself


def test_grid_channels_and_shapes(response):
    assert response.rmf_matrix.shape == (1070, 1024)
    assert response.rmf_matrix.dtype == np.float32
    assert response.arf_energ_lo[0] == pytest.approx(0.3)
    assert response.arf_energ_hi[-1] == pytest.approx(11.0)
    np.testing.assert_allclose(np.diff(response.arf_energ_lo), 0.01, rtol=1e-9)
    # PI channel i (1-based) covers [(i-1)*14.6, i*14.6) eV.
    assert response.offset == 1
    assert response.e_min[0] == 0.0
    assert response.e_max[99] == pytest.approx(100 * 0.0146)
    np.testing.assert_allclose(response.e_max - response.e_min, 0.0146, rtol=1e-9)


def test_effective_area_shape(response):
    e = 0.5 * (response.arf_energ_lo + response.arf_energ_hi)
    area = response.specresp
    peak = e[np.argmax(area)]
    assert 1.2 <= peak <= 1.9
    assert 400 <= area.max() <= 600
    assert 30 <= np.interp(0.5, e, area) <= 80
    assert 100 <= np.interp(7.0, e, area) <= 150
    assert np.all(area > 0)
    # More contaminant removes area at low energy only.
    assert effective_area(0.5, 1.5) < 0.9 * effective_area(0.5, 1.0)
    assert effective_area(5.0, 1.5) == pytest.approx(effective_area(5.0, 1.0), rel=1e-3)


def test_redistribution_width_and_normalisation(response):
    m = response.rmf_matrix.astype(np.float64)
    sums = m.sum(axis=1)
    assert np.all(sums <= 1.0)
    assert np.all(sums > 0.999)
    centres = 0.5 * (response.e_min + response.e_max)
    e = 0.5 * (response.rmf_energ_lo + response.rmf_energ_hi)
    for energy, fwhm in ((1.0, 0.100), (6.0, 0.250)):
        row = m[np.argmin(np.abs(e - energy))]
        mean = np.sum(row * centres) / row.sum()
        sigma = np.sqrt(np.sum(row * (centres - mean) ** 2) / row.sum())
        assert mean == pytest.approx(energy, abs=0.01)
        # Channel binning adds w^2/12 to the variance.
        measured = 2.3548 * np.sqrt(sigma ** 2 - 0.0146 ** 2 / 12)
        assert measured == pytest.approx(fwhm, rel=0.1)
        # Compressible: each row is zero far from its energy.
        nz = np.flatnonzero(row)
        assert nz.size < 200 and np.all(np.diff(nz) == 1)


# --------------------------------------------------------------------------
# files


def test_written_files_are_ogip(written, response):
    arf_path, rmf_path = written
    with fits.open(arf_path) as hdul:
        h = hdul["SPECRESP"].header
        assert (h["HDUCLASS"], h["HDUCLAS1"], h["HDUCLAS2"]) == ("OGIP", "RESPONSE", "SPECRESP")
        assert (h["TELESCOP"], h["INSTRUME"], h["OBS_ID"]) == ("CHANDRA", "ACIS", "1001")
        assert hdul["SPECRESP"].columns.names == ["ENERG_LO", "ENERG_HI", "SPECRESP"]
    with fits.open(rmf_path) as hdul:
        m = hdul["MATRIX"]
        assert (m.header["HDUCLAS1"], m.header["HDUCLAS2"]) == ("RESPONSE", "RSP_MATRIX")
        assert m.header["DETCHANS"] == 1024 and m.header["CHANTYPE"] == "PI"
        icol = m.columns.names.index("F_CHAN") + 1
        assert m.header[f"TLMIN{icol}"] == 1
        assert np.all(m.data["N_GRP"] == 1)
        lengths = np.array([len(r) for r in m.data["MATRIX"]])
        np.testing.assert_array_equal(lengths, m.data["N_CHAN"])
        assert lengths.max() < 1024  # rows are stored compressed
        e = hdul["EBOUNDS"]
        assert e.columns.names == ["CHANNEL", "E_MIN", "E_MAX"]
        assert e.data["CHANNEL"][0] == 1 and e.data["CHANNEL"][-1] == 1024


def test_read_response_round_trip(written, response):
    back = read_response(*written)
    assert back.offset == 1
    np.testing.assert_array_equal(back.rmf_matrix, response.rmf_matrix)
    for name in ("arf_energ_lo", "arf_energ_hi", "specresp", "rmf_energ_lo", "rmf_energ_hi",
                 "e_min", "e_max"):
        np.testing.assert_allclose(getattr(back, name), getattr(response, name), rtol=1e-6,
                                   err_msg=name)


def test_sherpa_fold_equals_dense_fold(written):
    model = _xspec_model(kT=6.0)
    resp = read_response(*written)
    ours = _dense_fold(resp, model, exposure=5.0e4)
    sherpa = _sherpa_fold(*written, model, exposure=5.0e4)
    assert ours.shape == sherpa.shape == (1024,)
    assert ours.sum() > 100
    np.testing.assert_allclose(sherpa, ours, rtol=1e-5, atol=1e-9 * ours.max())


def _ciao_style_rmf(path, response, fixed: bool):
    """An RMF written the way CIAO's tools may: channels from 0, two groups per row
    with a zero channel between them, lower-case columns, 'SPECRESP MATRIX' extension.

    Returns the path and the dense matrix the file holds.
    """
    m = response.rmf_matrix.copy()
    n_rows, nchan = m.shape
    f_chan, n_chan, values = [], [], []
    for i in range(n_rows):
        nz = np.flatnonzero(m[i])
        lo, hi = nz[0], nz[-1] + 1
        mid = (lo + hi) // 2
        m[i, mid] = 0.0  # the hole between the two groups
        f_chan.append([lo, mid + 1])           # 0-based channel numbers
        n_chan.append([mid - lo, hi - mid - 1])
        values.append(np.concatenate([m[i, lo:mid], m[i, mid + 1:hi]]))
    n_grp = np.full(n_rows, 2, dtype=np.int16)
    if fixed:
        width = max(len(v) for v in values)
        mat = np.zeros((n_rows, width), dtype=np.float32)
        for i, v in enumerate(values):
            mat[i, :len(v)] = v
        cols = [fits.Column("f_chan", "2J", array=np.array(f_chan, dtype=np.int32)),
                fits.Column("n_chan", "2J", array=np.array(n_chan, dtype=np.int32)),
                fits.Column("matrix", f"{width}E", array=mat)]
    else:
        cols = [fits.Column("f_chan", "PJ()", array=np.array(
                    [np.array(f, dtype=np.int32) for f in f_chan], dtype=object)),
                fits.Column("n_chan", "PJ()", array=np.array(
                    [np.array(n, dtype=np.int32) for n in n_chan], dtype=object)),
                fits.Column("matrix", "PE()", array=np.array(
                    [v.astype(np.float32) for v in values], dtype=object))]
    cols = [fits.Column("energ_lo", "E", unit="keV", array=response.rmf_energ_lo),
            fits.Column("energ_hi", "E", unit="keV", array=response.rmf_energ_hi),
            fits.Column("n_grp", "I", array=n_grp)] + cols
    mhdu = fits.BinTableHDU.from_columns(cols, name="SPECRESP MATRIX")
    mhdu.header["TLMIN4"] = 0
    mhdu.header["TLMAX4"] = nchan - 1
    mhdu.header["HDUCLASS"] = "OGIP"
    mhdu.header["HDUCLAS1"] = "RESPONSE"
    mhdu.header["HDUCLAS2"] = "RSP_MATRIX"
    mhdu.header["DETCHANS"] = nchan
    mhdu.header["CHANTYPE"] = "PI"
    ehdu = fits.BinTableHDU.from_columns(
        [fits.Column("channel", "J", array=np.arange(nchan, dtype=np.int32)),
         fits.Column("e_min", "E", unit="keV", array=response.e_min),
         fits.Column("e_max", "E", unit="keV", array=response.e_max)], name="EBOUNDS")
    ehdu.header["TLMIN1"] = 0
    ehdu.header["TLMAX1"] = nchan - 1
    ehdu.header["HDUCLASS"] = "OGIP"
    ehdu.header["HDUCLAS1"] = "RESPONSE"
    ehdu.header["HDUCLAS2"] = "EBOUNDS"
    ehdu.header["DETCHANS"] = nchan
    ehdu.header["CHANTYPE"] = "PI"
    fits.HDUList([fits.PrimaryHDU(), mhdu, ehdu]).writeto(path)
    return path, m


@pytest.mark.parametrize("fixed", [False, True], ids=["variable-length", "fixed-length"])
def test_read_ciao_style_rmf(tmp_path, written, response, fixed):
    rmf_path, matrix = _ciao_style_rmf(tmp_path / "ciao.rmf", response, fixed)
    back = read_response(written[0], rmf_path)
    assert back.offset == 0
    np.testing.assert_array_equal(back.rmf_matrix, matrix)
    np.testing.assert_allclose(back.e_min, response.e_min, rtol=1e-6)
    # Sherpa reads the same file to the same fold.
    model = _xspec_model(kT=4.0)
    ours = _dense_fold(back, model, exposure=2.0e4)
    np.testing.assert_allclose(_sherpa_fold(written[0], rmf_path, model, 2.0e4), ours,
                               rtol=1e-5, atol=1e-9 * ours.max())


def _copy_without(src, dst, ext: str, column: str | None = None):
    """Copy a FITS file, dropping one extension or one column of it."""
    with fits.open(src) as hdul:
        out = [fits.PrimaryHDU(header=hdul[0].header)]
        for hdu in hdul[1:]:
            if hdu.name != ext:
                out.append(fits.BinTableHDU(data=hdu.data, header=hdu.header))
            elif column is not None:
                cols = [c for c in hdu.columns if c.name != column]
                new = fits.BinTableHDU.from_columns(cols, name=hdu.name)
                out.append(new)
        fits.HDUList(out).writeto(dst)
    return dst


def test_missing_matrix_column_names_the_column(tmp_path, written):
    bad = _copy_without(written[1], tmp_path / "bad.rmf", "MATRIX", column="MATRIX")
    with pytest.raises(InputError) as exc:
        read_response(written[0], bad)
    assert exc.value.field == "MATRIX"
    assert "bad.rmf" in str(exc.value)
    assert "no column MATRIX" in str(exc.value)


def test_missing_extension_names_it(tmp_path, written):
    bad = _copy_without(written[1], tmp_path / "noebounds.rmf", "EBOUNDS")
    with pytest.raises(InputError) as exc:
        read_response(written[0], bad)
    assert exc.value.field == "EBOUNDS" and "noebounds.rmf" in str(exc.value)
    bad_arf = _copy_without(written[0], tmp_path / "nospec.arf", "SPECRESP")
    with pytest.raises(InputError) as exc:
        read_response(bad_arf, written[1])
    assert exc.value.field == "SPECRESP" and "nospec.arf" in str(exc.value)


def test_missing_and_unreadable_files(tmp_path, written):
    with pytest.raises(InputError, match="not found"):
        read_response(tmp_path / "nothing.arf", written[1])
    junk = tmp_path / "junk.rmf"
    junk.write_text("this is not FITS\n")
    with pytest.raises(InputError, match="not a readable FITS") as exc:
        read_response(written[0], junk)
    assert "junk.rmf" in str(exc.value)


def test_arf_and_rmf_grids_must_agree(tmp_path, written):
    other = acis_i_response(n_energy=500)
    arf = write_arf(tmp_path / "other.arf", other)
    with pytest.raises(InputError, match="energy grid") as exc:
        read_response(arf, written[1])
    assert exc.value.field == "ENERG_LO"
