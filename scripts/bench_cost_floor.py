"""Benchmark: how repeatable one request's engine time is on a running fleet, the floor of any cost model.

    .venv/bin/cascade up models.toy.yaml
    .venv/bin/python -m scripts.bench_cost_floor --json runs/cost_floor.json --plot runs/cost_floor.png

The cost model predicts each request's GPU-seconds (the engine's own prefill + decode time, vLLM's
per-request metrics, queueing excluded) from its token counts. Requests with the *same* prompt and the
*same* number of answer tokens do the same work, so how far their measured times spread is error that no
cost model can remove. This script sends identical requests one at a time (concurrency 1, the quietest
case) through the fleet's HTTP endpoint, to every model in turn (round-robin, so every model sees the
same background), ``--repeats`` times per prompt, at each ``--max-tokens`` (``ignore_eos``: exactly that
many answer tokens), after ``--warmup`` unrecorded requests per model.

**Floor**: for each request, the absolute percentage error of predicting its time by the median of the
*other* repeats of the same (model, prompt, answer length), averaged: the per-request MAPE of an
oracle that knows every request's exact work. Compare it with the cost model's held-out MAPE in
``cascade calibrate``'s report: a cost model close to the floor has nothing left to learn.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

PROMPTS = ["What is 123 + 456?", "What is 7 + 8?", "What is 45 + 67?"]


def floor_stats(times_s: list[float]) -> dict[str, float]:
    """Spread of repeated measurements of one identical request: the oracle's leave-one-out MAPE (%),
    the coefficient of variation and the p10/p50/p90 in ms."""
    t = np.asarray(times_s, dtype=float)
    if t.size < 3 or np.any(t <= 0):
        raise ValueError("need at least 3 positive times to measure a spread")
    others = [np.median(np.delete(t, i)) for i in range(t.size)]
    ape = np.abs(t - np.asarray(others)) / t
    return {
        "n": int(t.size),
        "floor_mape_pct": float(100 * ape.mean()),
        "cv": float(t.std() / t.mean()),
        "p10_ms": float(np.percentile(t, 10) * 1e3),
        "p50_ms": float(np.median(t) * 1e3),
        "p90_ms": float(np.percentile(t, 90) * 1e3),
    }


def engine_s(response: dict[str, Any]) -> float:
    """The engine's own time for one direct response (prefill + decode, queueing excluded): what the cost
    model predicts."""
    metrics = response.get("metrics") or {}
    if metrics.get("time_to_first_token_ms") is None:
        raise ValueError("the response carries no engine metrics (vLLM's per-request metrics are off)")
    return (float(metrics["time_to_first_token_ms"]) + float(metrics.get("generation_time_ms") or 0.0)) / 1e3


def measure(url: str, models: list[str], *, max_tokens: list[int], repeats: int, warmup: int,
            api_key: str | None = None, progress: Any = None) -> dict[str, Any]:
    """Identical requests at concurrency 1 through ``url``; the floor per model and answer length."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    times: dict[tuple[str, int, str], list[float]] = {}
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:

        def send(model: str, prompt: str, n_tokens: int) -> float:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": n_tokens,
                    "temperature": 0, "ignore_eos": True}
            resp = client.post("/v1/chat/completions", json=body)
            if resp.status_code != 200:
                raise RuntimeError(f"{model}: HTTP {resp.status_code}: {resp.text[:300]}")
            return engine_s(resp.json())

        for model in models:
            for _ in range(warmup):
                send(model, PROMPTS[0], max_tokens[0])
        for _ in range(repeats):
            for n_tokens in max_tokens:
                for prompt in PROMPTS:
                    for model in models:
                        times.setdefault((model, n_tokens, prompt), []).append(send(model, prompt, n_tokens))
                        if progress is not None:
                            progress()
    out: dict[str, Any] = {}
    for model in models:
        by_tokens: dict[str, Any] = {}
        for n_tokens in max_tokens:
            per_prompt = {p: floor_stats(times[(model, n_tokens, p)]) for p in PROMPTS}
            by_tokens[str(n_tokens)] = {
                "floor_mape_pct": float(np.mean([s["floor_mape_pct"] for s in per_prompt.values()])),
                "p50_ms": float(np.mean([s["p50_ms"] for s in per_prompt.values()])),
                "prompts": per_prompt,
            }
        out[model] = {"by_max_tokens": by_tokens,
                      "floor_mape_pct": float(np.mean([b["floor_mape_pct"] for b in by_tokens.values()]))}
    return {"models": out, "settings": {"url": url, "max_tokens": max_tokens, "repeats": repeats,
                                        "warmup": warmup, "prompts": PROMPTS, "concurrency": 1},
            "wall_s": time.perf_counter() - started}


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    lengths = result["settings"]["max_tokens"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(models) * len(lengths), 3.6))
    labels, values = [], []
    for model in models:
        for n in lengths:
            labels.append(f"{model}\n{n} tok")
            values.append(result["models"][model]["by_max_tokens"][str(n)]["floor_mape_pct"])
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.axhline(10, color="#c44e52", ls="--", lw=1, label="issue target: cost model MAPE 10 %")
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("floor: MAPE of the oracle (%)")
    ax.set_title("Identical requests, concurrency 1: the spread no cost model can remove", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from cascade_serve.progress import LoggedProgress
    from cascade_serve.report import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the fleet's endpoint (default :8000)")
    parser.add_argument("--models", default=None, help="comma-separated models (default: every model served)")
    parser.add_argument("--max-tokens", type=lambda s: [int(x) for x in s.split(",")], default=[4, 24],
                        help="answer lengths in tokens (default 4,24)")
    parser.add_argument("--repeats", type=int, default=30, help="repeats per (model, prompt, length) (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="unrecorded requests per model first (default 3)")
    parser.add_argument("--api-key", default=None, help="Bearer key, if the fleet enforces one")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--plot", type=Path, default=None, help="draw the floor per model to this PNG")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats: at least 3 (a spread needs them)")
    import httpx

    console = Console()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        listed = httpx.get(f"{args.url}/v1/models", headers=headers, timeout=30).json()["data"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        console.print(f"[red]cannot list the fleet's models at {args.url}: {exc}[/red] (is it up? `cascade up FILE`)")
        return 2
    served = [m["id"] for m in listed if m["id"] != "cascade"]
    models = served if args.models is None else args.models.split(",")
    unknown = sorted(set(models) - set(served))
    if unknown:
        console.print(f"[red]not served: {', '.join(unknown)}[/red] (served: {', '.join(served)})")
        return 2
    total = args.repeats * len(args.max_tokens) * len(PROMPTS) * len(models)
    with LoggedProgress(console=console) as bar:
        task = bar.add_task("identical requests", total=total)
        result = measure(args.url, models, max_tokens=args.max_tokens, repeats=args.repeats, warmup=args.warmup,
                         api_key=args.api_key, progress=lambda: bar.advance(task))
    table = Table(title="engine time of identical requests, concurrency 1")
    for col in ("model", "answer tokens", "p50 ms", "floor MAPE %"):
        table.add_column(col)
    for model, r in result["models"].items():
        for n, b in r["by_max_tokens"].items():
            table.add_row(model, n, f"{b['p50_ms']:.1f}", f"{b['floor_mape_pct']:.1f}")
    console.print(table)
    console.print(f"{total} requests in {result['wall_s']:.0f} s")
    write_results(result, json_path=args.json, plot_path=args.plot, plot=_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
