"""Stage drivers: what each ``hpcxt`` command does, in order.

hpcxt is built in three layers, the same in every stage:

* **kernels** -- pure functions of arrays, no MPI, no file I/O, no global
  state: :mod:`hpcxt.prep.products` (filters, binning, background scale),
  :mod:`hpcxt.acb` (scale map, region coverage), :mod:`hpcxt.spectra` and
  :mod:`hpcxt.fit` (spectra and one region's fit), :mod:`hpcxt.maps`
  (painting, thermodynamics);
* **MPI layer** -- distributes, gathers and checkpoints, with the helpers
  of :mod:`hpcxt.parallel`: :mod:`hpcxt.acb_mpi`, :mod:`hpcxt.fit_mpi`;
* **drivers** (this package) -- read a stage's inputs, refuse bad or
  inconsistent ones with one line, call the MPI layer or the kernels,
  write the outputs through :mod:`hpcxt.io` (every path in
  :class:`hpcxt.io.workdir.WorkDir`, every write through
  :func:`hpcxt.io.workdir.atomic_write`): :mod:`.prep`,
  :mod:`.scalemap`, :mod:`.fit`, :mod:`.maps`, and :mod:`.compare` (a
simulated project's map against its truth, with the kernel
:mod:`hpcxt.compare`).
"""
