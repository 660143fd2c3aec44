"""``cascade eval routerbench``: the paper's protocol on a query x model table, with progress, a
table of AUCs, and optional JSON and plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["eval_routerbench"]


def eval_routerbench(args: argparse.Namespace, *, default_data: Path) -> int:
    """Data, settings, the protocol under a progress bar, the AUC table, then the files asked for."""
    trained = args.estimators == "trained"
    table, estimator_table = _load(args, default_data, trained=trained)
    settings = _settings(args, table)
    result = _run(table, settings, estimator_table, jobs=args.jobs, quiet=args.quiet)
    title = _print_result(result, settings, data_name=_data_name(args))
    _write(result, title, json_path=args.json, plot_path=args.plot)
    return 0


def _data_name(args: argparse.Namespace) -> str:
    """What the tables are titled by: RouterBench for the default data, else the file or folder named."""
    return "RouterBench" if args.data is None else args.data.name


def _settings(args: argparse.Namespace, table: Any) -> Any:
    from evaluation.protocol import ProtocolSettings
    from evaluation.simulated import NOISE_LEVELS

    models: int | tuple[str, ...]
    if args.models is None:
        # The paper's 11 on its own data; every model of a file the user names (its sets need not exist there).
        models = 11 if args.data is None else tuple(table.models)
    elif args.models.isdigit():
        models = int(args.models)
    else:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    trained = args.estimators == "trained"
    if trained and args.noise is not None:
        raise ValueError("--noise applies only to --estimators simulated (trained estimators have no noise level)")
    noise = None if trained else (args.noise or "low")
    if not trained and noise not in NOISE_LEVELS:
        raise ValueError(f"--noise must be one of {sorted(NOISE_LEVELS)}, got {noise!r}")
    # Unset (a Namespace built by hand, or the flag left out): the protocol's own defaults.
    optional = {key: getattr(args, flag) for key, flag in (("budget_margin_se", "budget_margin"),
                                                          ("calibration_shrinkage", "calibration_shrinkage"))
                if getattr(args, flag, None) is not None}
    return ProtocolSettings(models=models, estimators=args.estimators, noise=noise, seed=args.seed,
                            test_size=args.test_size, max_depth=args.max_depth, strategy=args.strategy,
                            per_segment=args.per_segment, n_bootstrap=args.bootstrap,
                            uncertainty_scale=args.uncertainty_scale, **optional)


def _load(args: argparse.Namespace, default_data: Path, *, trained: bool) -> tuple[Any, Any]:
    """The table the protocol splits, and (trained estimators) the one they learn from."""
    from evaluation.routerbench import load_routerbench, split_by_file

    data = args.data if args.data is not None else default_data
    if args.data is None and not data.exists():
        raise ValueError(f"no RouterBench data at {data}: pass --data PATH")
    table = load_routerbench(data)
    if not trained:
        return table, None
    # Estimators learn from the train files; the paper's validation/test split is of the test files.
    estimator_table, table = split_by_file(table, data)
    return table, estimator_table


def _run(table: Any, settings: Any, estimator_table: Any, *, jobs: int, quiet: bool) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from cascade_serve.progress import LoggedProgress
    from evaluation.protocol import METHODS, run_protocol

    with LoggedProgress(
        TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=quiet,
    ) as bar:
        tasks: dict[str, Any] = {}
        if estimator_table is not None:
            tasks["train estimators"] = bar.add_task("train estimators", total=None)
        for stage in ("fit", "test"):
            for m in METHODS:
                tasks[f"{stage} {m}"] = bar.add_task(f"{stage} {m}", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(tasks[stage], completed=done, total=total)

        result: dict[str, Any] = run_protocol(table, settings, progress=progress, n_jobs=jobs,
                                              estimator_table=estimator_table)
    return result


def _print_result(result: dict[str, Any], settings: Any, *, data_name: str) -> str:
    """The AUC table (cascade routing's CI absolute, the others' as differences to it), then the policy served
    per budget with its evidence; returns the AUC table's title."""
    from rich.console import Console
    from rich.table import Table

    from cascade_serve.policy_tables import print_policy_choice
    from evaluation.protocol import METHODS

    trained = settings.estimators == "trained"
    how = "trained estimators" if trained else f"{settings.noise} noise"
    title = f"{data_name}, {len(settings.model_names)} models, {how}, seed {settings.seed}: AUC x100"
    grid = Table(title=title)
    grid.add_column("method")
    grid.add_column("AUC", justify="right")
    grid.add_column("minus CR", justify="right")
    grid.add_column("95% CI", justify="right")
    ci, auc = result["ci"], result["auc"]
    for method in ("linear", *METHODS):
        diff = interval = ""
        if method == "cascade_routing" and method in ci:
            interval = f"[{ci[method]['low']:.2f}, {ci[method]['high']:.2f}]"
        elif method in ci.get("diff_vs_cascade_routing", {}):
            c = ci["diff_vs_cascade_routing"][method]
            interval = f"[{c['low']:+.2f}, {c['high']:+.2f}]"
        if method != "cascade_routing" and "cascade_routing" in auc:
            # The point difference, as the AUC column: the bootstrap mean would read as a second value.
            diff = f"{auc[method] - auc['cascade_routing']:+.2f}"
        grid.add_row(method, f"{auc[method]:.2f}", diff, interval)
    s = result["settings"]
    fit = s.get("uncertainty_scale_fit")
    how_scaled = f"fitted on the {fit['n_rows']} validation rows" if fit is not None else "fixed by --uncertainty-scale"
    out = Console()
    out.print(grid)
    out.print("95% CI: paired bootstrap; CR: its AUC; others: their AUC minus CR's")
    out.print(f"uncertainty scale {s['uncertainty_scale']:g} ({how_scaled}); costs in {s['cost_unit']}")
    trained_rows = f"{s['n_estimator_training']} estimator-training / " if trained else ""
    out.print(f"{trained_rows}{s['n_validation']} validation / {s['n_test']} test queries, {s['n_budgets']} budgets, "
              f"{s['total_s']:.1f} s")
    if "policy_choice" in result:
        print_policy_choice(result["policy_choice"], out, cost_unit=s["cost_unit"])
    return title


def _write(result: dict[str, Any], title: str, *, json_path: Path | None, plot_path: Path | None) -> None:
    from rich.console import Console

    from evaluation.plots import plot_quality_cost

    out = Console()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
        out.print(f"wrote {json_path}")
    if plot_path is not None:
        out.print(f"wrote {plot_quality_cost(result, plot_path, title=title)}")
