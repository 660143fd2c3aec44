"""Writing a run's results where the user asked: JSON for comparing runs, a PNG for looking at them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_results"]


def write_results(result: dict[str, Any], *, json_path: Path | None, plot_path: Path | None,
                  plot: Callable[[dict[str, Any], Path], Any]) -> None:
    """``result`` as indented JSON at ``json_path`` and drawn by ``plot`` at ``plot_path`` (each if given;
    parent folders are created)."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
    if plot_path is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(result, plot_path)
