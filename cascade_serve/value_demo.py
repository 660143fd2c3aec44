"""``cascade demo``: what the cascade is worth, measured live on a trained fleet, in one command.

1. **Build** the recall fleet (:mod:`toymodels.recall_fleet`: three tiny models trained to recall the
   birth years of invented people; the small one knows the frequent people only, and nothing in a
   question says who is frequent). Trained once, cached after.
2. **Bring it up**: Ray in this process, the fleet file deployed on Ray Serve, real vLLM engines.
3. **Calibrate** (``cascade calibrate``, the command a user runs on their own prompts) on questions
   about the calibration people: replay, fit the quality estimators and the GPU-time cost model, the
   lambda of every policy for the budget. The replay is cached beside the models: a second demo
   refits from it instead of asking the fleet again (``--recalibrate`` asks again).
4. **Redeploy the controller** with the calibration's artifacts.
5. **Ask** held-out questions (people the calibration never saw) three ways, interleaved question by
   question so that each arm meets the same fleet at the same moment: the strongest model alone,
   routing at the budget, cascade routing at the same budget; each answer is checked.
6. **Summarise** on one screen: accuracy (95% CI) and measured GPU-seconds of each arm, paired
   differences, a few answers with their routing traces; the same as JSON and a PNG.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DemoOptions", "run_value_demo"]

# Questions of the calibration replay: every calibration person once.
CALIBRATION_QUESTIONS = 400
STRONGEST, ROUTING, CASCADE = "strongest", "routing", "cascade_routing"


@dataclass(frozen=True)
class DemoOptions:
    """What ``cascade demo`` was asked to do (its command-line options, resolved)."""

    fleet_file: Path
    port: int = 8000
    timeout_s: float = 900.0
    budget: str = "50%"  # GPU-seconds per question, or a share of the strongest model's
    n_questions: int = 200
    concurrency: int = 4
    recalibrate: bool = False
    out: Path | None = None  # default: .cache/recall/demo beside the fleet file


def run_value_demo(opts: DemoOptions) -> int:
    """Steps 1-6 of the module docstring; 0 on success. Bad options raise ``ValueError`` before anything starts."""
    from rich.console import Console

    from calibration.run import parse_budget
    from cluster.config import FleetConfig
    from toymodels.recall_fleet import N_EVALUATION_KEYS

    console = Console()
    if not 1 <= opts.n_questions <= N_EVALUATION_KEYS:
        raise ValueError(f"--questions must be between 1 and {N_EVALUATION_KEYS} (the held-out people), "
                         f"got {opts.n_questions}")
    parse_budget(opts.budget, 1.0)  # its form, before minutes of work
    fleet = FleetConfig.from_file(opts.fleet_file)
    cache = opts.fleet_file.resolve().parent / ".cache"
    out = opts.out or cache / "recall" / "demo"
    started = time.perf_counter()
    _quiet_http_logs()
    _build(cache, console)
    built_s = time.perf_counter() - started
    prompts = _write_calibration_prompts(out)
    if opts.recalibrate:
        (out / "replay.jsonl").unlink(missing_ok=True)
    # A budget out of reach is a BudgetUnreachableError (a ValueError: one line, exit 2) after the fit is saved.
    measured = _live(opts, fleet, prompts, out, console, started)
    measured.timing_s = {"build": built_s, **measured.timing_s, "total": time.perf_counter() - started}
    summary = _summarise(measured, opts)
    (out / "value_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(summary, measured, out / "value_summary.png")
    _print(console, summary, measured)
    console.print(f"done in {time.perf_counter() - started:.0f} s; "
                  f"{out / 'value_summary.json'}, {out / 'value_summary.png'}")
    return 0


def _quiet_http_logs() -> None:
    """The OpenAI SDK's client logs every request at INFO, and Ray's driver logging shows INFO: hundreds
    of lines would bury the progress bars."""
    import logging

    for name in ("httpx", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _build(cache: Path, console: Any) -> None:
    """Step 1, with one progress bar per model (a no-op once built)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from cascade_serve.progress import LoggedProgress
    from toymodels.recall_fleet import build_recall_fleet

    columns = (TextColumn("training {task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with LoggedProgress(*columns, console=console) as bar:
        build_recall_fleet(cache / "recall", progress=bar)


def _write_calibration_prompts(out: Path) -> Path:
    from toymodels.recall_fleet import recall_prompts

    out.mkdir(parents=True, exist_ok=True)
    path = out / "calibration_prompts.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in recall_prompts(CALIBRATION_QUESTIONS, 0, split="calibration"))
    # Rewritten only when it changes: the replay cache is keyed by the prompts.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


@dataclass
class _Measured:
    """What the live steps measured."""

    calibration: dict[str, Any]  # cascade calibrate's summary
    strongest: str
    budget_gpu_s: float
    lambdas: dict[str, float]  # arm -> lambda (policies only)
    rows: list[dict[str, Any]]  # the held-out questions
    replies: dict[str, list[dict[str, Any]]]  # arm -> reply per question
    quality: dict[str, np.ndarray]
    gpu_s: dict[str, np.ndarray]
    timing_s: dict[str, float]  # wall seconds of each step


def _live(opts: DemoOptions, fleet: Any, prompts: Path, out: Path, console: Any, started: float) -> _Measured:
    """Steps 2-5 on a Ray cluster this process starts and stops."""
    from calibration.run import CalibrateOptions, run_calibrate
    from cascade_serve.calibrate import ConsoleReporter
    from estimators.artifacts import lambda_for_budget
    from serve.deploy import connect, deploy, health_summary, wait_ready
    from toymodels.recall_fleet import MAX_ANSWER_TOKENS, recall_prompts

    url = f"http://127.0.0.1:{opts.port}"
    with console.status("starting Ray") as status:
        how = connect(None, start_local=False, num_cpus=os.cpu_count())
    try:
        with console.status(f"deploying {opts.fleet_file}") as status:
            deploy(fleet, host="127.0.0.1", port=opts.port)

            def show(body: dict[str, Any]) -> None:
                status.update(f"[{time.perf_counter() - started:.0f} s] waiting for the vLLM engines (about a "
                              f"minute each on 2 cores): {health_summary(body)}")

            wait_ready(url, opts.timeout_s, show)
        up_s = time.perf_counter() - started
        console.print(f"fleet ready after {up_s:.0f} s at {url}/v1")
        mark = time.perf_counter()
        with ConsoleReporter(console=console) as reporter:
            calibration = run_calibrate(CalibrateOptions(
                fleet_file=opts.fleet_file, prompts=prompts, out=out, url=url, concurrency=opts.concurrency,
                max_tokens=MAX_ANSWER_TOKENS, budget=opts.budget), reporter=reporter)
        budget_gpu_s = float(calibration["budget"]["budget_gpu_s"])
        curves = calibration["lambda_curves"]
        # With the calibration's margin for the budget's sampling error, as the controller serves a budget.
        margin_se = float(calibration.get("budget_margin_se", 0.0))
        lambdas = {arm: float(lambda_for_budget(curves[arm], budget_gpu_s, margin_se=margin_se)["lambda"])
                   for arm in (ROUTING, CASCADE)}
        calibrate_s = time.perf_counter() - mark
        mark = time.perf_counter()
        calibrated = fleet.model_copy(update={"cascade": fleet.cascade.model_copy(update={"artifacts": out.resolve()})})
        with console.status("redeploying the controller with the calibration's estimators"):
            deploy(calibrated, host="127.0.0.1", port=opts.port)
            wait_ready(url, opts.timeout_s)
        redeploy_s = time.perf_counter() - mark
        mark = time.perf_counter()
        per_model = calibration["per_model"]
        # Most accurate on the calibration prompts; of equals, the dearer (it is what one would deploy).
        strongest = max(per_model, key=lambda m: (per_model[m]["accuracy"], per_model[m]["gpu_s_per_query"]))
        rows = recall_prompts(opts.n_questions, 1, split="evaluation")
        replies = _ask(url, rows, strongest, lambdas, calibration["max_depth"], MAX_ANSWER_TOKENS,
                       opts.concurrency, console)
        ask_s = time.perf_counter() - mark
    finally:
        _tear_down(how, console)
    quality, gpu_s = _score(rows, replies)
    timing_s = {"fleet_up_incl_build": up_s, "calibrate": calibrate_s, "redeploy_controller": redeploy_s,
                "ask": ask_s}
    return _Measured(calibration, strongest, budget_gpu_s, lambdas, rows, replies, quality, gpu_s, timing_s)


def _ask(url: str, rows: list[dict[str, Any]], strongest: str, lambdas: dict[str, float], max_depth: int,
         max_tokens: int, concurrency: int, console: Any) -> dict[str, list[dict[str, Any]]]:
    """Step 5: every question to every arm through the OpenAI SDK, interleaved question by question.

    The controller keeps learning costs from every answer: arms asked one after another would each meet
    a different controller; interleaved, they meet the same one.
    """
    from openai import AsyncOpenAI
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from cascade_serve.progress import LoggedProgress
    from routing import API_POLICY_NAMES

    api_name = {core: api for api, core in API_POLICY_NAMES.items()}
    arms = {STRONGEST: (strongest, None)} | {arm: ("cascade", {"policy": api_name[arm], "lambda": lam,
                                                               "max_depth": max_depth})
                                            for arm, lam in lambdas.items()}
    jobs = [(arm, i) for i in range(len(rows)) for arm in arms]
    replies: dict[str, list[dict[str, Any]]] = {arm: [{} for _ in rows] for arm in arms}

    async def run_all(advance: Any) -> None:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="demo", timeout=120.0, max_retries=3)
        queue = list(jobs)

        async def worker() -> None:
            while queue:
                arm, i = queue.pop(0)
                model, knobs = arms[arm]
                reply = await client.chat.completions.create(
                    model=model, messages=rows[i]["messages"], max_tokens=max_tokens, temperature=0.0,
                    extra_body={"cascade": knobs} if knobs else None)
                replies[arm][i] = reply.model_dump()
                advance()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await client.close()

    columns = (TextColumn("asking {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with LoggedProgress(*columns, console=console) as bar:
        task = bar.add_task(f"{len(rows)} held-out questions x {len(arms)} arms", total=len(jobs))
        asyncio.run(run_all(lambda: bar.advance(task)))
    return replies


def _score(rows: list[dict[str, Any]], replies: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, np.ndarray],
                                                                                       dict[str, np.ndarray]]:
    """Each answer checked against the table, and each reply's measured GPU-seconds."""
    from calibration.graders import numeric_match

    quality, gpu_s = {}, {}
    for arm, answers in replies.items():
        quality[arm] = np.array([numeric_match(r["choices"][0]["message"]["content"] or "", row["answer"])
                                 for r, row in zip(answers, rows, strict=True)])
        gpu_s[arm] = np.array([_reply_gpu_s(r) for r in answers])
    return quality, gpu_s


def _reply_gpu_s(reply: dict[str, Any]) -> float:
    """The engine time a reply was billed: the cascade's total, or a direct answer's prefill + decode."""
    if reply.get("cascade"):
        return float(reply["cascade"]["total_gpu_ms"]) / 1e3
    metrics = reply["metrics"]
    return (float(metrics["time_to_first_token_ms"]) + float(metrics["generation_time_ms"])) / 1e3


def _summarise(m: _Measured, opts: DemoOptions) -> dict[str, Any]:
    from evaluation.value_summary import value_summary

    summary = value_summary(m.quality, m.gpu_s, reference=STRONGEST)
    budget = m.calibration["budget"]
    return {
        "fleet_file": str(opts.fleet_file),
        "strongest": m.strongest,
        "budget": {"asked": opts.budget, "gpu_s_per_question": m.budget_gpu_s,
                   "served_policy": budget["policy"], "candidates": budget["candidates"]},
        "lambdas": m.lambdas,
        "calibration": {"per_model": m.calibration["per_model"], "prompts": m.calibration["prompts"],
                        "uncertainty_scale": m.calibration.get("uncertainty_scale")},
        "timing_s": m.timing_s,
        **summary,
    }


def _tear_down(how: str, console: Any) -> None:
    """The user's own cluster keeps running, without the demo's app; a cluster the demo started goes."""
    from serve.deploy import shutdown_app

    if how != "in-process":
        shutdown_app()
        return
    import ray
    from ray import serve

    with console.status("shutting down"):
        serve.shutdown()
        ray.shutdown()


def _label(arm: str, summary: dict[str, Any]) -> str:
    if arm == STRONGEST:
        return f"{summary['strongest']} alone"
    return "cascade routing" if arm == CASCADE else "routing"


def _print(console: Any, summary: dict[str, Any], m: _Measured) -> None:
    """Step 6: the one-screen summary."""
    from rich.table import Table

    budget = summary["budget"]
    arms = summary["arms"]
    table = Table(title=f"live, {summary['n_questions']} held-out questions (people calibration never saw), budget "
                        f"{budget['asked']} ({budget['gpu_s_per_question']:.3f} GPU-s at calibration); GPU-s per "
                        "question (share of the strongest's), accuracy minus routing's with its paired CI")
    # Four columns fit 80 terminal columns; each arm minus the strongest is in the JSON.
    for col in ("", "accuracy [95% CI]", "GPU-s", "vs routing"):
        table.add_column(col, justify="left" if not col else "right", no_wrap=True)
    for arm in (STRONGEST, ROUTING, CASCADE):
        a = arms[arm]
        low, high = a["accuracy_ci"]
        d = a["minus"].get(ROUTING)
        table.add_row(_label(arm, summary), f"{a['accuracy']:.3f} [{low:.2f}, {high:.2f}]",
                      f"{a['gpu_s_per_question']:.3f} ({a['cost_vs_reference']:.0%})",
                      "" if d is None else f"{d['mean']:+.3f} [{d['low']:+.2f}, {d['high']:+.2f}]",
                      style="bold" if arm == CASCADE else None)
    console.print(table)
    console.print(_verdict(summary))
    console.print(_examples(m))


def _verdict(summary: dict[str, Any]) -> str:
    """The summary in words, read off the numbers (each claim only where its paired CI supports it)."""
    arms = summary["arms"]
    cr, strongest = arms[CASCADE], summary["strongest"]
    d = cr["minus"][ROUTING]
    if d["low"] > 0:
        versus = f"{d['mean']:+.3f} accuracy above routing at the same budget (paired 95% CI excludes 0)"
    elif d["high"] < 0:
        versus = f"{d['mean']:+.3f} accuracy below routing at the same budget (paired 95% CI excludes 0)"
    else:
        versus = f"{d['mean']:+.3f} accuracy against routing at the same budget (within noise)"
    served = summary["budget"]["served_policy"]
    lambdas = ", ".join(f"{_label(a, summary)} {lam:.3g}" for a, lam in summary["lambdas"].items())
    return (f"cascade routing: {cr['accuracy']:.1%} right for {cr['cost_vs_reference']:.0%} of the GPU time of "
            f"{strongest} alone ({arms[STRONGEST]['accuracy']:.1%}); {versus}. Lambdas for the budget: {lambdas}. "
            f"At this budget the calibration chose to serve [bold]{served}[/bold] (the simplest policy no richer "
            "one beat on validation by more than its noise); GPU-seconds are engine time measured per answer.")


def _examples(m: _Measured, n: int = 3) -> Any:
    """A few cascade-routing answers with their traces: one accepted from the first model, escalations."""
    from rich.table import Table

    table = Table(title="a few cascade-routing answers (stage: decision, GPU ms, quality estimate after the answer)")
    for col in ("question", "stages", "answer"):
        table.add_column(col, overflow="fold")
    replies = m.replies[CASCADE]
    depth = [len(r["cascade"]["stages"]) for r in replies]
    picked = [i for i in range(len(replies)) if depth[i] == 1][:1] + [i for i in range(len(replies)) if depth[i] > 1]
    for i in picked[:n]:
        r, row = replies[i], m.rows[i]
        stages = "\n".join(f"{s['model']}: {s['decision']}, {s.get('gpu_ms', 0):.0f} ms, q {_shown_quality(s):.2f}"
                           for s in r["cascade"]["stages"])
        text = (r["choices"][0]["message"]["content"] or "").strip()
        right = m.quality[CASCADE][i] == 1.0
        table.add_row(row["messages"][0]["content"], stages,
                      f"{text} ({'right' if right else 'wrong: ' + row['answer']})")
    return table


def _shown_quality(stage: dict[str, Any]) -> float:
    """The quality estimate after the stage's answer, or before it where the answer gave none."""
    post = stage.get("quality_post_hoc")
    return float(stage["quality_estimate"] if post is None else post)


def _plot(summary: dict[str, Any], m: _Measured, path: Path) -> None:
    """The three arms and the single models (calibration prompts) on accuracy vs GPU-seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    per_model = summary["calibration"]["per_model"]
    ax.scatter([v["gpu_s_per_query"] for v in per_model.values()], [v["accuracy"] for v in per_model.values()],
               color="0.5", s=16, label="single models (calibration prompts)")
    for name, v in per_model.items():
        ax.annotate(name, (v["gpu_s_per_query"], v["accuracy"]), fontsize=6, xytext=(3, -8),
                    textcoords="offset points")
    colors = {STRONGEST: "black", ROUTING: "tab:blue", CASCADE: "tab:red"}
    for arm, color in colors.items():
        a = summary["arms"][arm]
        low, high = a["accuracy_ci"]
        ax.errorbar([a["gpu_s_per_question"]], [a["accuracy"]], yerr=[[a["accuracy"] - low], [high - a["accuracy"]]],
                    fmt="o", color=color, capsize=3, label=_label(arm, summary))
    ax.axvline(summary["budget"]["gpu_s_per_question"], color="0.7", ls=":", label="budget")
    ax.set_xlabel("GPU-seconds per question (measured)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"recall fleet, live: {summary['n_questions']} held-out questions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
