"""CIAO backend of ``hpcxt prep``: from Chandra observation ids to products.

For each configured observation id this runs, in ``<workdir>/obs/<obsid>/``,
the CIAO steps of ClusterPyXT's stages 1-3, one *stage* at a time:

=============  ===============================================================
stage          CIAO tools
=============  ===============================================================
download       ``download_chandra_obsid`` (skipped when the data are there)
repro          ``chandra_repro`` (``check_vf_pha`` from the config); the aspect
               solution is the one chandra_repro lists in ``<root>_asol1.lis``
               (else the evt2 ``ASOLFILE`` keyword), never a glob
acis_i         ``dmcopy [ccd_id=0:3]``: ACIS-I events only (ACIS-S chips are
               not supported by this backend yet)
deflare        ``dmcopy [energy=9000:12000]`` (point sources excluded),
               ``dmextract [bin time=::259.28] opt=ltc1``,
               ``deflare method=clean|sigma`` with that method's parameters,
               ``dmcopy [@gti]``
background     ``blanksky``, or ``acis_bkgrnd_lookup`` + ``pget`` (one CALDB
               file per chip) + ``dmmerge`` + ``reproject_events`` (``match``
               = the events; ``[status=0]`` for VFAINT data cleaned with
               ``check_vf_pha``, as blanksky does)
exposure       ``fluximage`` with the configured band and binning
response       ``specextract weight=yes binarfwmap=<n> correctpsf=no`` over
               the spectrum region: one global ARF and RMF per observation
=============  ===============================================================

With more than one observation, ``merge_obs`` also makes a merged image in
``<workdir>/obs/merged/`` for drawing the region files on. The products are
then handed to the ``products`` backend (energy filter, point sources, crop,
merge, bundle) by :func:`hpcxt.driver.run_prep`.

Robustness, which is the point of this package:

* every tool call gets its own parameter-file directory
  (``PFILES="<workdir>/tmp/pfiles/<pid>-<n>;<CIAO's system dirs>"``, the
  only writable part) and its own temporary directory, so parallel runs
  never share ``.par`` files and no learned value leaks in;
* every call's command line and output go to ``<obsid>/logs/<stage>.log``;
* a non-zero exit, a time-out, or an output file that is missing, unreadable
  or empty stops the run with a one-line :class:`CiaoError` naming the tool,
  the observation and the log file (``hpcxt`` prints it and exits with
  status 2);
* a stage is recorded as done in ``<obsid>/stages.json`` (an atomic write)
  only after its outputs have been verified, so a re-run skips finished
  stages and resumes at the one that failed. A stage whose settings or
  inputs changed is redone, and so is every stage after it;
* tools never wait for a prompt (stdin is closed) and the download has a
  time limit, so nothing hangs forever;
* independent observations run in parallel processes (``prep.ciao.nproc``).

Modules: ``_env`` (is CIAO here, PFILES), ``_runner`` (one tool call),
``_record`` (the stage record), ``_plan`` (settings of one observation),
``_repro`` (where chandra_repro put things), ``_stages`` (the stages),
``_pipeline`` (running them). The stand-in executables in
``tests/ciao_standins/`` imitate the tools for the test suite; they are not a
way to run the pipeline.
"""

from ._env import OPTIONAL_TOOLS, REQUIRED_TOOLS, ciao_available, ciao_info, missing_tools, \
    system_pfiles
from ._pipeline import PHASE1, prepare_observations, run_stages
from ._plan import ObsPlan, make_plans
from ._record import read_stage_record
from ._runner import CiaoError, ToolRunner
from ._stages import STAGES

__all__ = ["CiaoError", "ObsPlan", "OPTIONAL_TOOLS", "PHASE1", "REQUIRED_TOOLS", "STAGES",
           "ToolRunner", "ciao_available", "ciao_info", "make_plans", "missing_tools",
           "prepare_observations", "read_stage_record", "run_stages", "system_pfiles"]
