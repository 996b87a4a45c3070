"""The cluster: surface brightness, temperature zones, the truth zones, the fine cells.

Pure functions of offsets from the cluster centre in its own tangent plane,
arcsec (+x west, +y north).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ._acis import SKY_PIXEL_ARCSEC
from ._presets import CLUSTER, ZONE_IDS, ZONE_KT, Preset


def beta_profile(r_arcsec, core_radius: float, beta: float) -> np.ndarray:
    """Beta-model surface brightness ``(1 + (r/rc)^2)^(0.5 - 3 beta)``, 1 at the centre.

    Parameters
    ----------
    r_arcsec : array_like
        Distance from the centre, arcsec.
    core_radius : float
        Core radius, arcsec.
    beta : float
        Slope parameter.
    """
    r = np.asarray(r_arcsec, dtype=float)
    return (1.0 + (r / core_radius) ** 2) ** (0.5 - 3.0 * beta)


def _ellipse_frame(x, y, preset: Preset):
    """Coordinates (arcsec) along the shock ellipse's own axes."""
    ang = np.deg2rad(preset.shock_angle_deg)
    dx = np.asarray(x, float) - preset.shock_centre[0]
    dy = np.asarray(y, float) - preset.shock_centre[1]
    return dx * np.cos(ang) + dy * np.sin(ang), -dx * np.sin(ang) + dy * np.cos(ang)


def zone_distances(x, y, preset: Preset):
    """Approximate signed distances (arcsec, negative inside) to the core and shock edges.

    The core distance is exact; the shock's is ``f / |grad f|`` of the
    ellipse equation, exact on the edge and of the right sign everywhere,
    which is all the ``tanh`` transitions need.

    Parameters
    ----------
    x, y : array_like
        Offsets from the cluster centre in its tangent plane, arcsec (+x west).
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    d_core = np.hypot(x, y) - preset.core_radius
    u, v = _ellipse_frame(x, y, preset)
    a, b = preset.shock_axes
    f = (u / a) ** 2 + (v / b) ** 2 - 1.0
    grad = 2.0 * np.hypot(u / a ** 2, v / b ** 2)
    d_shock = f / np.maximum(grad, 1e-12)
    return d_core, d_shock


def temperature_field(x, y, preset: Preset, zone_kT: dict = ZONE_KT) -> np.ndarray:
    """Smooth projected temperature, keV, at offsets ``x, y`` (arcsec) from the centre."""
    d_core, d_shock = zone_distances(x, y, preset)
    w = preset.transition
    inside_core = 0.5 * (1.0 - np.tanh(d_core / w))
    inside_shock = 0.5 * (1.0 - np.tanh(d_shock / w))
    t_amb = zone_kT["ambient"]
    return (t_amb + (zone_kT["core"] - t_amb) * inside_core
            + (zone_kT["shock"] - t_amb) * inside_shock)


def brightness_field(x, y, preset: Preset) -> np.ndarray:
    """Relative emission measure per unit area at offsets ``x, y`` (arcsec): the beta
    model, raised by ``preset.shock_brightness`` inside the shocked region."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    _, d_shock = zone_distances(x, y, preset)
    inside_shock = 0.5 * (1.0 - np.tanh(d_shock / preset.transition))
    return (beta_profile(np.hypot(x, y), preset.core_radius_beta, CLUSTER["beta"])
            * (1.0 + (preset.shock_brightness - 1.0) * inside_shock))


def temperature_levels(zone_kT: dict = ZONE_KT, n_between: int = 3) -> np.ndarray:
    """The zone temperatures and ``n_between`` evenly spaced values between neighbours, keV."""
    values = sorted(set(float(v) for v in zone_kT.values()))
    levels = [values[0]]
    for lo, hi in zip(values[:-1], values[1:]):
        levels.extend(np.linspace(lo, hi, n_between + 2)[1:])
    return np.asarray(levels, dtype=float)


