"""DS9 and CIAO region files: crop areas and point-source exclusions.

Parsing and shapes come from the ``regions`` package. It does not know the
``physical`` coordinate system, which is what ds9 writes for an event file
and what CIAO-format region files use implicitly; on an event file physical
coordinates *are* sky x, y, so such lines are read as ``image`` coordinates of
a 1-based sky-pixel grid. Sky regions (fk5, icrs, galactic) are projected
with the observation's sky frame.

Everything here works in "sky pixels minus one" (0-based pixel coordinates
of the sky grid), which is what ``regions`` uses for image coordinates.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.fitsio import SkyFrame

#: Sky shapes farther than this from the tangent point cannot belong to the
#: observation (ACIS-I is 17 arcmin across).
MAX_OFFSET_DEG = 2.0
_COORD_SYSTEMS = ("fk5", "icrs", "fk4", "galactic", "ecliptic", "image", "physical",
                  "j2000", "b1950", "linear")
_SHAPE_RE = re.compile(r"^\s*[-+]?\s*(circle|ellipse|box|rotbox|polygon|annulus|rectangle|point)\s*\(",
                       re.IGNORECASE)


class _CutLine(ValueError):
    """A region line whose parentheses do not close: the file was cut or mistyped."""

    def __init__(self, lineno: int, line: str):
        self.lineno, self.line = lineno, line
        super().__init__(f"line {lineno} is cut off or malformed (its parentheses do not "
                         f"close): {line.strip()[:60]!r}")


def _normalise(text: str) -> str:
    """Rewrite physical/CIAO syntax into something ``regions`` parses.

    Raises :class:`_CutLine` for a line whose parentheses do not close: the
    ``regions`` parser reads ``circle(165.0,40.0,4`` as a 4-degree circle,
    which is what a region file cut in the middle of a line looks like.
    """
    lines = []
    saw_system = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else raw.strip()
        if not line or line.startswith("#"):
            lines.append(raw)
            continue
        if line.count("(") != line.count(")"):
            raise _CutLine(lineno, line)
        low = line.lower().rstrip(";")
        if low in _COORD_SYSTEMS:
            saw_system = True
            lines.append("image" if low in ("physical", "linear") else low)
            continue
        if low.startswith("global"):
            lines.append(raw)
            continue
        if _SHAPE_RE.match(line):
            if not saw_system:
                # CIAO-format files name no system: their numbers are physical.
                lines.append("image")
                saw_system = True
            line = re.sub(r"(?i)^(\s*[-+]?\s*)rotbox", r"\1box", line)
            line = re.sub(r"(?i)^(\s*[-+]?\s*)rectangle", r"\1box", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


@dataclass
class RegionSet:
    """Include and exclude shapes from one region file."""

    path: Path
    field: str
    shapes: list  # (regions.Region, include: bool)

    def contains(self, x, y, frame: SkyFrame) -> np.ndarray:
        """Boolean array: inside any include shape and no exclude shape.

        Parameters
        ----------
        x, y : array_like
            Sky pixel coordinates (1-based, as in event files).
        frame : SkyFrame
            Sky frame of ``x``, ``y`` (projects fk5 shapes).
        """
        from regions import PixCoord

        x = np.asarray(x, float)
        y = np.asarray(y, float)
        pix = PixCoord(x - 1.0, y - 1.0)
        inside = np.zeros(x.shape, bool)
        excluded = np.zeros(x.shape, bool)
        any_include = False
        for pshape, include in self._pixel_shapes(frame):
            hit = np.asarray(pshape.contains(pix), bool)
            if include:
                any_include = True
                inside |= hit
            else:
                excluded |= hit
        if not any_include:
            inside[:] = True
        return inside & ~excluded

    def _pixel_shapes(self, frame: SkyFrame):
        """Shapes in 0-based sky-pixel coordinates (what ``regions`` calls pixels)."""
        from astropy.coordinates import SkyCoord
        import astropy.units as u
        from regions import SkyRegion

        # The frame's WCS maps 1-based sky x, y; regions' pixels are 0-based,
        # which is exactly the sky x-1, y-1 that contains() passes in.
        wcs = frame.wcs()
        tangent = SkyCoord(frame.ra0 * u.deg, frame.dec0 * u.deg)
        out = []
        for shape, include in self.shapes:
            if isinstance(shape, SkyRegion):
                centre = getattr(shape, "center", None)
                if centre is None and hasattr(shape, "vertices"):
                    centre = shape.vertices[0]
                sep = centre.separation(tangent).deg if centre is not None else 0.0
                if sep > MAX_OFFSET_DEG:
                    raise InputError(f"a {type(shape).__name__.replace('SkyRegion', '').lower()} "
                                     f"lies {sep:.1f} deg from the observations' pointing",
                                     path=self.path, field=self.field)
                out.append((shape.to_pixel(wcs), include))
            else:
                out.append((shape, include))
        return out

    def shape_masks(self, x, y, frame: SkyFrame):
        """Each include shape's mask, and the union of the exclude shapes.

        Parameters
        ----------
        x, y : array_like
            Sky pixel coordinates (1-based, as in event files).
        frame : SkyFrame

        Returns
        -------
        include : ndarray (n_include, *x.shape) bool
            In file order.
        exclude : ndarray x.shape bool
        """
        from regions import PixCoord

        x = np.asarray(x, float)
        y = np.asarray(y, float)
        pix = PixCoord(x - 1.0, y - 1.0)
        include, exclude = [], np.zeros(x.shape, bool)
        for pshape, inc in self._pixel_shapes(frame):
            hit = np.asarray(pshape.contains(pix), bool)
            if inc:
                include.append(hit)
            else:
                exclude |= hit
        return np.array(include, dtype=bool).reshape((len(include),) + x.shape), exclude

    def include_bbox(self, frame: SkyFrame):
        """(xmin, xmax, ymin, ymax) in sky pixels of the include shapes."""
        boxes = []
        for pshape, include in self._pixel_shapes(frame):
            if not include:
                continue
            bb = pshape.bounding_box
            boxes.append((bb.ixmin + 1.0, bb.ixmax + 1.0, bb.iymin + 1.0, bb.iymax + 1.0))
        if not boxes:
            raise InputError("has no include shape to crop to", path=self.path, field=self.field)
        b = np.array(boxes, float)
        return b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()




def _first_bad_line(text: str, exc: Exception) -> str:
    """Which line the parser failed on (parsing growing prefixes; only on errors)."""
    from regions import Regions

    lines = text.splitlines()
    for n in range(1, len(lines) + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Regions.parse(_normalise("\n".join(lines[:n])), format="ds9")
        except Exception as line_exc:  # same private error types as above
            reason = str(line_exc).splitlines()[0] if str(line_exc) else type(line_exc).__name__
            return f"line {n} {lines[n - 1].strip()[:60]!r} ({reason})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_region_file(path, field: str) -> RegionSet:
    """Parse a DS9 (or CIAO) region file.

    Parameters
    ----------
    path : path
        Region file.
    field : str
        Config field it came from (``prep.crop_region``), for error messages.
    """
    from regions import Regions

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError("region file not found", path=path, field=field) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read region file ({exc})", path=path, field=field) from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parsed = Regions.parse(_normalise(text), format="ds9")
    except _CutLine as exc:
        raise InputError(str(exc), path=path, field=field) from None
    except Exception as exc:  # the parser raises several private error types
        raise InputError(f"not a DS9 region file: {_first_bad_line(text, exc)}",
                         path=path, field=field) from None
    skipped = [str(w.message).splitlines()[0] for w in caught]
    if skipped:
        raise InputError(f"cannot use a region: {skipped[0]}", path=path, field=field)
    shapes = []
    for shape in parsed:
        include = bool(shape.meta.get("include", 1))
        shapes.append((shape, include))
    if not shapes:
        raise InputError("no shapes in region file", path=path, field=field)
    return RegionSet(path=path, field=field, shapes=shapes)
