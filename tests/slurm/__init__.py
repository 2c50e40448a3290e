"""Tests of the SLURM path."""
