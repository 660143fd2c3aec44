"""LoggedProgress: plain progress lines in logs, throttled, and nothing extra on a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from cascade_serve.progress import LoggedProgress


class _Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _run(console: Console, clock: _Clock, **kwargs: object) -> None:
    with LoggedProgress(console=console, get_time=clock, log_every_s=30.0, auto_refresh=False, **kwargs) as bar:
        replay = bar.add_task("replay 10 prompts", total=10)
        other = bar.add_task("grade", total=None)
        for _ in range(10):
            clock.now_s += 10.0
            bar.advance(replay)
            bar.update(other, advance=2)


def test_a_log_gets_one_line_per_unfinished_task_every_interval() -> None:
    out = io.StringIO()
    _run(Console(file=out, force_terminal=False, width=120), _Clock())
    lines = [line for line in out.getvalue().splitlines() if " after " in line]
    # 100 s of work, logged every 30 s: at 30, 60 and 90 s, both tasks; the final bar has no "after".
    assert lines == [
        "replay 10 prompts: 3/10 after 30 s", "grade: 4 after 30 s",
        "replay 10 prompts: 6/10 after 60 s", "grade: 10 after 60 s",
        "replay 10 prompts: 9/10 after 90 s", "grade: 16 after 90 s",
    ]


def test_a_terminal_or_a_disabled_bar_gets_no_log_lines() -> None:
    for terminal in (True, False):
        out = io.StringIO()
        console = Console(file=out, width=120, force_terminal=terminal)
        _run(console, _Clock(), disable=not console.is_terminal)
        assert " after " not in out.getvalue()
