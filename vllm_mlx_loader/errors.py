"""The one exception type the plugin raises for a bad checkpoint or bad options."""

from __future__ import annotations


class MLXCheckpointError(ValueError):
    """A checkpoint (or an option) that the loader refuses, with where, what and what to do."""

    def __init__(self, where: str, problem: str, hint: str = "") -> None:
        self.where = where
        self.problem = problem
        self.hint = hint
        message = f"{where}: {problem}"
        if hint:
            message += f" {hint}"
        super().__init__(message)
