"""The controller's warnings reach its process's stderr as they happen, not through Serve's request-path
buffer (reliability issue, finding 7: a buffer dies with its replica). The real-stack counterpart reads
the controller's worker log in ``test_serving_e2e.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_warning_is_on_stderr_even_when_the_process_dies_right_after() -> None:
    code = ("import logging, os\n"
            "logging.getLogger('ray.serve').addHandler(logging.handlers.MemoryHandler(1000))\n"
            "from serve import controller, probes\n"
            "controller.logger.warning('replica gone')\n"
            "probes.logger.warning('probe failed')\n"
            "os._exit(1)  # no interpreter shutdown, no flush: as a killed replica\n")
    done = subprocess.run([sys.executable, "-c", "import logging.handlers\n" + code], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert "WARNING cascade_serve.controller: replica gone" in done.stderr
    assert "WARNING cascade_serve.controller: probe failed" in done.stderr


def test_the_handler_is_added_once_and_records_do_not_go_through_ray_serve() -> None:
    from serve.logs import controller_logger

    logger = controller_logger()
    ours = [h for h in logger.handlers if getattr(h, "_cascade_unbuffered", False)]
    assert controller_logger() is logger and len(ours) == 1
    assert not logger.propagate
