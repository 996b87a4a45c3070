"""Points where a run of an MPI stage can be observed or disturbed.

Production runs use :class:`RunHooks`, whose methods do nothing. Tests pass
a subclass (``tests/fault_launcher.py``) to fail a region, slow the fits,
or SIGKILL a rank at a chosen moment, so that crash safety and restart are
tested through the real code path without production code reading any
test switch.
"""

from __future__ import annotations


class RunHooks:
    """No-op hooks; override the ones a test needs.

    Every ``nth`` counts from 1 within the current run.
    """

    # fit: before it starts
    def model_probe_command(self, command: list) -> list:
        """The child process that checks the configured model (argv list)."""
        return command

    # fit: workers
    def wrap_fit_batch(self, fit_batch, rank: int):
        """The batch fitter a worker (or a serial run) uses: ``ids -> RecordBatch``."""
        return fit_batch

    def worker_got_batch(self, rank: int, nth: int) -> None:
        """A worker received its ``nth`` batch, before fitting it."""

    # fit: master
    def batch_recorded(self, nth: int) -> None:
        """The fit's master received its ``nth`` report of results (a serial
        run: fitted its ``nth`` batch); not yet checkpointed."""

    def work_counter_rma(self) -> bool:
        """Whether the fit's work counter may use MPI one-sided communication
        (False: rank 0 answers every take by message, as where MPI has none)."""
        return True

    def signal_grace(self, seconds: float) -> float:
        """How long the fit's master waits for batches being fitted after a
        signal, s (``seconds``: the production value)."""
        return seconds

    def stage_final(self) -> float | None:
        """Seconds of work left at which the fit's master writes its final
        checkpoint ahead (None: as :meth:`hpcxt.fit_mpi._Master.maybe_stage` decides)."""
        return None

    def checkpoint_midway(self, nth: int) -> None:
        """Half of the ``nth`` checkpoint is written to its temporary file."""

    def checkpoint_written(self, nth: int) -> None:
        """The ``nth`` checkpoint is renamed into place."""

    def master_finished(self, stats) -> None:
        """The master's loop ended; ``stats`` is a :class:`hpcxt.fit_mpi.MasterStats`."""

    # scale map
    def scalemap_inputs_loaded(self, rank: int) -> None:
        """Every rank has the scale map's inputs; the computation starts next."""


NO_HOOKS = RunHooks()
