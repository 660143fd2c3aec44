"""Quality-cost curves of an evaluation, drawn to a PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_quality_cost"]

_STYLE = {
    "linear": ("linear interpolation", "0.6", "--"),
    "routing": ("routing", "tab:blue", "-"),
    "threshold_cascade": ("threshold cascade", "tab:orange", "-"),
    "optimal_cascade": ("optimal cascade", "tab:green", "-"),
    "cascade_routing": ("cascade routing", "tab:red", "-"),
}


def plot_quality_cost(result: dict[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Draw every method's test quality against average cost, with the single models as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, auc = result["points"], result["auc"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, (label, color, style) in _STYLE.items():
        if key not in points:
            continue
        curve = points[key]
        order = sorted(range(len(curve["cost"])), key=lambda i: curve["cost"][i])
        ax.plot(
            [curve["cost"][i] for i in order],
            [curve["quality"][i] for i in order],
            style,
            color=color,
            marker="." if key != "linear" else None,
            label=f"{label} (AUC {auc[key]:.2f})",
        )
    single = points["single_models"]
    ax.scatter(single["cost"], single["quality"], color="black", zorder=3, s=18, label="single models")
    for name, x, y in zip(single["model"], single["cost"], single["quality"], strict=True):
        ax.annotate(name.split("/")[-1], (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"average cost per query ({result['settings'].get('cost_unit', 'cost')}, log scale)")
    ax.set_ylabel("average quality (test split)")
    ax.set_title(title or "quality vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
