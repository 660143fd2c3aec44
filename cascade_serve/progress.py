"""A rich progress bar that also shows progress when its output is a file or a pipe.

Rich draws a live bar only on a terminal. Written to a log (CI, `nohup`, `| tee`), it prints the bar
once, when it stops, so a 20-minute replay looks hung until it is over. `LoggedProgress` behaves
exactly like rich's `Progress` on a terminal; elsewhere it also prints one plain line per unfinished
task at most every `log_every_s` seconds, when the task moves.
"""

from __future__ import annotations

from typing import Any

from rich.progress import Progress, TaskID


class LoggedProgress(Progress):
    def __init__(self, *columns: Any, log_every_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.log_every_s = log_every_s
        self._logged_at_s = self.get_time()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_if_due()

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._log_if_due()

    def _log_if_due(self) -> None:
        if self.disable or self.console.is_terminal:
            return
        now_s = self.get_time()
        if now_s - self._logged_at_s < self.log_every_s:
            return
        self._logged_at_s = now_s
        for task in self.tasks:
            if task.finished or not task.visible:
                continue
            done = f"{task.completed:g}/{task.total:g}" if task.total is not None else f"{task.completed:g}"
            elapsed_s = task.elapsed or 0.0
            self.console.print(f"{task.description.strip()}: {done} after {elapsed_s:.0f} s",
                               markup=False, highlight=False)
