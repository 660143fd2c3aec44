"""``cluster.accelerators``: Ray's accelerator names, copied because ``cluster/`` never imports Ray, stay Ray's."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from cluster.accelerators import GPU_MEMORY_GIB, RAY_ACCELERATOR_TYPES, unknown_accelerator


def test_the_names_are_those_of_the_installed_ray() -> None:
    """Read from Ray's module source (importing Ray takes seconds): every string constant it defines."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / "util" / "accelerators" / "accelerators.py"
    names = {node.value.value for node in ast.parse(source.read_text()).body
             if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
             and isinstance(node.value.value, str) and not node.targets[0].id.startswith("_")}  # type: ignore[attr-defined]
    assert names == RAY_ACCELERATOR_TYPES


def test_every_kind_with_a_memory_size_is_a_ray_name() -> None:
    assert set(GPU_MEMORY_GIB) <= RAY_ACCELERATOR_TYPES
    assert GPU_MEMORY_GIB["H100"] < 80 < GPU_MEMORY_GIB["H200"]  # CUDA's GiB, below the GB on the box


def test_a_typo_gets_the_closest_names() -> None:
    assert unknown_accelerator("H1OO") == "unknown accelerator 'H1OO' (did you mean 'H100'?)"
    assert unknown_accelerator("nonsense-gpu") == "unknown accelerator 'nonsense-gpu'"
