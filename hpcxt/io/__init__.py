"""Readers and writers: config, FITS, the prep bundle, region tables, checkpoints."""
