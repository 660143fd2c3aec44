"""Benchmark: cascade-routing decision latency and lambda-fitting time.

    .venv/bin/python -m scripts.bench_routing --json runs/bench_routing.json

For K = 3, 5, 11, 20 models it builds a RouterBench-like table (per-query difficulty, skill rising
with cost, costs from 1e-4 to 5e-3 per query), the paper's simulated estimators at medium noise
(independent Gaussian uncertainty, ex-ante sd from calibration, post-hoc 1e-3), fits
``CascadeRouter(max_depth=5)`` to budgets at 25/50/75% of the log-cost range (fit time per budget),
then replays the decision states its rollouts visit on held-out queries and times ``decide`` (the
live path: branch and bound, no memo) on each. Realistic means these states and lambdas, not
hand-picked ones. Prints a table; writes JSON ``{"decision_us": {K: {"median", "p99"}}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def _table(n_queries: int, n_models: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    difficulty = rng.normal(size=n_queries)
    skill = np.linspace(-0.6, 1.6, n_models) + rng.normal(0, 0.15, n_models)
    p_correct = 1.0 / (1.0 + np.exp(-1.4 * (skill[None, :] - difficulty[:, None])))
    quality = (rng.random((n_queries, n_models)) < p_correct).astype(np.float64)
    per_model = np.exp(np.linspace(np.log(1e-4), np.log(5e-3), n_models))
    cost = per_model[None, :] * rng.lognormal(0.0, 0.3, (n_queries, 1))
    return quality, cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Workload
    parser.add_argument("--models", default="3,5,11,20", help="comma-separated K values (default 3,5,11,20)")
    parser.add_argument("--queries", type=int, default=2000, help="queries per table (default 2000)")
    parser.add_argument("--states", type=int, default=400, help="decision states timed per K (default 400)")
    parser.add_argument("--max-depth", type=int, default=5, help="cascade routing depth (default 5)")
    parser.add_argument("--compare-max-k", type=int, default=11,
                        help="also time full enumeration (no pruning) up to this K (default 11)")
    parser.add_argument("--seed", type=int, default=0)
    # Output
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from cascade_serve.progress import LoggedProgress
    from evaluation.simulated import draw_noise, simulated_estimates
    from routing import CascadeRouter, Estimates, rollout

    ks = [int(k) for k in args.models.split(",")]
    rng = np.random.default_rng(args.seed)
    decision_us: dict[str, dict[str, float]] = {}
    decision_by_step: dict[str, dict[str, float]] = {}
    fit_s: dict[str, float] = {}
    with LoggedProgress(console=Console(stderr=True)) as bar:
        task = bar.add_task("benchmark", total=len(ks) * 4)
        for k in ks:
            quality, cost = _table(args.queries, k, rng)
            n_val = args.queries // 20  # the paper's 5% validation split
            signals = draw_noise(quality, cost, "medium", seed=args.seed)
            est = simulated_estimates(signals, quality, cost, fit_rows=np.arange(n_val))
            val, test = np.arange(n_val), np.arange(n_val, args.queries)
            est_val, est_test = est.subset(val), est.subset(test)
            model_cost = cost[test].mean(axis=0)
            lo, hi = np.log(model_cost.min()), np.log(model_cost.max())
            policies, fit_times = [], []
            for frac in (0.25, 0.5, 0.75):
                budget = float(np.exp(lo + frac * (hi - lo)))
                policy = CascadeRouter(max_expected_cost=budget, max_depth=args.max_depth, seed=args.seed)
                t0 = time.perf_counter()
                policy.fit(est_val, quality[val], cost[val])
                fit_times.append(time.perf_counter() - t0)
                policies.append(policy)
                bar.advance(task)
            fit_s[str(k)] = float(np.median(fit_times))

            # Replay: walk held-out queries with each policy, timing every decision on the way. For
            # K <= 11 the same state is also decided by full enumeration (prune=False), side by side.
            compare = k <= args.compare_max_k
            unpruned = [
                CascadeRouter.from_lambdas(p.lambdas_, gamma=p.gamma_, max_depth=args.max_depth, prune=False)
                for p in policies
            ]
            times: list[float] = []
            times_full: list[float] = []
            steps: list[int] = []
            picks = rng.choice(test.shape[0], size=min(args.states, test.shape[0]), replace=False)
            for j, row in enumerate(picks):
                policy = policies[j % len(policies)]
                answered = np.zeros(k, dtype=bool)
                decide_rng = np.random.default_rng(j)
                while True:
                    e = est_test.estimate(np.array([row]), answered[None, :])
                    one = Estimates(q_mean=e.q_mean, cost=e.cost, q_var=e.q_var)
                    t0 = time.perf_counter()
                    decision = policy.decide(one, answered, rng=decide_rng)
                    times.append(time.perf_counter() - t0)
                    if compare:
                        t0 = time.perf_counter()
                        full = unpruned[j % len(policies)].decide(one, answered, rng=decide_rng)
                        times_full.append(time.perf_counter() - t0)
                        if full != decision:
                            raise AssertionError(f"pruned and full search disagree at K={k}: {decision} vs {full}")
                    steps.append(int(answered.sum()))
                    if decision.run_next is None:
                        break
                    answered[decision.run_next] = True
            us = np.array(times) * 1e6
            decision_us[str(k)] = {
                "median": float(np.median(us)),
                "p99": float(np.percentile(us, 99)),
                "mean": float(us.mean()),
                "n": int(us.shape[0]),
            }
            if compare:
                full_us = np.array(times_full) * 1e6
                decision_us[str(k)]["unpruned_median"] = float(np.median(full_us))
                decision_us[str(k)]["prune_speedup_median"] = float(np.median(full_us) / np.median(us))
            step_arr = np.array(steps)
            decision_by_step[str(k)] = {
                str(s): float(np.median(us[step_arr == s])) for s in sorted(set(steps))
            }
            # Sanity: the policies really work on held-out data (cost within reach of the budget).
            check = rollout(policies[1], est_test, quality[test], cost[test], rng=np.random.default_rng(0))
            fit_budget = policies[1].max_expected_cost
            assert fit_budget is not None  # fitted at a budget
            decision_us[str(k)]["test_cost_over_budget"] = check.mean_cost / fit_budget
            bar.advance(task)

    table = Table(title="cascade routing: decision latency (live path) and fit time")
    for col in ("K", "median us", "p99 us", "decisions", "median us by step", "unpruned median us", "fit s / budget"):
        table.add_column(col, justify="right")
    for k in ks:
        row = decision_us[str(k)]
        by_step = " ".join(f"{s}:{v:.0f}" for s, v in decision_by_step[str(k)].items())
        unpruned_cell = "-"
        if "unpruned_median" in row:
            unpruned_cell = f"{row['unpruned_median']:.0f} ({row['prune_speedup_median']:.1f}x)"
        table.add_row(
            str(k), f"{row['median']:.0f}", f"{row['p99']:.0f}", str(row["n"]), by_step, unpruned_cell,
            f"{fit_s[str(k)]:.2f}",
        )
    Console().print(table)
    result: dict[str, Any] = {
        "decision_us": decision_us,
        "decision_us_median_by_step": decision_by_step,
        "fit_s_per_budget": fit_s,
        "settings": {**vars(args), "json": str(args.json), "noise": "medium", "budgets": "25/50/75% of log cost"},
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
