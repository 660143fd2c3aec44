"""Benchmark: how far a lambda fitted on a few validation rows overshoots its budget on test, and the AUC.

    .venv/bin/python -m scripts.bench_small_validation --json docs/small_validation.json
    .venv/bin/python -m scripts.bench_small_validation --models 3 --n-validation 20 --seeds 0 --json /tmp/s.json

The RouterBench protocol (``evaluation.protocol``, simulated estimators) with ``--test-size`` set so that
``--n-validation`` rows fit lambda, gamma and the estimators' calibration, for every model set, seed and
variant. A variant is ``NAME:MARGIN_SE:SHRINKAGE``: the budget margin in standard errors of the
validation mean cost (``routing._budget_margin``; 0 is the paper's fit) and the per-model calibration's
shrinkage (``none`` or ``empirical_bayes``, ``evaluation.simulated``). ``n_validation`` 0 stands for the
protocol's default split (test size 0.95).

Per run and method: test mean cost / budget at every budget of the grid the fit was asked to keep (the
lowest budgets, raised to the cheapest model's validation cost by the protocol, are left out: their
overshoot is the protocol's, not the fit's), and the AUC ×100. Summary per (model set, validation rows,
variant, method), over seeds: the largest and mean cost/budget, the share of budgets overshot by more
than 1 %, the mean AUC and its paired difference to the first variant. Runs are cached in
``--cache`` (JSON lines) so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_VARIANTS = "current:0:none,margin:1:none,shrinkage:0:empirical_bayes,margin+shrinkage:1:empirical_bayes"
# A test cost this far above its budget counts as an overshoot (the test mean itself has a little noise).
OVERSHOOT_TOLERANCE = 0.01


def parse_variant(text: str) -> dict[str, Any]:
    """``NAME:MARGIN_SE:SHRINKAGE`` -> its settings."""
    try:
        name, margin, shrinkage = text.split(":")
        return {"name": name, "budget_margin_se": float(margin), "calibration_shrinkage": shrinkage}
    except ValueError:
        raise argparse.ArgumentTypeError(f"a variant is NAME:MARGIN_SE:SHRINKAGE, got {text!r}") from None


def test_size_for(n_rows: int, n_validation: int) -> float:
    """The ``test_size`` that leaves exactly ``n_validation`` rows to validation (scikit-learn rounds the
    test side up), or the paper's 0.95 for ``n_validation`` 0."""
    if n_validation == 0:
        return 0.95
    if not 2 <= n_validation < n_rows:
        raise ValueError(f"n_validation must be in [2, {n_rows}), got {n_validation}")
    return (n_rows - n_validation - 0.5) / n_rows


def run_one(table: Any, models: int, n_validation: int, seed: int, variant: dict[str, Any], noise: str,
            methods: tuple[str, ...], per_segment: int) -> dict[str, Any]:
    """One protocol run: per method, test cost / budget at the budgets the fit had to keep, and AUC."""
    from evaluation.protocol import ProtocolSettings, run_protocol

    settings = ProtocolSettings(
        models=models, noise=noise, seed=seed, test_size=test_size_for(table.n_queries, n_validation),
        per_segment=per_segment, n_bootstrap=0, budget_margin_se=variant["budget_margin_se"],
        calibration_shrinkage=variant["calibration_shrinkage"])
    t0 = time.perf_counter()
    result = run_protocol(table, settings, methods=methods)
    out: dict[str, Any] = {"models": models, "n_validation": int(result["settings"]["n_validation"]), "seed": seed,
                           "variant": variant["name"], "seconds": time.perf_counter() - t0, "methods": {}}
    raised = int(result["settings"]["budgets_raised_to_validation_floor"])
    for method in methods:
        budget = np.asarray(result["points"][method]["budget"])
        cost = np.asarray(result["points"][method]["cost"])
        # The lowest budgets, under what the policy reaches on validation (with its margin), are fitted at
        # the policy's cheapest setting: the fit does not claim to keep them (cascade calibrate refuses
        # such a budget), so they are counted apart. The floor is one cost, so they are the lowest.
        floor = max(raised, int(result["settings"]["budgets_raised_to_policy_floor"][method]))
        out["methods"][method] = {"auc": float(result["auc"][method]),
                                  "cost_over_budget": (cost[floor:] / budget[floor:]).tolist(),
                                  "cost_over_budget_below_floor": (cost[:floor] / budget[:floor]).tolist()}
    return out


