"""The package layout's import rules (``docs/architecture.md``): one package per command over shared
layers that import nothing above them.

Every import of every module is read from its source (``ast``), lazy ones inside functions included,
so a rule broken only on a rarely taken path still fails here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> the project packages it may import (its floor and below).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "routing": frozenset(),
    "cluster": frozenset(),
    "toymodels": frozenset(),
    "estimators": frozenset({"routing"}),
    "evaluation": frozenset({"estimators", "routing"}),
    "serve": frozenset({"estimators", "routing", "cluster"}),
    "calibration": frozenset({"estimators", "routing", "cluster", "evaluation"}),
    "cascade_serve": frozenset({"routing", "cluster", "toymodels", "estimators", "evaluation", "serve",
                                "calibration"}),
}
PROJECT = frozenset(MAY_IMPORT) | {"scripts"}

# package -> third-party packages it must never import, even lazily.
NEVER: dict[str, frozenset[str]] = {
    "routing": frozenset({"sklearn", "pydantic", "ray", "vllm", "torch", "transformers", "fastapi"}),
    "cluster": frozenset({"ray", "vllm", "torch", "transformers"}),
    "toymodels": frozenset({"ray", "vllm"}),
    "estimators": frozenset({"ray", "vllm", "torch", "pydantic", "fastapi"}),
    "evaluation": frozenset({"ray", "vllm", "torch", "fastapi"}),
    "calibration": frozenset({"ray", "vllm", "torch", "fastapi"}),
}
# vLLM and Ray internals stay behind the modules that adapt them, so a Ray or vLLM upgrade touches
# those files only.
INTERNALS = ("vllm", "ray._private", "ray.llm._internal", "ray.serve._private")
INTERNALS_ALLOWED = frozenset({"serve/replica.py", "serve/app.py", "serve/deploy.py", "serve/ingress.py"})


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in a module; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_package_imports_only_the_layers_below_it(package: str) -> None:
    problems = []
    for path in _modules(package):
        for line, name in _imports(path):
            top = name.split(".")[0]
            where = f"{path.relative_to(REPO)}:{line}"
            if top in PROJECT and top != package and top not in MAY_IMPORT[package]:
                problems.append(f"{where}: {package}/ imports {name} (allowed: {sorted(MAY_IMPORT[package])})")
            if top in NEVER.get(package, ()):
                problems.append(f"{where}: {package}/ imports {name}, which it must never import")
    assert not problems, "\n".join(problems)


def test_engine_and_ray_internals_stay_in_their_adapters() -> None:
    problems = []
    for package in sorted(PROJECT):
        for path in _modules(package):
            rel = path.relative_to(REPO).as_posix()
            for line, name in _imports(path):
                internal = any(name == p or name.startswith(p + ".") for p in INTERNALS)
                if internal and rel not in INTERNALS_ALLOWED:
                    problems.append(f"{rel}:{line}: imports {name} (only {sorted(INTERNALS_ALLOWED)} may)")
    assert not problems, "\n".join(problems)


def test_the_rules_cover_every_package_and_have_no_cycle() -> None:
    """A new top-level package must get a rule; the allowed graph is a DAG (no package cycle)."""
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(MAY_IMPORT) | {"scripts"}
    seen: dict[str, int] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if seen.get(node) == 2:
            return
        seen[node] = 1
        for below in MAY_IMPORT[node]:
            visit(below, (*path, node))
        seen[node] = 2

    for package in MAY_IMPORT:
        visit(package, ())


def test_scripts_are_not_installed(tmp_path: Path) -> None:
    """scripts/ runs from the repository root; an installed top-level ``scripts`` would shadow others'."""
    import tomllib

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not [p for p in find["include"] if p.startswith("scripts")]
    code = "import importlib.util as u; s = u.find_spec('scripts'); print(s.origin if s else '')"
    where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                           cwd=tmp_path).stdout.strip()
    assert not where.startswith(str(REPO)), f"scripts is importable outside the repository: {where}"


@pytest.mark.parametrize("module", ["estimators.stage", "estimators.table", "estimators.answers",
                                    "estimators.bounded_update", "estimators.token_cost", "estimators.logprob_quality",
                                    "cluster.config", "toymodels.qwen2"])
def test_light_modules_do_not_load_heavy_stacks(module: str) -> None:
    """A numpy-only module imports without scikit-learn, Ray, torch or the benchmark loader
    (``estimators/__init__`` once re-exported all of them)."""
    code = (f"import sys, {module}\n"
            "heavy = ('sklearn', 'ray', 'torch', 'vllm', 'transformers', 'evaluation', 'calibration', 'serve')\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                            cwd=REPO)
    assert result.stdout.strip() == "", f"import {module} loaded: {result.stdout.strip()}"


def test_installed_names_belong_to_this_project_alone(tmp_path: Path) -> None:
    """The top-level names the design fixes are plain words (``serve``, ``routing``...): no other package
    installed beside cascade-serve (the engine stack included) may ship the same name, or one of them
    would shadow the other. Read outside the repository, as an installed copy sees it."""
    code = ("import importlib.metadata as md, json; d = md.packages_distributions(); "
            f"print(json.dumps({{n: d.get(n) for n in {sorted(MAY_IMPORT)!r}}}))")
    owners = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       timeout=60, cwd=tmp_path).stdout)
    shared = {name: dists for name, dists in owners.items() if dists and set(dists) != {"cascade-serve"}}
    assert not shared, f"top-level names shipped by other distributions too: {shared}"
