"""Time-interval arithmetic for GTIs (sorted, non-overlapping [start, stop) pairs, s)."""

from __future__ import annotations

import numpy as np


def normalise(start, stop):
    """Sort and merge overlapping intervals; drop empty ones."""
    start = np.asarray(start, float)
    stop = np.asarray(stop, float)
    keep = stop > start
    start, stop = start[keep], stop[keep]
    if start.size == 0:
        return start, stop
    order = np.argsort(start, kind="stable")
    start, stop = start[order], stop[order]
    out_s, out_e = [start[0]], [stop[0]]
    for s, e in zip(start[1:], stop[1:]):
        if s <= out_e[-1]:
            out_e[-1] = max(out_e[-1], e)
        else:
            out_s.append(s)
            out_e.append(e)
    return np.array(out_s), np.array(out_e)


def union(a, b):
    return normalise(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))


def intersect(a, b):
    """Intersection of two interval lists."""
    a = normalise(*a)
    b = normalise(*b)
    out_s, out_e = [], []
    i = j = 0
    while i < a[0].size and j < b[0].size:
        s = max(a[0][i], b[0][j])
        e = min(a[1][i], b[1][j])
        if e > s:
            out_s.append(s)
            out_e.append(e)
        if a[1][i] < b[1][j]:
            i += 1
        else:
            j += 1
    return np.array(out_s, float), np.array(out_e, float)


def subtract(a, b):
    """Intervals of ``a`` not covered by ``b``."""
    a = normalise(*a)
    b = normalise(*b)
    if b[0].size == 0 or a[0].size == 0:
        return a
    lo = min(a[0].min(), b[0].min()) - 1.0
    hi = max(a[1].max(), b[1].max()) + 1.0
    # complement of b within [lo, hi]
    cs = np.concatenate([[lo], b[1]])
    ce = np.concatenate([b[0], [hi]])
    return intersect(a, (cs, ce))


def length(a) -> float:
    """Total length of an interval list, s."""
    s, e = normalise(*a)
    return float(np.sum(e - s))


def contains(t, a) -> np.ndarray:
    """Boolean mask: each time inside one of the [start, stop) intervals."""
    s, e = normalise(*a)
    t = np.asarray(t, float)
    if s.size == 0:
        return np.zeros(t.shape, bool)
    idx = np.searchsorted(s, t, side="right") - 1
    ok = idx >= 0
    inside = np.zeros(t.shape, bool)
    inside[ok] = t[ok] < e[idx[ok]]
    return inside
