"""What a calibration run tells its caller while it works: each step's progress, notes and warnings.

The library prints nothing. The ``cascade`` command draws them as progress bars and lines on the
terminal (``cascade_serve.calibrate``); a script or a test passes its own reporter, or none.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Reporter", "SilentReporter"]


class Reporter(Protocol):
    def progress(self, step: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``step`` are finished; a step's first call starts it."""
        ...

    def note(self, text: str) -> None:
        """A line for the user: what the run does now."""
        ...

    def warning(self, text: str) -> None:
        """A problem the run carries on after (failed replay calls, say)."""
        ...


class SilentReporter:
    """The reporter of a caller that asks for none: ignores everything."""

    def progress(self, step: str, done: int, total: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        pass
