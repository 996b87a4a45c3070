"""The serial prep driver (the design card's ``hpcxt/driver.py``).

Every stage's driver lives in :mod:`hpcxt.stages`; prep's is
:mod:`hpcxt.stages.prep`, whose :func:`run_prep` this module names.
"""

from .stages.prep import run_prep

__all__ = ["run_prep"]
