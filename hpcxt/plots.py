"""PNG quick-looks of the maps, with surface-brightness contours."""

from __future__ import annotations

from pathlib import Path

import numpy as np

QUICKLOOKS = (
    ("temperature", "kT [keV]", "magma"),
    ("temperature_frac_err", "fractional kT error", "viridis"),
    ("pressure", "pseudo pressure [keV (ph cm$^{-2}$ s$^{-1}$ pix$^{-1}$)$^{1/2}$]", "cividis"),
    ("entropy", "pseudo entropy [keV (ph cm$^{-2}$ s$^{-1}$ pix$^{-1}$)$^{-1/3}$]", "plasma"),
)


FLUX_LABEL = "photon cm$^{-2}$ s$^{-1}$ pixel$^{-1}$"


def _smoothed_brightness(bundle) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sb = np.where(bundle.mask & (bundle.exposure > 0),
                  (bundle.counts - bundle.background) / np.where(bundle.exposure > 0,
                                                                bundle.exposure, 1.0), 0.0)
    weight = gaussian_filter(bundle.mask.astype(float), 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = gaussian_filter(sb, 2.0) / weight
    return np.where(bundle.mask, out, np.nan)


def _contour_levels(sb) -> np.ndarray | None:
    good = sb[np.isfinite(sb) & (sb > 0)]
    if good.size < 10:
        return None
    lo, hi = np.percentile(good, [20, 99.5])
    if not hi > lo > 0:
        return None
    return np.geomspace(lo, hi, 6)


def _panel(ax, image, label, cmap, sb, levels, fig, log: bool = False):
    finite = image[np.isfinite(image)]
    norm = None
    if log and np.any(finite > 0):
        from matplotlib.colors import LogNorm
        pos = finite[finite > 0]
        lo, hi = np.percentile(pos, [5, 99.8])
        norm = LogNorm(vmin=lo, vmax=max(hi, lo * 1.01))
        vmin = vmax = None
        # pixels without counts show the lowest colour, not the NaN colour
        image = np.where(np.isfinite(image), np.maximum(image, lo), np.nan)
    elif finite.size:
        vmin, vmax = np.percentile(finite, [2, 98])
        if vmin == vmax:
            vmin, vmax = vmin - 0.5, vmax + 0.5
    else:
        vmin, vmax = 0, 1
    im = ax.imshow(image, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, norm=norm,
                   interpolation="nearest")
    if levels is not None:
        ax.contour(sb, levels=levels, colors="white", linewidths=0.6, alpha=0.7)
    ra, dec = ax.coords[0], ax.coords[1]
    ra.set_axislabel("RA")
    dec.set_axislabel("Dec")
    ra.set_ticks_position("b")
    ra.set_ticklabel_position("b")
    dec.set_ticks_position("l")
    dec.set_ticklabel_position("l")
    ra.set_axislabel_position("b")
    dec.set_axislabel_position("l")
    # A plain Axes for the colour bar: one made from a WCSAxes inherits its
    # coordinate labels.
    import matplotlib.axes
    cax = ax.inset_axes([1.04, 0.0, 0.05, 1.0], axes_class=matplotlib.axes.Axes)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(label)


def write_quicklooks(outdir, images: dict, bundle, title: str) -> list[str]:
    """One PNG per quick-look map and an overview of all of them; returns file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    wcs = bundle.grid.wcs()
    sb = _smoothed_brightness(bundle)
    levels = _contour_levels(sb)
    written = []
    for name, label, cmap in QUICKLOOKS:
        fig = plt.figure(figsize=(6.4, 5.4))
        ax = fig.add_subplot(projection=wcs)
        _panel(ax, images[name], label, cmap, sb, levels, fig)
        ax.set_title(f"{title}: {name.replace('_', ' ')}")
        path = outdir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
    if "flux" in images:
        fig = plt.figure(figsize=(6.4, 5.4))
        ax = fig.add_subplot(projection=wcs)
        _panel(ax, images["flux"], FLUX_LABEL, "inferno", sb, None, fig, log=True)
        ax.set_title(f"{title}: flux (counts / exposure)")
        fig.savefig(outdir / "flux.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append("flux.png")
        fig = plt.figure(figsize=(13, 5.4))
        ax = fig.add_subplot(1, 2, 1, projection=wcs)
        fig.subplots_adjust(wspace=0.55)
        _panel(ax, images["flux"], FLUX_LABEL, "inferno", sb, None, fig, log=True)
        ax.set_title("exposure-corrected image (flux.fits)")
        ax = fig.add_subplot(1, 2, 2, projection=wcs)
        _panel(ax, images["temperature"], "kT [keV]", "magma", sb, levels, fig)
        ax.set_title("temperature (temperature.fits)")
        fig.suptitle(f"{title}: hpcxt flux image and temperature map")
        fig.savefig(outdir / "flux_temperature.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append("flux_temperature.png")
    fig = plt.figure(figsize=(13, 10))
    for i, (name, label, cmap) in enumerate(QUICKLOOKS, start=1):
        ax = fig.add_subplot(2, 2, i, projection=wcs)
        fig.subplots_adjust(wspace=0.55, hspace=0.3)
        _panel(ax, images[name], label, cmap, sb, levels, fig)
        ax.set_title(name.replace("_", " "))
    fig.suptitle(f"{title}: hpcxt maps (contours: surface brightness)")
    path = outdir / "overview.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    written.append(path.name)
    return written
