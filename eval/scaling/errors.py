"""The two errors of a scaling fit: unusable input, and a best fit at the edge of the start grid.

The command line (`eval.scaling.cli`) prints either as ``error: ...`` and exits with status 2.
"""


class ScalingInputError(ValueError):
    """The points given to a fit cannot be read or cannot support the fit."""


class GridBoundaryError(RuntimeError):
    """The best Approach-3 fit lies at or beyond the edge of the grid of starts."""