def quantise(kT, levels) -> np.ndarray:
    """Index of the nearest level to each temperature."""
    levels = np.asarray(levels, dtype=float)
    edges = 0.5 * (levels[1:] + levels[:-1])
    return np.searchsorted(edges, np.asarray(kT, dtype=float)).astype(np.int16)


def zone_interiors(x, y, preset: Preset, sources=(), source_margin: float = 0.0,
                   n_boundary: int = 4096) -> np.ndarray:
    """Zone id (0 none, 1 core, 2 ambient, 3 shock) of points well inside a zone.

    A point is marked only if it is at least ``preset.zone_margin`` arcsec
    from every zone edge (exact distances; the ellipse edge is sampled with
    ``n_boundary`` points) and ``source_margin`` arcsec from every point
    source.

    Parameters
    ----------
    x, y : array_like
        Offsets from the cluster centre, arcsec.
    sources : sequence of (x, y)
        Point-source offsets, arcsec.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    m = preset.zone_margin
    r = np.hypot(x, y)
    d_core = r - preset.core_radius
    t = np.linspace(0.0, 2.0 * np.pi, n_boundary, endpoint=False)
    a, b = preset.shock_axes
    ang = np.deg2rad(preset.shock_angle_deg)
    bu, bv = a * np.cos(t), b * np.sin(t)
    bx = preset.shock_centre[0] + bu * np.cos(ang) - bv * np.sin(ang)
    by = preset.shock_centre[1] + bu * np.sin(ang) + bv * np.cos(ang)
    tree = cKDTree(np.column_stack([bx, by]))
    dist_shock, _ = tree.query(np.column_stack([x.ravel(), y.ravel()]))
    dist_shock = dist_shock.reshape(x.shape)
    u, v = _ellipse_frame(x, y, preset)
    in_shock = (u / a) ** 2 + (v / b) ** 2 < 1.0
    zones = np.zeros(x.shape, dtype=np.int16)
    zones[(d_core <= -m)] = ZONE_IDS["core"]
    zones[in_shock & (dist_shock >= m)] = ZONE_IDS["shock"]
    zones[(d_core >= m) & ~in_shock & (dist_shock >= m)] = ZONE_IDS["ambient"]
    for sx, sy in sources:
        zones[np.hypot(x - sx, y - sy) < source_margin] = 0
    return zones


@dataclass
class Cells:
    """Fine cells of the cluster's tangent plane (offsets in arcsec from its centre)."""

    x: np.ndarray
    y: np.ndarray
    size: float          # arcsec
    level: np.ndarray    # index into the temperature levels
    norm: np.ndarray     # xsbremss norm of each cell


def cluster_cells(P: Preset, levels, cluster_rates) -> Cells:
    """The cluster on a grid of ``P.cell_px`` sky pixels, within ``P.sim_radius``.

    Parameters
    ----------
    levels : numpy.ndarray
        Temperature levels, keV (:func:`temperature_levels`).
    cluster_rates : numpy.ndarray, shape (n_obs, n_level, n_channel)
        Counts/s per channel per unit norm of each level through each
        observation's response.
    """
    cell = P.cell_px * SKY_PIXEL_ARCSEC
    n_side = int(np.ceil(2 * P.sim_radius / cell))
    centres = (np.arange(n_side) + 0.5) * cell - n_side * cell / 2
    gx, gy = np.meshgrid(centres, centres)
    inside = np.hypot(gx, gy) <= P.sim_radius
    gx, gy = gx[inside], gy[inside]
    level = quantise(temperature_field(gx, gy, P), levels)
    weight = brightness_field(gx, gy, P)
    i_amb = int(np.argmin(np.abs(levels - ZONE_KT["ambient"])))
    # Norms such that the whole area, were it all 7 keV gas, would give
    # cluster_rate counts/s through the first observation's response.
    norm = weight * P.cluster_rate / (weight.sum() * cluster_rates[0, i_amb].sum())
    return Cells(x=gx, y=gy, size=cell, level=level, norm=norm)

