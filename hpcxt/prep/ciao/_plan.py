"""One observation's plan: plain data from the config, so it can go to a worker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ...io.workdir import WorkDir


@dataclass
class ObsPlan:
    """Everything the CIAO stages of one observation need (picklable)."""

    obsid: str
    obsdir: str            # <workdir>/obs/<obsid>: products, logs, stages.json
    rawdir: str            # <data_dir>/<obsid>: what download_chandra_obsid writes
    data_dir: str          # folder download_chandra_obsid runs in
    tmp_root: str          # <workdir>/tmp: per-call PFILES and scratch dirs
    download: bool
    download_timeout: float
    tool_timeout: float | None
    check_vf_pha: bool
    ccd_filter: str        # DM syntax, e.g. 0:3
    deflare: dict          # prep.deflare
    background_method: str
    band: list             # keV
    expmap_energy: float   # keV
    bin: int               # sky pixels per image pixel
    binarfwmap: int        # specextract: binning of mkwarf's weight map
    point_sources: str | None
    spectrum_region: str | None
    force: bool = False

    @property
    def id5(self) -> str:
        """The obsid as Chandra file names spell it (zero-padded to 5 digits)."""
        return f"{int(self.obsid):05d}"

    @property
    def bands(self) -> str:
        """fluximage/merge_obs ``bands``: ``lo:hi:energy`` in keV."""
        return f"{self.band[0]:g}:{self.band[1]:g}:{self.expmap_energy:g}"

    @property
    def band_label(self) -> str:
        """The band as fluximage spells it in file names: ``lo-hi``."""
        return f"{self.band[0]:g}-{self.band[1]:g}"


def ccd_filter(ccds) -> str:
    """DM filter value for a list of CCD ids: [0, 1, 2, 3] -> '0:3'."""
    ccds = sorted(set(int(c) for c in ccds))
    parts, start, prev = [], ccds[0], ccds[0]
    for c in ccds[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)


def kev_filter(band) -> str:
    """DM energy filter value in eV for a band in keV: [9, 12] -> '9000:12000'."""
    return f"{band[0] * 1000:g}:{band[1] * 1000:g}"


def _check_settings(cfg) -> None:
    prep = cfg.prep
    acis_s = [c for c in prep.ccds if c > 3]
    if acis_s:
        raise InputError(f"CCDs {acis_s} are ACIS-S: the ciao backend handles ACIS-I "
                         "(CCDs 0-3) only for now; use prep.backend: products for ACIS-S data",
                         path=cfg.path, field="prep.ccds")
    band = list(prep.energy_band)
    if not band[0] < prep.ciao.expmap_energy < band[1]:
        raise InputError(f"must lie inside prep.energy_band {band} keV, "
                         f"got {prep.ciao.expmap_energy}",
                         path=cfg.path, field="prep.ciao.expmap_energy")


def _obsid(cfg, i: int, obs) -> str:
    obsid = str(obs.obsid).strip()
    if not obsid.isdigit() or int(obsid) <= 0:
        raise InputError(f"must be a Chandra observation id (a positive number) with "
                         f"prep.backend: ciao, got {obsid!r}",
                         path=cfg.path, field=f"observations[{i}].obsid")
    return str(int(obsid))


def make_plans(cfg, workdir: Path, force: bool = False) -> list[ObsPlan]:
    """One :class:`ObsPlan` per configured observation; checks the CIAO settings."""
    _check_settings(cfg)
    prep, ciao = cfg.prep, cfg.prep.ciao
    wd = WorkDir(Path(workdir).resolve())
    data_dir = Path(ciao.data_dir).resolve() if ciao.data_dir else wd.obs
    common = dict(
        data_dir=str(data_dir), tmp_root=str(wd.tmp), download=bool(ciao.download),
        download_timeout=float(ciao.download_timeout),
        tool_timeout=None if ciao.tool_timeout is None else float(ciao.tool_timeout),
        check_vf_pha=bool(ciao.check_vf_pha), ccd_filter=ccd_filter(prep.ccds),
        deflare=prep.deflare.to_dict(), background_method=ciao.background_method,
        band=list(prep.energy_band), expmap_energy=float(ciao.expmap_energy),
        bin=int(prep.bin), binarfwmap=int(ciao.binarfwmap), point_sources=prep.point_sources,
        spectrum_region=ciao.spectrum_region or prep.crop_region, force=force)
    plans = []
    for i, obs in enumerate(cfg.observations):
        obsid = _obsid(cfg, i, obs)
        plans.append(ObsPlan(obsid=obsid, obsdir=str(wd.obs_dir(obsid)),
                             rawdir=str(data_dir / obsid), **common))
    return plans
