"""hpcxt: MPI-parallel X-ray temperature maps of galaxy clusters."""
__version__ = "0.1.0"
