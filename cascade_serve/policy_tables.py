"""The served policy's evidence on the terminal, for ``cascade calibrate`` and ``cascade eval``: per budget
the policy chosen on validation and every policy's held-out quality against routing, the chosen policy
against every single model, and the promise's computed verdict (``evaluation.policy_report``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

__all__ = ["print_policy_choice", "promise_line"]


def promise_line(report: dict[str, Any], *, cost_unit: str) -> str:
    """``"<claim>: PASS at all N budgets"``, or ``FAIL`` with the budgets where the chosen policy's CI
    against routing lies entirely below 0."""
    check = report["never_below_routing"]
    if check["pass"]:
        return f"{check['claim']}: PASS at all {check['n_budgets']} budgets"
    failed = ", ".join(f"{b:.4g}" for b in check["failed_budgets"])
    return f"{check['claim']}: FAIL at {len(check['failed_budgets'])} budget(s): {failed} {cost_unit}"


def print_policy_choice(
    report: dict[str, Any], console: Console, *, cost_unit: str, max_rows: int = 12
) -> None:
    """Two tables (at most ``max_rows`` budgets each, evenly spread, every failing one kept) and the
    promise's line."""
    entries = report["budgets"]
    shown = _rows_to_show(entries, max_rows)
    level = f"{100 * report['level']:g}%"
    by_policy = Table(title=f"policies per budget: held-out quality and cost, paired {level} CI against routing; "
                            "served: chosen on validation")
    by_policy.add_column(f"budget ({cost_unit})", justify="right")
    by_policy.add_column("policy")
    by_policy.add_column("served")
    by_policy.add_column("validation gain over the choice so far", justify="right")
    by_policy.add_column("held-out quality", justify="right")
    by_policy.add_column("held-out cost", justify="right")
    by_policy.add_column("vs routing (held-out)", justify="right")
    for e in shown:
        gains = {c["richer"]: c for c in e["comparisons"]}
        for i, name in enumerate(report["policies"]):
            label = name if name in report["candidates"] else f"{name} (baseline)"
            served = "served" if name == e["chosen"] else ""
            gain = gains.get(name)
            why = "" if gain is None else f"{_diff(gain['gain'])} over {gain['simpler']}"
            stats = e["policies"][name]
            budget = f"{e['budget']:.4g}" if i == 0 else ""
            if stats is None:
                by_policy.add_row(budget, label, served, why, "out of reach", "", "")
                continue
            vs_routing = "" if stats["vs_routing"] is None else _diff(stats["vs_routing"])
            by_policy.add_row(budget, label, served, why, f"{stats['test']['quality']:.3f}",
                              f"{stats['test']['cost']:.4g}", vs_routing)
        by_policy.add_section()
    console.print(by_policy)

    models = list(report["models"])
    vs_models = Table(title=f"served policy vs every single model: held-out quality difference, paired {level} CI "
                            "(under each model: its held-out quality / cost)")
    vs_models.add_column(f"budget ({cost_unit})", justify="right")
    vs_models.add_column("served")
    for m in models:
        stats = report["models"][m]
        vs_models.add_column(f"{m}\n{stats['quality']:.3f} / {stats['cost']:.3g}", justify="right")
    for e in shown:
        chosen = e["policies"].get(e["chosen"]) if e["chosen"] is not None else None
        if chosen is None:
            vs_models.add_row(f"{e['budget']:.4g}", "out of reach", *[""] * len(models))
            continue
        vs_models.add_row(f"{e['budget']:.4g}", e["chosen"], *[_diff(chosen["vs_models"][m]) for m in models])
    console.print(vs_models)
    if len(shown) < len(entries):
        console.print(f"{len(shown)} of {len(entries)} budgets shown; all are in the JSON")
    console.print(f"candidates, simplest first: {' < '.join(report['candidates'])}; a richer one serves only when "
                  f"its validation gain's paired {level} bootstrap CI lies above 0")
    check = report["never_below_routing"]
    console.print(promise_line(report, cost_unit=cost_unit), style="green" if check["pass"] else "bold red",
                  markup=False)


def _rows_to_show(entries: list[dict[str, Any]], max_rows: int) -> list[dict[str, Any]]:
    if len(entries) <= max_rows:
        return entries
    keep = {int(i) for i in np.linspace(0, len(entries) - 1, max_rows).round()}
    keep |= {i for i, e in enumerate(entries) if e["below_routing"]}
    return [entries[i] for i in sorted(keep)]


def _diff(ci: dict[str, float]) -> str:
    return f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
