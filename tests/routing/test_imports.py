"""The light core's import footprint and its public namespace."""

from __future__ import annotations

import subprocess
import sys

import routing

HEAVY = ("ray", "vllm", "torch", "pydantic", "sklearn")


def test_import_routing_pulls_in_no_heavy_dependency() -> None:
    """routing must install and import without the engine stack or scikit-learn (pyproject's light core)."""
    code = (
        "import sys, routing\n"
        f"heavy = {HEAVY!r}\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "", f"import routing loaded: {result.stdout.strip()}"


def test_exported_members() -> None:
    """__all__ is sorted and lists exactly the public names of the package, each documented."""
    exported = routing.__all__
    assert exported == sorted(exported)
    assert len(set(exported)) == len(exported)
    public = {name for name in dir(routing) if not name.startswith("_")}
    assert set(exported) == public
    for name in exported:
        member = getattr(routing, name)
        assert getattr(member, "__doc__", None), f"routing.{name} has no docstring"
