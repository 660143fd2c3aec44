"""``cascade calibrate`` on the terminal: progress bars, notes and warnings while the run works
(``calibration.run`` reports them), and the summary's tables when it is done."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from cascade_serve.policy_tables import print_policy_choice
from cascade_serve.progress import LoggedProgress

__all__ = ["ConsoleReporter", "print_summary"]


class ConsoleReporter:
    """A ``calibration.reporter.Reporter`` on a rich console (stderr by default): one progress bar per
    step, notes and warnings as lines.

    A note or a warning first stops the bars drawn so far (they stay on screen, as they ended), so lines
    and bars appear in the order they happened, in a log file too, where rich prints a bar only when it
    stops. Use it as a context manager, which stops the bars however the run ends.

    Parameters
    ----------
    quiet : bool
        No bars and no lines.
    console : rich.console.Console, optional
        Where to draw (default: stderr).
    """

    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console if console is not None else Console(stderr=True, quiet=quiet)
        self._bar: LoggedProgress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ConsoleReporter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def progress(self, step: str, done: int, total: int) -> None:
        if self._bar is None:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._bar = LoggedProgress(*columns, console=self.console, transient=False, disable=self.quiet)
            self._bar.start()
            self._tasks = {}
        if step not in self._tasks:
            self._tasks[step] = self._bar.add_task(step, total=total)
        self._bar.update(self._tasks[step], completed=done, total=total)

    def note(self, text: str) -> None:
        self.close()
        if not self.quiet:
            self.console.print(text)

    def warning(self, text: str) -> None:
        self.close()
        if not self.quiet:
            # Error messages quote replies, whose brackets are not rich markup.
            self.console.print(text, style="yellow", markup=False)

    def close(self) -> None:
        """Stop the bars drawn so far; the next progress starts new ones."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def print_summary(summary: dict[str, Any], out: Path, *, console: Console | None = None) -> None:
    """The calibration's per-model table, the held-out AUCs, the policy served per budget with its
    evidence, the budget's policy and lambda, and where the artifacts are (``summary``: what
    ``calibration.run.run_calibrate`` returns)."""
    console = console if console is not None else Console()
    models = Table(title="models (all calibration prompts; cost error on held-out prompts)")
    for col in ("model", "accuracy", "GPU-s / query", "cost MAPE ex ante", "given tokens"):
        models.add_column(col, justify="right" if col != "model" else "left")
    for m, v in summary["per_model"].items():
        models.add_row(m, f"{v['accuracy']:.3f}", f"{v['gpu_s_per_query']:.4g}", f"{100 * v['cost_mape_ex_ante']:.1f}%",
                       f"{100 * v['cost_mape_given_tokens']:.1f}%")
    console.print(models)
    auc = Table(title="held-out Pareto report: AUC x100 (mean quality over the models' cost range)")
    auc.add_column("policy")
    auc.add_column("AUC", justify="right")
    for k, v in summary["report"]["auc"].items():
        auc.add_row(k, f"{v:.2f}")
    console.print(auc)
    if "policy_choice" in summary:
        print_policy_choice(summary["policy_choice"], console, cost_unit="GPU-s/query")
    b = summary["budget"]
    if b is not None:
        chosen = f"; chosen among {' < '.join(b['candidates'])}" if "candidates" in b else ""
        console.print(f"budget {b['budget_gpu_s']:.4g} GPU-s/query → {b['policy']} lambda {b['lambda']:.4g} "
                      f"(validation: {b['cost']:.4g} GPU-s, quality {b['quality']:.3f}{chosen})")
    console.print(f"artifacts: {out}/calibration.json, {out}/estimators.pkl; plot: {out}/pareto.png")
    if b is not None and "chosen_under" in b:
        console.print(f"serve with them: cascade: {{artifacts: {out}}} in the fleet file serves {b['policy']} at this "
                      f"budget; with budget_gpu_s: B, the fleet file's policy ({b['chosen_under']}) at B")
    else:
        console.print(f"serve with them: cascade: {{artifacts: {out}, budget_gpu_s: ...}} in the fleet file")