def summarise(runs: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    """Per (model set, validation rows, variant, method): overshoot over every seed's budgets, mean AUC and
    the mean paired AUC difference to the first variant (same seed, same split)."""
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {
        (r["models"], r["n_validation"], r["variant"], r["seed"]): r for r in runs}
    rows = []
    settings = sorted({(r["models"], r["n_validation"]) for r in runs})
    methods = sorted({m for r in runs for m in r["methods"]})
    for models, n_val in settings:
        for variant in variants:
            seeds = sorted(s for (m, n, v, s) in by_key if (m, n, v) == (models, n_val, variant))
            if not seeds:
                continue
            for method in methods:
                ratios = np.concatenate([by_key[(models, n_val, variant, s)]["methods"][method]["cost_over_budget"]
                                         for s in seeds])
                auc = [by_key[(models, n_val, variant, s)]["methods"][method]["auc"] for s in seeds]
                base = [by_key.get((models, n_val, variants[0], s)) for s in seeds]
                diff = [a - b["methods"][method]["auc"] for a, b in zip(auc, base, strict=True) if b is not None]
                below = [x for s in seeds for x in
                         by_key[(models, n_val, variant, s)]["methods"][method]["cost_over_budget_below_floor"]]
                rows.append({
                    "budgets_below_policy_floor": len(below),
                    "models": models, "n_validation": n_val, "variant": variant, "method": method, "seeds": seeds,
                    "cost_over_budget_max": float(ratios.max()), "cost_over_budget_mean": float(ratios.mean()),
                    "share_overshot": float(np.mean(ratios > 1.0 + OVERSHOOT_TOLERANCE)),
                    "auc_mean": float(np.mean(auc)), "auc_per_seed": auc,
                    "auc_diff_vs_first": float(np.mean(diff)) if diff else None,
                    "auc_diff_per_seed": diff,
                })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="test cost / budget and AUC ×100, seed means (RouterBench, simulated estimators)")
    for col in ("models", "val rows", "variant", "method", "cost/budget max", "mean", "overshot >1%", "AUC",
                "Δ AUC vs first"):
        table.add_column(col, justify="right" if col not in ("variant", "method") else "left")
    for r in rows:
        diff = r["auc_diff_vs_first"]
        table.add_row(str(r["models"]), str(r["n_validation"]), r["variant"], r["method"],
                      f"{r['cost_over_budget_max']:.3f}", f"{r['cost_over_budget_mean']:.3f}",
                      f"{100 * r['share_overshot']:.0f} %", f"{r['auc_mean']:.2f}",
                      "" if diff is None else f"{diff:+.2f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Data
    parser.add_argument("--data", default="../shared/data/routerbench", help="RouterBench CSV folder")
    parser.add_argument("--models", default="3,5,11", help="model sets, comma-separated")
    parser.add_argument("--noise", default="medium", help="noise level of the simulated estimators")
    # What varies
    parser.add_argument("--n-validation", default="20,48,0",
                        help="validation rows per run, comma-separated (0: the protocol's default split)")
    parser.add_argument("--seeds", default="0,1,2", help="noise seeds, comma-separated")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="NAME:MARGIN_SE:SHRINKAGE, comma-separated; the first is the reference")
    parser.add_argument("--methods", default="routing,cascade_routing", help="methods, comma-separated")
    parser.add_argument("--per-segment", type=int, default=10, help="budgets per hull segment")
    # Output
    parser.add_argument("--json", default=None, help="write settings, runs and summary here")
    parser.add_argument("--cache", default=None, help="JSON-lines cache of finished runs (resumes)")
    parser.add_argument("--cached-only", action="store_true",
                        help="summarise the runs in --cache that match the arguments; run nothing")
    args = parser.parse_args(argv)

    from evaluation.routerbench import load_routerbench

    variants = [parse_variant(v) for v in args.variants.split(",")]
    methods = tuple(args.methods.split(","))
    table = load_routerbench(args.data)
    cache = Path(args.cache) if args.cache else None
    runs: list[dict[str, Any]] = []
    done: set[tuple[Any, ...]] = set()
    if cache is not None and cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            runs.append(r)
            done.add((r["models"], r.get("requested_n_validation", r["n_validation"]), r["seed"], r["variant"]))
    for models in (int(m) for m in args.models.split(",")):
        for n_val in (int(n) for n in args.n_validation.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                for variant in variants:
                    if (models, n_val, seed, variant["name"]) in done or args.cached_only:
                        continue
                    r = run_one(table, models, n_val, seed, variant, args.noise, methods, args.per_segment)
                    r["requested_n_validation"] = n_val
                    runs.append(r)
                    print(f"{models} models, {r['n_validation']} validation rows, seed {seed}, {variant['name']}: "
                          + ", ".join(f"{m} AUC {v['auc']:.2f} max cost/budget {max(v['cost_over_budget']):.3f}"
                                      for m, v in r["methods"].items()) + f" ({r['seconds']:.0f} s)", flush=True)
                    if cache is not None:
                        with cache.open("a") as fh:
                            fh.write(json.dumps(r) + "\n")
    wanted = {(int(m), int(n), int(s), v["name"]) for m in args.models.split(",")
              for n in args.n_validation.split(",") for s in args.seeds.split(",") for v in variants}
    runs = [r for r in runs if (r["models"], r["requested_n_validation"], r["seed"], r["variant"]) in wanted]
    rows = summarise(runs, [v["name"] for v in variants])
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "settings": {**vars(args), "variants": variants, "overshoot_tolerance": OVERSHOOT_TOLERANCE,
                         "n_queries": table.n_queries},
            "summary": rows, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
