"""The controller's own log: its warnings and errors, written to the process's stderr as they happen.

Serve's ``ray.serve`` logger buffers request-path records in the controller's replica (the fleet sets a
large buffer for its access log, ``serve.app``), and a buffer is lost when the replica dies or is
redeployed: exactly when its warnings matter. So the controller and its probes log to a logger of their
own, with a handler that writes each record at once; Ray keeps a worker's stderr in its log folder and
shows it on the driver.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["CONTROLLER_LOGGER", "controller_logger"]

CONTROLLER_LOGGER = "cascade_serve.controller"


def controller_logger() -> logging.Logger:
    """The controller's logger, with its unbuffered stderr handler (added once per process)."""
    logger = logging.getLogger(CONTROLLER_LOGGER)
    if not any(getattr(h, "_cascade_unbuffered", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)  # flushes after every record
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._cascade_unbuffered = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # a second copy through Ray's root handlers would be buffered or doubled
    return logger
