"""Which CIAO stages of one folder are done: ``<folder>/stages.json``.

The file is a :class:`hpcxt.io.workdir.StageRecord`, one entry per finished
stage::

    {"repro": {"signature": "<fingerprint>", "outputs": {...},
               "seconds": 81.2, "finished": "2025-01-31T10:12:03"}, ...}

A stage is done when its entry's signature equals the fingerprint of its
current settings and inputs (and :data:`RECORD_VERSION`) and every output
file it lists still exists. Entries of an older layout never match, so an
upgrade redoes the stages instead of trusting them.
"""

from __future__ import annotations

import time
from pathlib import Path

from ...io.workdir import StageRecord, fingerprint
from ._runner import file_problem

STAGE_RECORD = "stages.json"
#: Part of every signature; raise it when a stage's outputs change meaning.
RECORD_VERSION = 2


def signature(stage: str, settings: dict, inputs: dict) -> str:
    """Fingerprint of what a stage's output depends on."""
    return fingerprint({"version": RECORD_VERSION, "stage": stage, "settings": settings,
                        "inputs": inputs})


def _outputs_present(outputs: dict) -> bool:
    for value in outputs.values():
        for item in (value if isinstance(value, list) else [value]):
            if isinstance(item, str) and item.startswith("/") and file_problem(Path(item)):
                return False
    return True


def read_stage_record(folder) -> dict:
    """Stage name -> entry of a folder's ``stages.json`` ({} when absent or unreadable)."""
    return {k: v for k, v in StageRecord(Path(folder) / STAGE_RECORD).done.items()
            if isinstance(v, dict) and "signature" in v}


class StageBook:
    """The stage record of one folder: skips done stages, invalidates followers.

    Parameters
    ----------
    folder : Path
        ``<workdir>/obs/<obsid>`` (or ``obs/merged``); created.
    order : tuple of str
        The folder's stages in pipeline order.
    force : bool
        Forget every entry now.
    """

    def __init__(self, folder: Path, order: tuple, force: bool = False):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.order = order
        self.record = StageRecord(Path(folder) / STAGE_RECORD)
        stale = [k for k in self.record.done if force or k not in order]
        for key in stale:
            del self.record.done[key]
        if stale:
            self.record.save()

    def finished(self, stage: str, sig: str) -> dict | None:
        """Outputs of ``stage`` if it is recorded done with this signature and they exist."""
        entry = self.record.get(stage)
        if not isinstance(entry, dict) or entry.get("signature") != sig:
            return None
        if not _outputs_present(entry.get("outputs", {})):
            return None
        return entry["outputs"]

    def starting(self, stage: str) -> None:
        """Forget ``stage`` and every later one before running it."""
        later = self.order[self.order.index(stage):]
        dropped = [s for s in later if self.record.done.pop(s, None) is not None]
        if dropped:
            self.record.save()

    def done(self, stage: str, sig: str, outputs: dict, seconds: float) -> None:
        """Record ``stage`` as finished (on disk at once)."""
        self.record.mark(stage, {"signature": sig, "outputs": outputs,
                                 "seconds": round(seconds, 3),
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
