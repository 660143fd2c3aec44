"""``cascade demo``: the embedded CPU fleet end to end, on this machine, in one command.

Builds the tiny models (deterministic, cached), starts Ray in this process, deploys the fleet file,
waits for every replica, then sends a few prompts to the virtual model ``cascade`` with the OpenAI
SDK, at three cost multipliers (0: escalate while quality can rise; the file's; huge: stay on the
cheapest), and prints each answer's routing trace. The tiny models' answers are gibberish by
construction; the routing, the measured GPU time and the accounting are real.

``cascade demo --toy`` does the same with the toy fleet (:mod:`toymodels.toy_fleet`: four tiny models
trained to add integers, accuracy rising with size; about three and a half minutes to train the first
time, cached after) and held-out addition questions, so the answers can be checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEMO_PROMPTS", "run_demo"]

DEMO_PROMPTS = [
    "What is 17 * 23?",
    "Write a Python function that reverses a string.",
    "Name the capital of France.",
]


def run_demo(fleet_path: Path, *, port: int, timeout_s: float, toy: bool = False) -> int:
    """Bring the fleet up in this process, ask the demo prompts at three lambdas, print the traces.

    ``toy``: build the toy fleet instead of the tiny one and ask held-out addition questions.
    """
    import os

    from openai import OpenAI
    from rich.console import Console

    from cluster.config import FleetConfig
    from serve.deploy import connect, deploy, health_summary, wait_ready

    console = Console()
    fleet = FleetConfig.from_file(fleet_path)
    started = time.perf_counter()
    questions = _build_models(fleet_path.resolve().parent / ".cache", toy=toy, console=console)
    with console.status("starting Ray") as status:
        how = connect(None, start_local=False, num_cpus=os.cpu_count())
        try:
            status.update(f"deploying {fleet_path} (vLLM engines start in about a minute each on 2 cores)")
            deploy(fleet, host="127.0.0.1", port=port)
            url = f"http://127.0.0.1:{port}"

            def show(body: dict[str, Any]) -> None:
                waited = time.perf_counter() - started
                status.update(f"[{waited:.0f} s] waiting for models: {health_summary(body)}")

            wait_ready(url, timeout_s, show)
            console.print(f"fleet ready in {time.perf_counter() - started:.0f} s at {url}/v1")
            client = OpenAI(base_url=f"{url}/v1", api_key="demo")
            # The file's lambda between the two extremes (a calibrated file may give a budget instead).
            middle = () if fleet.cascade.lambda_ is None else (fleet.cascade.lambda_,)
            table = _ask(client, questions, (0.0, *middle, 1e6), status)
        finally:
            _tear_down(how, status)
    console.print(table)
    console.print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


@dataclass(frozen=True)
class _Questions:
    prompts: list[str]
    answers: list[str | None]  # None: nothing to check the answer against
    max_tokens: int


def _build_models(cache: Path, *, toy: bool, console: Any) -> _Questions:
    """Build the fleet's models (cached) and pick its demo questions."""
    if not toy:
        from toymodels.tiny import TINY_FLEET, build_tiny_model

        with console.status("building the tiny models"):
            for name, spec in TINY_FLEET.items():
                build_tiny_model(cache / "tiny" / name, spec)
        return _Questions(list(DEMO_PROMPTS), [None] * len(DEMO_PROMPTS), max_tokens=16)
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from cascade_serve.progress import LoggedProgress
    from toymodels.toy_fleet import MAX_ANSWER_TOKENS, build_toy_fleet, toy_prompts

    columns = (TextColumn("training {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with LoggedProgress(*columns, console=console) as bar:
        build_toy_fleet(cache / "toy", progress=bar)
    # One question of each difficulty, none ever trained on.
    rows = {r["task"]: r for r in toy_prompts(30, seed=7)}
    # Room for the scratchpad models' column sums.
    return _Questions([rows[t]["messages"][0]["content"] for t in sorted(rows)],
                      [rows[t]["answer"] for t in sorted(rows)], max_tokens=MAX_ANSWER_TOKENS)


def _ask(client: Any, questions: _Questions, lambdas: tuple[float, ...], status: Any) -> Any:
    """Every question at every lambda through the virtual model ``cascade``: a table of the traces."""
    from rich.table import Table

    from calibration.graders import numeric_match

    table = Table(title="cascade: each prompt at three cost multipliers (lambda, quality per GPU-second)")
    for col in ("prompt", "lambda", "stages (model: decision, GPU ms, quality estimate)", "answered by",
                "tokens", "answer"):
        table.add_column(col, overflow="fold")
    for prompt, expected in zip(questions.prompts, questions.answers, strict=True):
        for lam in lambdas:
            status.update(f"asking: {prompt} (lambda {lam:g})")
            reply = client.chat.completions.create(
                model="cascade", messages=[{"role": "user", "content": prompt}], max_tokens=questions.max_tokens,
                temperature=0.0, extra_body={"cascade": {"lambda": lam}},
            )
            trace = (reply.model_extra or {})["cascade"]
            stages = "\n".join(
                f"{s['model']}: {s['decision']}, {s.get('gpu_ms', 0):.1f} ms, q "
                f"{s['quality_estimate'] if s.get('quality_post_hoc') is None else s['quality_post_hoc']:.3g}"
                for s in trace["stages"]
            )
            usage = reply.usage
            full = (reply.choices[0].message.content or "").replace("\n", " ")
            # The end of an answer holds its result (a scratchpad's "#### 432"): keep that end.
            text = full if len(full) <= 40 else "…" + full[-39:]
            if expected is not None:
                text += " (right)" if numeric_match(full, expected) == 1.0 else f" (wrong: {expected})"
            table.add_row(prompt, f"{lam:g}", stages, reply.model, str(usage.total_tokens if usage else "?"), text)
    return table


def _tear_down(how: str, status: Any) -> None:
    """The user's own cluster keeps running, without the demo's app; a cluster the demo started goes."""
    if how != "in-process":
        from serve.deploy import shutdown_app

        shutdown_app()
        return
    import ray
    from ray import serve

    status.update("shutting down")
    serve.shutdown()
    ray.shutdown()
