"""Prep stages: products and CIAO backends, the simulator, responses."""
