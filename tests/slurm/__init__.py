"""Tests of the SLURM path (a package, so its conftest does not shadow tests/train/conftest.py)."""
