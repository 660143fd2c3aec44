"""Run ``cascade eval routerbench`` for every model set and noise level; write a summary table.

    .venv/bin/python -m scripts.eval_routerbench_all --out runs/routerbench

Writes ``<out>/<models>_<noise>.json`` and ``.png`` per setting, ``<out>/summary.json`` and a
Markdown table ``<out>/summary.md`` (AUC x100; cascade routing with its 95% CI, the others with their
paired difference to it), and checks the paper's ordering: cascade routing highest with 11 models,
and within the CI of the best other method (or above it) with 3 and 5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def at_least_ties(result: dict[str, Any]) -> bool:
    """Cascade routing at least ties the best other method: that method is not significantly above
    it, i.e. the CI of its paired difference (other - cascade routing) does not lie above 0."""
    diffs = result["ci"]["diff_vs_cascade_routing"]
    best_other = max(diffs, key=lambda m: result["auc"][m])
    return bool(diffs[best_other]["low"] <= 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="RouterBench data (default: ../shared/...)")
    parser.add_argument("--out", type=Path, default=Path("runs/routerbench"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--models", default="3,5,11", help="model sets (default 3,5,11)")
    parser.add_argument("--noise", default="low,medium,high", help="noise levels (default low,medium,high)")
    args = parser.parse_args(argv)

    from cascade_serve.main import main as cascade
    from routing import CONSTANT_LAMBDA_POLICIES

    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for models in args.models.split(","):
        for noise in args.noise.split(","):
            name = f"{models}_{noise}"
            cli = ["eval", "routerbench", "--models", models, "--noise", noise, "--seed", str(args.seed),
                   "--json", str(args.out / f"{name}.json"), "--plot", str(args.out / f"{name}.png")]
            if args.data is not None:
                cli += ["--data", str(args.data)]
            if cascade(cli) != 0:
                return 2
            result = json.loads((args.out / f"{name}.json").read_text())
            diffs = result["ci"]["diff_vs_cascade_routing"]
            summary[name] = {
                "auc": result["auc"],
                "ci": result["ci"],
                "total_s": result["settings"]["total_s"],
                "best_other": max(diffs, key=lambda m: result["auc"][m]),
                "cascade_routing_at_least_ties": at_least_ties(result),
                "cascade_routing_highest": all(result["auc"]["cascade_routing"] >= result["auc"][m] for m in diffs),
            }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    methods = ["linear", *CONSTANT_LAMBDA_POLICIES]
    lines = ["| setting | " + " | ".join(methods) + " | time |", "|---" * (len(methods) + 2) + "|"]
    for name, s in summary.items():
        cells = []
        for m in methods:
            if m == "cascade_routing":
                ci = s["ci"][m]
                cells.append(f"**{s['auc'][m]:.2f}** [{ci['low']:.2f}, {ci['high']:.2f}]")
            elif m in s["ci"]["diff_vs_cascade_routing"]:
                d = s["ci"]["diff_vs_cascade_routing"][m]
                cells.append(f"{s['auc'][m]:.2f} ({d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}])")
            else:
                cells.append(f"{s['auc'][m]:.2f}")
        lines.append(f"| {name.replace('_', ' models, ')} noise | " + " | ".join(cells) + f" | {s['total_s']:.0f} s |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
