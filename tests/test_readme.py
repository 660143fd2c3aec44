"""The README's first lines are the two fresh-machine commands, and CI runs the second one verbatim."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("```bash")
    end = lines.index("```", start + 1)
    return [line for line in lines[start + 1 : end] if line.strip()]


def test_readme_opens_with_two_commands_using_the_repo_venv() -> None:
    assert (REPO / "README.md").read_text().splitlines()[2] == "```bash"
    commands = _commands()
    assert len(commands) == 2
    assert all(c.startswith("scripts/setup_venv.sh") and ".venv/bin/" in c for c in commands)


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _commands()[1] in ci
