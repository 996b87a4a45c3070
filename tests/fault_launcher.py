"""Test-only launcher: the ``hpcxt`` command line with faults injected.

    python [-m mpi4py] tests/fault_launcher.py FAULTS_JSON COMMAND ARGS...

runs ``hpcxt COMMAND ARGS...`` exactly as ``python -m hpcxt`` would, but
passes the MPI stages a :class:`hpcxt.hooks.RunHooks` built from
FAULTS_JSON, an object with any of these keys:

``fail_regions``         list of region ids whose fit raises
``fit_delay``            seconds added to every region's fit
``kill_in_checkpoint``   the master SIGKILLs itself halfway through writing
                         its n-th checkpoint of the run
``kill_after_checkpoint``  ... right after its n-th checkpoint
``kill_after_batches``   ... after recording its n-th batch
``kill_worker``          that rank SIGKILLs itself on its first batch
``fail_rank``            that rank raises once the scale map's inputs are loaded
``counter_messages``     the fit's work counter is served by messages, as
                         where MPI has no one-sided communication
``signal_grace``         seconds the fit's master waits for batches being
                         fitted after a signal (production: 20)
``stage_final``          the fit's master writes its final checkpoint ahead
                         when this many seconds of work are left
``model_probe``          the fit's model check evaluates this XSPEC model instead
                         of the configured one (``"xsphabs*xsmeka"``: XSPEC's
                         fatal-error exit), or ``"segfault"``: its child dies
                         of SIGSEGV

Never shipped: production code has no switch that reads these.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from hpcxt.fit import FitRecord, RecordBatch, failure_reason
from hpcxt.hooks import RunHooks
from hpcxt.schema import Status


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FaultHooks(RunHooks):
    """RunHooks that fail, slow down or kill a run where FAULTS_JSON says."""

    def __init__(self, faults: dict):
        unknown = set(faults) - {"fail_regions", "fit_delay", "kill_in_checkpoint",
                                 "kill_after_checkpoint", "kill_after_batches", "kill_worker",
                                 "fail_rank", "model_probe", "stage_final",
                                 "counter_messages", "signal_grace"}
        if unknown:
            raise SystemExit(f"fault_launcher: unknown faults {sorted(unknown)}")
        self.f = faults

    def _is(self, key, value) -> bool:
        return self.f.get(key) is not None and int(self.f[key]) == int(value)

    def wrap_fit_batch(self, fit_batch, rank):
        fail = {int(i) for i in self.f.get("fail_regions", [])}
        delay = float(self.f.get("fit_delay", 0.0))
        if not fail and not delay:
            return fit_batch

        def faulty(ids):
            ids = [int(i) for i in ids]
            if delay:
                time.sleep(delay * len(ids))
            batch = fit_batch([i for i in ids if i not in fail])
            if not fail.intersection(ids):
                return batch
            nobs = batch.counts.shape[1]
            records = [_injected_failure(i, nobs) for i in ids if i in fail]
            injected = RecordBatch.from_records([i for i in ids if i in fail], records, nobs,
                                                worker=rank)
            return RecordBatch.concat([batch, injected])

        return faulty

    def worker_got_batch(self, rank, nth):
        if nth == 1 and self._is("kill_worker", rank):
            _kill_self()

    def batch_recorded(self, nth):
        if self._is("kill_after_batches", nth):
            _kill_self()

    def work_counter_rma(self):
        return not self.f.get("counter_messages")

    def signal_grace(self, seconds):
        return float(self.f.get("signal_grace", seconds))

    def stage_final(self):
        value = self.f.get("stage_final")
        return None if value is None else float(value)

    def checkpoint_midway(self, nth):
        if self._is("kill_in_checkpoint", nth):
            _kill_self()

    def checkpoint_written(self, nth):
        if self._is("kill_after_checkpoint", nth):
            _kill_self()

    def model_probe_command(self, command):
        probe = self.f.get("model_probe")
        if probe is None:
            return command
        if probe == "segfault":
            return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
        from hpcxt.models import probe_command
        return probe_command(probe)

    def scalemap_inputs_loaded(self, rank):
        if self._is("fail_rank", rank):
            raise RuntimeError(f"fault_launcher: rank {rank} fails on purpose")


def _injected_failure(region_id: int, nobs: int) -> FitRecord:
    try:
        raise RuntimeError(f"injected failure for region {region_id} (test hook)")
    except RuntimeError as exc:
        return FitRecord(nobs, status=Status.FAILED, reason=failure_reason(exc))


def main() -> int:
    from hpcxt.cli import main as hpcxt_main
    faults = json.loads(sys.argv[1])
    return hpcxt_main(sys.argv[2:], hooks=FaultHooks(faults))


if __name__ == "__main__":
    sys.exit(main())
