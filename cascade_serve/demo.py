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
    from rich.table import Table

    from calibration.graders import numeric_match
    from cluster.config import FleetConfig
    from serve.deploy import connect, deploy, health_summary, wait_ready
    from toymodels.tiny import TINY_FLEET, build_tiny_model

    console = Console()
    fleet = FleetConfig.from_file(fleet_path)
    started = time.perf_counter()
    cache = fleet_path.resolve().parent / ".cache"
    prompts, answers = DEMO_PROMPTS, [None] * len(DEMO_PROMPTS)
    max_tokens = 16
    if toy:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        from cascade_serve.progress import LoggedProgress
        from toymodels.toy_fleet import MAX_ANSWER_TOKENS, build_toy_fleet, toy_prompts

        columns = (TextColumn("training {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with LoggedProgress(*columns, console=console) as bar:
            build_toy_fleet(cache / "toy", progress=bar)
        # One question of each difficulty, none ever trained on.
        rows = {r["task"]: r for r in toy_prompts(30, seed=7)}
        prompts = [rows[t]["messages"][0]["content"] for t in sorted(rows)]
        answers = [rows[t]["answer"] for t in sorted(rows)]
        max_tokens = MAX_ANSWER_TOKENS  # room for the scratchpad models' column sums
    else:
        with console.status("building the tiny models"):
            for name, spec in TINY_FLEET.items():
                build_tiny_model(cache / "tiny" / name, spec)
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
            table = Table(title="cascade: each prompt at three cost multipliers (lambda, quality per GPU-second)")
            for col in ("prompt", "lambda", "stages (model: decision, GPU ms, quality estimate)", "answered by",
                        "tokens", "answer"):
                table.add_column(col, overflow="fold")
            default_lambda = fleet.cascade.lambda_
            for prompt, expected in zip(prompts, answers, strict=True):
                for lam in (0.0, default_lambda, 1e6):
                    status.update(f"asking: {prompt} (lambda {lam:g})")
                    reply = client.chat.completions.create(
                        model="cascade", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
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
                    table.add_row(prompt, f"{lam:g}", stages, reply.model,
                                  str(usage.total_tokens if usage else "?"), text)
        finally:
            if how != "in-process":
                from serve.deploy import shutdown_app

                shutdown_app()  # the user's own cluster keeps running; the demo's app does not
            else:
                import ray
                from ray import serve

                status.update("shutting down")
                serve.shutdown()
                ray.shutdown()
    console.print(table)
    console.print(f"done in {time.perf_counter() - started:.0f} s")
    return 0
