"""The runner's own input errors: what ``runner`` prints as a one-line message (no traceback)."""

from __future__ import annotations


class RunnerInputError(ValueError):
    """Bad input to a runner command (an unknown grid, device or run; a missing argument)."""
