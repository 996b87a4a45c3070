"""Which prep backend runs, and why (``prep.backend``).

``products`` reads the files the config lists for each observation; ``ciao``
makes them with CIAO's tools from the observation ids. ``auto`` picks
``products`` whenever the config gives product paths (the files a user
listed always win, even with CIAO on PATH), else ``ciao`` when CIAO's tools
are on PATH; with neither it stops and says what is missing.
"""

from __future__ import annotations

from ..errors import InputError

#: Per-observation config keys that name a product file.
PRODUCT_KEYS = ("events", "background", "exposure_map", "arf", "rmf")


def listed_products(cfg) -> list[str]:
    """Config fields that give a product path, e.g. ``observations[0].events``."""
    return [f"observations[{i}].{key}" for i, obs in enumerate(cfg.observations)
            for key in PRODUCT_KEYS if obs[key] is not None]


def choose_backend(cfg) -> tuple[str, str]:
    """The backend to run and the reason, for the log.

    Raises
    ------
    InputError
        ``auto`` with neither product paths nor CIAO on PATH.
    """
    configured = cfg.prep.backend
    if configured != "auto":
        return configured, f"prep.backend is {configured}"
    listed = listed_products(cfg)
    if listed:
        more = f" and {len(listed) - 1} more" if len(listed) > 1 else ""
        return "products", (f"prep.backend auto: the config gives product paths "
                            f"({listed[0]}{more}), so CIAO is not run")
    from .ciao import missing_tools
    missing = missing_tools()
    if not missing:
        return "ciao", ("prep.backend auto: no product paths in the config and CIAO's tools "
                        "are on PATH")
    raise InputError("auto finds no product paths in the config (observations[i].events, "
                     "exposure_map, arf, rmf) and no CIAO on PATH (missing: "
                     f"{', '.join(missing)}): list the products or initialise CIAO",
                     path=cfg.path, field="prep.backend")
