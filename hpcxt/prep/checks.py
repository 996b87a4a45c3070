"""Cross-checks between the files of one observation, before prep trusts them.

Each file can be fine on its own and still not belong with the others: an
RMF made for another instrument mode, an ARF on another energy grid, an
exposure map of another pointing. Sherpa refuses the first two only at fit
time, far from the cause, and the third gives plausible-looking but wrong
maps. These checks refuse them at prep, with one line naming the two files
that disagree:

* **RMF channels against the events' PI column.** The spectrum of a region
  has one bin per PI channel from TLMIN to TLMAX of the events' PI column
  (what ``dmextract`` makes); the RMF must have exactly those channels
  (DETCHANS of them, numbered from its first channel, TLMIN of F_CHAN), as
  Sherpa requires of a PHA file and its RMF. Without TLMIN/TLMAX, every
  event's PI must lie within the RMF's channels.
* **ARF energy grid against the RMF's** (in :func:`~hpcxt.prep.response.read_response`).
* **Exposure map against the events' sky frame**: at least
  :data:`MIN_EXPOSED_FRACTION` of an observation's events in the crop must
  fall on pixels where its exposure map is positive.

:func:`check_products` reads only headers and the responses, so it runs
before any prep stage; :func:`check_exposure_overlap` needs the events on
the image grid and runs in the bundle stage, before anything is written.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..io.fitsio import read_events_header

#: Share of an observation's (cropped) events that must fall on exposed
#: pixels of its exposure map; 99.7-99.8% in the simulated observations, 0
#: for an exposure map of another pointing.
MIN_EXPOSED_FRACTION = 0.5


def rmf_channels(response) -> tuple[int, int]:
    """First and last channel number of a response's RMF."""
    first = int(response.offset)
    return first, first + int(np.asarray(response.e_min).size) - 1


def check_pi_range(pi_range, response, events_path, rmf_path, pi=None) -> None:
    """Refuse an RMF whose channels are not the events' PI channels.

    Parameters
    ----------
    pi_range : (int, int) or None
        TLMIN, TLMAX of the events' PI column.
    response : Response
        The observation's response (``offset``, ``e_min``).
    events_path, rmf_path : path
        For the message.
    pi : ndarray, optional
        PI values, checked against the RMF's channels when ``pi_range`` is None.
    """
    first, last = rmf_channels(response)
    if pi_range is not None:
        if tuple(pi_range) != (first, last):
            lo, hi = pi_range
            raise InputError(f"RMF channels {first}-{last} ({last - first + 1}) differ from the "
                             f"PI channels {lo}-{hi} ({hi - lo + 1}, TLMIN/TLMAX) of "
                             f"{events_path}: use the RMF made for these events",
                             path=rmf_path, field="DETCHANS")
        return
    if pi is not None and np.size(pi):
        lo, hi = int(np.min(pi)), int(np.max(pi))
        if lo < first or hi > last:
            raise InputError(f"RMF channels {first}-{last} do not hold the events' PI values "
                             f"{lo}-{hi} of {events_path}: use the RMF made for these events",
                             path=rmf_path, field="DETCHANS")


def check_products(obs_products: list[dict]) -> None:
    """Check every observation's events, background, ARF and RMF against each other.

    Reads headers and the responses only. Raises InputError naming the file
    at fault (and the other one for a disagreement).
    """
    from .response import read_response

    for o in obs_products:
        obsid = o["obsid"]
        events = read_events_header(o["events"], role=f"observation {obsid} events")
        files = [(o["events"], events)]
        if o.get("background"):
            files.append((o["background"],
                          read_events_header(o["background"], need_time=False,
                                             role=f"observation {obsid} background")))
        response = read_response(o["arf"], o["rmf"])
        for path, ev in files:
            check_pi_range(ev.pi_range, response, path, o["rmf"])


def exposed_fraction(counts: np.ndarray, exposure_map: np.ndarray) -> float:
    """Share of the counts of an image on pixels where the exposure map is positive.

    Parameters
    ----------
    counts : ndarray (ny, nx)
        Events binned on the image grid.
    exposure_map : ndarray (ny, nx)
        Exposure map resampled on the same grid, cm**2 s.

    Returns
    -------
    float
        In [0, 1]; 1 when there are no counts.
    """
    total = float(counts.sum())
    if total <= 0:
        return 1.0
    return float(counts[exposure_map > 0].sum()) / total


def check_exposure_overlap(counts, exposure_map, events_path, exposure_path) -> float:
    """Refuse an exposure map on which the events mostly do not fall; return the share."""
    share = exposed_fraction(counts, exposure_map)
    if share < MIN_EXPOSED_FRACTION:
        raise InputError(f"exposure map covers only {100 * share:.1f}% of the events of "
                         f"{events_path} in the crop (another observation or pointing?)",
                         path=exposure_path)
    return share
