"""Run the RouterBench protocol for every model set, noise level, seed and test size; summarise over seeds.

    .venv/bin/python -m scripts.eval_routerbench_all --out runs/routerbench
    .venv/bin/python -m scripts.eval_routerbench_all --out runs/rb_sweep --seeds 0-4 --test-sizes 0.95,0.99
    .venv/bin/python -m scripts.eval_routerbench_all --out runs/rb_trained --estimators trained --seeds 0-4
    .venv/bin/python -m scripts.eval_routerbench_all --out runs/rb_pooled --seeds 0-4 --test-sizes 0.99,0.95 \
        --calibration-shrinkage pooled

Writes, per run, ``<out>/test<size>/<models>_<noise>_s<seed>.json`` and ``.png`` (the protocol's result and
curves; ``noise`` is ``trained`` with trained estimators). A run whose JSON exists is read back, not rerun,
so an interrupted sweep resumes. Then ``<out>/summary.json`` and the Markdown ``<out>/summary.md``: per
(test size, setting), the seed-mean AUC of every method; cascade routing minus routing with the paired
95% CI of its seed mean (the runs share their test rows and bootstrap resamples, so resample b's
difference is averaged over seeds); whether cascade routing is first, or tied with the best other method
(that method's seed-mean paired CI covers 0); the fitted uncertainty scales; and every seed's own
CR - routing with its CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

_OTHERS = ("routing", "threshold_cascade", "optimal_cascade")


def at_least_ties(result: dict[str, Any]) -> bool:
    """Cascade routing at least ties the best other method: that method is not significantly above
    it, i.e. the CI of its paired difference (other - cascade routing) does not lie above 0."""
    diffs = result["ci"]["diff_vs_cascade_routing"]
    best_other = max(diffs, key=lambda m: result["auc"][m])
    return bool(diffs[best_other]["low"] <= 0.0)


def seed_mean_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed means of one setting's runs (same test rows and bootstrap resamples, different seeds).

    The paired CI of a seed-mean difference takes, per bootstrap resample, the mean over seeds of that
    resample's difference, then the 2.5 and 97.5 percentiles.
    """
    methods = list(results[0]["auc"])
    auc = {m: float(np.mean([r["auc"][m] for r in results])) for m in methods}
    samples = [r["ci"].get("samples") for r in results]
    diff_ci: dict[str, dict[str, float]] = {}
    if all(s is not None for s in samples):
        base = np.mean([s["cascade_routing"] for s in samples], axis=0)
        for m in _OTHERS:
            if m in samples[0]:
                d = np.mean([s[m] for s in samples], axis=0) - base
                diff_ci[m] = {"low": float(np.percentile(d, 2.5)), "high": float(np.percentile(d, 97.5))}
    others = [m for m in _OTHERS if m in auc]
    best_other = max(others, key=lambda m: auc[m])
    first = all(auc["cascade_routing"] >= auc[m] for m in others)
    tied = best_other in diff_ci and diff_ci[best_other]["low"] <= 0.0 <= diff_ci[best_other]["high"]
    per_seed = []
    for r in results:
        d = r["ci"]["diff_vs_cascade_routing"]["routing"]
        per_seed.append({"seed": r["settings"]["seed"],
                         "cr_minus_routing": r["auc"]["cascade_routing"] - r["auc"]["routing"],
                         "low": -d["high"], "high": -d["low"], "uncertainty_scale": r["settings"]["uncertainty_scale"]})
    return {
        "seeds": [r["settings"]["seed"] for r in results],
        "auc": auc,
        "diff_vs_cascade_routing": diff_ci,
        "cr_minus_routing": auc["cascade_routing"] - auc["routing"],
        "cr_minus_routing_ci": ({"low": -diff_ci["routing"]["high"], "high": -diff_ci["routing"]["low"]}
                                if "routing" in diff_ci else None),
        "best_other": best_other,
        "cascade_routing_first": first,
        "cascade_routing_first_or_tied": first or tied,
        "uncertainty_scales": [r["settings"]["uncertainty_scale"] for r in results],
        "per_seed": per_seed,
        "total_s": float(sum(r["settings"]["total_s"] for r in results)),
    }


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    """Two tables per test size: seed means with the verdicts, then CR - routing seed by seed."""
    lines: list[str] = []
    for size, settings in summary.items():
        n_seeds = max(len(s["seeds"]) for s in settings.values())
        lines += [f"### test size {size}", "",
                  "| setting | seeds | linear | routing | threshold cascade | optimal cascade | cascade routing "
                  "| CR − routing [95% CI] | CR first / tied | uncertainty scales | time |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, s in settings.items():
            auc = s["auc"]
            ci = s["cr_minus_routing_ci"]
            diff = f"{s['cr_minus_routing']:+.2f}" + (f" [{ci['low']:+.2f}, {ci['high']:+.2f}]" if ci else "")
            verdict = "first" if s["cascade_routing_first"] else (
                f"tied ({s['best_other']})" if s["cascade_routing_first_or_tied"] else f"below {s['best_other']}")
            scales = " ".join(f"{x:g}" for x in s["uncertainty_scales"])
            cells = [f"{auc[m]:.2f}" if m in auc else "" for m in ("linear", *_OTHERS)]
            cr = f"**{auc['cascade_routing']:.2f}**"
            lines.append(f"| {_label(name)} | {len(s['seeds'])} | " + " | ".join(cells)
                         + f" | {cr} | {diff} | {verdict} | {scales} | {s['total_s']:.0f} s |")
        lines += ["", f"CR − routing per seed, test size {size} (paired 95% CI):", "",
                  "| setting | " + " | ".join(f"seed {i}" for i in range(n_seeds)) + " |",
                  "|---" * (n_seeds + 1) + "|"]
        for name, s in settings.items():
            cells = [f"{p['cr_minus_routing']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]" for p in s["per_seed"]]
            lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _label(name: str) -> str:
    """'11_medium' -> '11 models, medium'."""
    models, noise = name.split("_", 1)
    return f"{models} models, {noise}"


def _seeds(text: str) -> list[int]:
    """'0-4' or '0,2,3'."""
    if "-" in text:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="RouterBench data (default: ../shared/...)")
    parser.add_argument("--out", type=Path, default=Path("runs/routerbench"), help="output folder")
    parser.add_argument("--seeds", default="0", help="noise (or estimator) seeds: '0-4' or '0,1' (default 0)")
    parser.add_argument("--test-sizes", default="0.95", help="comma-separated test shares (default 0.95)")
    parser.add_argument("--models", default="3,5,11",
                        help="model sets: the paper's 3, 5, 11, or 'all' for every model in --data (default 3,5,11)")
    parser.add_argument("--noise", default="low,medium,high", help="noise levels (default low,medium,high)")
    parser.add_argument("--estimators", choices=["simulated", "trained"], default="simulated")
    parser.add_argument("--jobs", type=int, default=2, help="protocol worker processes (default 2)")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples (default 500)")
    parser.add_argument("--per-segment", type=int, default=10, help="budgets per hull segment (default 10)")
    parser.add_argument("--calibration-shrinkage", default=None,
                        choices=["measurement", "empirical_bayes", "none", "pooled"],
                        help="simulated estimators' per-model calibration (default: the protocol's)")
    args = parser.parse_args(argv)

    from cascade_serve.main import _DEFAULT_ROUTERBENCH
    from cascade_serve.report import write_results
    from evaluation.plots import plot_quality_cost
    from evaluation.protocol import ProtocolSettings, run_protocol
    from evaluation.routerbench import load_routerbench, split_by_file

    data = args.data if args.data is not None else _DEFAULT_ROUTERBENCH
    trained = args.estimators == "trained"
    table = load_routerbench(data)
    estimator_table = None
    if trained:
        estimator_table, table = split_by_file(table, data)
    noises = ["trained"] if trained else args.noise.split(",")
    shrinkage = {} if args.calibration_shrinkage is None else {"calibration_shrinkage": args.calibration_shrinkage}
    summary: dict[str, dict[str, Any]] = {}
    for size in args.test_sizes.split(","):
        folder = args.out / f"test{size}"
        for models in args.models.split(","):
            for noise in noises:
                name = f"{models}_{noise}"
                results = []
                for seed in _seeds(args.seeds):
                    path = folder / f"{name}_s{seed}.json"
                    if path.exists():
                        results.append(json.loads(path.read_text()))
                        continue
                    settings = ProtocolSettings(models=tuple(table.models) if models == "all" else int(models),
                                                estimators=args.estimators,
                                                noise=None if trained else noise, seed=seed, test_size=float(size),
                                                n_bootstrap=args.bootstrap, per_segment=args.per_segment,
                                                **shrinkage)
                    started = time.perf_counter()
                    result = run_protocol(table, settings, n_jobs=args.jobs, estimator_table=estimator_table,
                                          bootstrap_samples=True)
                    title = f"{models} models, {noise}{'' if trained else ' noise'}, seed {seed}, test size {size}"
                    write_results(result, json_path=path, plot_path=path.with_suffix(".png"),
                                  plot=partial(plot_quality_cost, title=title))
                    auc = result["auc"]
                    print(f"test {size} {name} seed {seed}: CR {auc['cascade_routing']:.2f} routing "
                          f"{auc['routing']:.2f} scale {result['settings']['uncertainty_scale']:g} "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)
                    results.append(result)
                summary.setdefault(size, {})[name] = seed_mean_summary(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary)
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
