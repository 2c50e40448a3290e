"""Helpers shared by the test suite; imported as ``from tests.helpers.<module> import name``."""
