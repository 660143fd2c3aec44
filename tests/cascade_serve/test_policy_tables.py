"""The served policy's tables and the promise's line on the terminal (``cascade calibrate`` and ``cascade eval``)."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from cascade_serve.policy_tables import print_policy_choice, promise_line
from evaluation.policy_report import Outcomes, policy_report


def _report(n_budgets: int, *, test_loses: bool = False) -> dict:
    """Cascade routing fixes a third of routing's misses on validation at every budget; on test it does
    too, or (``test_loses``) it loses half of routing's right answers."""
    rng = np.random.default_rng(0)
    val_routing, test_routing = (rng.random(300) < 0.5).astype(float), (rng.random(300) < 0.5).astype(float)
    val_better = np.where(rng.random(300) < 0.35, 1.0, val_routing)
    test_cr = (np.where(rng.random(300) < 0.5, 0.0, test_routing) if test_loses
               else np.where(rng.random(300) < 0.35, 1.0, test_routing))

    def rows(q: np.ndarray) -> Outcomes:
        return Outcomes(quality=np.tile(q, (n_budgets, 1)), cost=np.full((n_budgets, q.size), 0.02))

    validation = {"routing": rows(val_routing), "cascade_routing": rows(val_better)}
    test = {"routing": rows(test_routing), "cascade_routing": rows(test_cr)}
    models = np.stack([test_routing, np.ones(300)], axis=1)
    return policy_report(np.linspace(0.01, 0.05, n_budgets), validation, test, models, np.full_like(models, 0.02),
                         ("small", "large"), ("routing", "cascade_routing"))


def _printed(report: dict) -> str:
    out = io.StringIO()
    print_policy_choice(report, Console(file=out, force_terminal=False, width=250), cost_unit="GPU-s/query")
    return out.getvalue()


def test_the_tables_show_the_choice_its_reason_and_the_promise_passing() -> None:
    text = _printed(_report(3))
    assert "policies per budget: held-out quality and cost, paired 95% CI against routing" in text
    assert "served policy vs every single model" in text
    assert "served" in text and "over routing" in text  # the validation gain that chose cascade routing
    assert "candidates, simplest first: routing < cascade_routing" in text
    assert "on held-out prompts, never below routing (paired CI): PASS at all 3 budgets" in text


def test_the_promise_fails_with_its_budgets_and_long_grids_are_thinned() -> None:
    report = _report(20, test_loses=True)
    assert promise_line(report, cost_unit="GPU-s/query").startswith(
        "on held-out prompts, never below routing (paired CI): FAIL at 20 budget(s): 0.01, 0.01211")
    short = _report(20)
    text = _printed(short)
    assert "12 of 20 budgets shown; all are in the JSON" in text
