"""Fuzzing a live fleet: requests generated from the endpoint's own ``/openapi.json``, every answer judged.

    .venv/bin/cascade up models.toy.yaml
    .venv/bin/python -m scripts.fuzz_live --url http://127.0.0.1:8000 --api-key KEY --json runs/fuzz_live.json

Generating is slower than a tiny fleet answers (tens of milliseconds a request, in the same two cores), so
a long campaign is made first, on every core, and replayed:

    .venv/bin/python -m scripts.fuzz_live --url http://127.0.0.1:8000 --save-probes runs/probes.jsonl
    .venv/bin/python -m scripts.fuzz_live --url http://127.0.0.1:8000 --api-key KEY --probes runs/probes.jsonl

Reads the endpoint's ``/openapi.json`` (the engine's request models, the ``cascade`` knobs, the error
envelope: ``serve.openapi``) and has schemathesis generate ``--requests`` requests across the OpenAI
routes, in the shares of ``ROUTE_SHARES``, each valid by the schema or, ``--negative-share`` of them,
not. Generated data is adjusted so that most requests get past the first checks, and so that a valid
request stays cheap on a tiny engine:

- the ``Authorization`` header is left out of generation (so that invalid requests are invalid in
  their body, not refused for their key) and carries ``--api-key``, but on ``--unkeyed-share`` of the
  requests, which carry a wrong key or none;
- a body's ``model`` (and the id of ``GET /v1/models/{id}``) is a served model or ``cascade``, but on
  ``--raw-model-share`` of the requests;
- ``max_tokens``, ``max_completion_tokens`` and ``min_tokens`` above ``--max-tokens`` are lowered to it,
  ``n`` above ``--max-n`` to it: the schema bounds none of them, and the generator readily asks for
  millions (a request for that many tokens is not fuzzing, it is load).

Requests go out ``--concurrency`` at a time while the next ones are generated (or read from ``--probes``:
a saved campaign carries no key, only whether each request is to carry it). Every answer is judged
against the reliability issue's bar; a violation is any of

- ``plain_text``: an error whose body is not an OpenAI envelope (``{"error": {"message", "type", ...}}``
  with a one-line message), or a success that is neither JSON nor server-sent JSON events;
- ``server_error``: a 5xx (or a stream's error event with a 5xx code) other than a 503 shed: a shed says
  when to retry (``Retry-After``) and that the endpoint or a model is at capacity;
- ``hang``: no whole answer within ``--timeout-s`` (default: the fleet file's default request timeout
  plus 10 s);
- ``transport_error``: the connection failed or the server broke HTTP (a request the client itself
  cannot send, such as a generated header name HTTP does not allow, is counted as ``unsent``).

Prints the statuses per route and the violations (with examples and the slowest answer), writes them
as JSON with ``--json`` (the API key is never written), and exits 1 on any violation (2: no endpoint).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import math
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config import CascadeSettings

# The OpenAI routes (and /health) and the share of the requests each gets; /metrics is Prometheus text.
ROUTE_SHARES: dict[str, float] = {
    "POST /v1/chat/completions": 0.44,
    "POST /v1/completions": 0.44,
    "GET /v1/models": 0.04,
    "GET /v1/models/{model_id}": 0.04,
    "GET /health": 0.04,
}
DEFAULT_TIMEOUT_S = CascadeSettings.model_fields["request_timeout_s"].default + 10.0
VIOLATIONS = ("plain_text", "server_error", "hang", "transport_error")
BATCH = 200  # cases per generator run: each run starts again from the simplest inputs
EXAMPLES = 5  # kept per violation
BODY_CHARS = 2000  # of a request or answer body, in an example


@dataclass(frozen=True, slots=True)
class Probe:
    """One generated request, ready to send (``url`` is absolute, with its path parameters)."""

    route: str  # the operation, "METHOD /path/{param}"
    mode: str  # "positive": valid by the schema; "negative": not
    keyed: bool  # it carries --api-key (else a wrong key, or none)
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back for one probe; ``failure`` says why nothing did ("hang", "unsent", or the error)."""

    status: int | None
    content_type: str = ""
    retry_after: str | None = None
    body: bytes = b""
    elapsed_s: float = 0.0
    failure: str | None = None


def _json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def envelope(body: bytes | str) -> dict[str, Any] | None:
    """The ``error`` object of an OpenAI error envelope with a one-line message; None if ``body`` is not one."""
    parsed = _json(body)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return None
    message = error.get("message")
    if not isinstance(message, str) or not message or "\n" in message or not isinstance(error.get("type"), str):
        return None
    return error


def is_shed(status: int, error: dict[str, Any], retry_after: str | None) -> bool:
    """A 503 that says when to retry, because the endpoint (code "overloaded") or a model is at capacity."""
    return (status == 503 and retry_after is not None
            and (error.get("code") == "overloaded" or "at capacity" in str(error.get("message"))))


def _event_violations(text: str) -> list[str]:
    """A server-sent stream: every event's data a JSON object, or the final [DONE]; an error event with a
    5xx code is a server error (a stream cannot be shed once it started)."""
    found = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        if not block.startswith("data: "):
            return ["plain_text"]
        data = block.removeprefix("data: ")
        if data == "[DONE]":
            continue
        event = _json(data)
        if not isinstance(event, dict):
            return ["plain_text"]
        if "error" in event:
            code = (event["error"] or {}).get("code") if isinstance(event["error"], dict) else None
            if envelope(data) is None:
                found.append("plain_text")
            elif isinstance(code, int) and code >= 500:
                found.append("server_error")
    return sorted(set(found))


def judge(route: str, answer: Answer) -> list[str]:
    """The violations of the answer to a request of ``route`` (module docstring); empty for a good one."""
    if answer.failure is not None:
        return [] if answer.failure == "unsent" else ["hang" if answer.failure == "hang" else "transport_error"]
    assert answer.status is not None
    if answer.status < 300:
        if answer.content_type.startswith("text/event-stream"):
            return _event_violations(answer.body.decode("utf-8", "replace"))
        ok = answer.content_type.startswith("application/json") and isinstance(_json(answer.body), dict | list)
        return [] if ok else ["plain_text"]
    error = envelope(answer.body)
    found = []
    health = route == "GET /health" and isinstance(_json(answer.body), dict)  # its 503: the health document
    if error is None and not health:
        found.append("plain_text")
    if answer.status >= 500 and not (error is not None and is_shed(answer.status, error, answer.retry_after)):
        found.append("server_error")
    return found


@dataclass
class Tally:
    """Counts of a campaign: by route and status, by generation mode, by violation; examples; the slowest."""

    total: int = 0
    by_route: dict[str, Counter[str]] = field(default_factory=dict)
    by_mode: dict[str, Counter[str]] = field(default_factory=dict)
    violations: Counter[str] = field(default_factory=Counter)
    sheds: int = 0
    unsent: int = 0
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    slowest: dict[str, Any] | None = None

    def add(self, probe: Probe, answer: Answer) -> list[str]:
        """Count one answer; its violations."""
        self.total += 1
        status = str(answer.status) if answer.status is not None else answer.failure or "none"
        self.by_route.setdefault(probe.route, Counter())[status] += 1
        self.by_mode.setdefault(probe.mode, Counter())[status] += 1
        found = judge(probe.route, answer)
        if answer.failure == "unsent":
            self.unsent += 1
        if answer.status is not None and answer.status >= 500 and "server_error" not in found:
            self.sheds += 1
        for kind in found:
            self.violations[kind] += 1
            kept = self.examples.setdefault(kind, [])
            if len(kept) < EXAMPLES:
                kept.append(_example(probe, answer))
        if answer.status is not None and (self.slowest is None or answer.elapsed_s > self.slowest["elapsed_s"]):
            self.slowest = _example(probe, answer)
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "violations": {kind: self.violations[kind] for kind in VIOLATIONS},
            "ok": not any(self.violations.values()),
            "sheds": self.sheds,
            "unsent": self.unsent,
            "by_route": {route: dict(sorted(c.items())) for route, c in sorted(self.by_route.items())},
            "by_mode": {mode: dict(sorted(c.items())) for mode, c in sorted(self.by_mode.items())},
            "examples": self.examples,
            "slowest": self.slowest,
        }


def _example(probe: Probe, answer: Answer) -> dict[str, Any]:
    unkeyed = "a wrong key" if "Authorization" in probe.headers else "none"
    return {
        "route": probe.route, "mode": probe.mode, "method": probe.method, "url": probe.url,
        "authorization": "the key" if probe.keyed else unkeyed,
        "request_body": (probe.content or b"").decode("utf-8", "replace")[:BODY_CHARS],
        "status": answer.status, "failure": answer.failure, "content_type": answer.content_type,
        "retry_after": answer.retry_after, "elapsed_s": round(answer.elapsed_s, 4),
        "answer_body": answer.body.decode("utf-8", "replace")[:BODY_CHARS],
    }


# -- generation ------------------------------------------------------------------------------------------


# The Authorization header as generated: fixed, so that no invalid case is invalid for its key alone; it is
# replaced by the real key, a wrong one, or nothing (``to_probe``).
AUTH_PLACEHOLDER = "Bearer fuzz-placeholder"


def generate(schema: Any, route: str, mode: str, n: int, seed: int) -> tuple[list[Any], str]:
    """Up to ``n`` schemathesis cases of ``route`` and the mode they were made in: an operation with
    nothing left to make invalid (``GET /health``, ``GET /v1/models``) gives valid ones instead."""
    from hypothesis import HealthCheck, Phase, given, seed as fixed_seed, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    method, path = route.split(" ", 1)
    cases: list[Any] = []

    def run(generation_mode: Any) -> None:
        strategy = schema[path][method].as_strategy(generation_mode=generation_mode,
                                                    headers={"Authorization": AUTH_PLACEHOLDER})

        @fixed_seed(seed)
        @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(case: Any) -> None:
            cases.append(case)

        collect()

    try:
        run(GenerationMode(mode))
    except Unsatisfiable:
        run(GenerationMode.POSITIVE)
        return cases, "positive"
    return cases, mode


@dataclass(frozen=True, slots=True)
class Adjust:
    """How generated cases are adjusted before they are sent (module docstring)."""

    api_key: str | None
    models: tuple[str, ...]  # served model ids and "cascade"
    unkeyed_share: float = 0.05
    raw_model_share: float = 0.1
    max_tokens: int = 16
    max_n: int = 2

    def caps(self) -> dict[str, int]:
        return {"max_tokens": self.max_tokens, "max_completion_tokens": self.max_tokens,
                "min_tokens": self.max_tokens, "n": self.max_n}


def to_probe(case: Any, route: str, mode: str, url: str, adjust: Adjust, rng: random.Random) -> Probe:
    """``case`` adjusted (``Adjust``) and serialized as schemathesis would send it."""
    body = case.body
    if isinstance(body, dict):
        if isinstance(body.get("model"), str | None) and "model" in body and rng.random() >= adjust.raw_model_share:
            body["model"] = rng.choice(adjust.models)
        for name, cap in adjust.caps().items():
            value = body.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if value > cap and (isinstance(value, int) or value.is_integer()):  # a fraction is refused anyway
                body[name] = cap
    if "model_id" in (case.path_parameters or {}) and rng.random() >= adjust.raw_model_share:
        case.path_parameters["model_id"] = rng.choice(adjust.models)
    keyed = adjust.api_key is not None and rng.random() >= adjust.unkeyed_share
    headers = {"Authorization": f"Bearer {adjust.api_key}" if keyed else "Bearer not-the-key"}
    if not keyed and rng.random() < 0.5:
        case.headers.pop("Authorization", None)
        headers = {}
    kwargs = case.as_transport_kwargs(base_url=url, headers=headers)
    content = json.dumps(kwargs["json"]).encode() if "json" in kwargs else kwargs.get("data")
    if isinstance(content, str):
        content = content.encode()
    if kwargs.get("params"):
        from urllib.parse import urlencode

        kwargs["url"] += ("&" if "?" in kwargs["url"] else "?") + urlencode(kwargs["params"], doseq=True)
    return Probe(route, mode, keyed, kwargs["method"], kwargs["url"],
                 {k: str(v) for k, v in kwargs["headers"].items()}, content if isinstance(content, bytes) else None)


def probes(schema: Any, url: str, n: int, adjust: Adjust, *, negative_share: float, seed: int) -> Iterator[Probe]:
    """``n`` probes, their routes drawn by ``ROUTE_SHARES`` and interleaved; cases generated a batch at a
    time per (route, mode), at most ``BATCH`` and about what ``n`` needs, a batch smaller than asked for
    (nothing more to vary) used again."""
    rng = random.Random(seed)
    routes, weights = list(ROUTE_SHARES), list(ROUTE_SHARES.values())
    buffers: dict[tuple[str, str], list[Any]] = {}
    made_as: dict[tuple[str, str], str] = {}  # a negative batch that came out valid says so for the rest
    for _ in range(n):
        route = rng.choices(routes, weights)[0]
        mode = "negative" if rng.random() < negative_share else "positive"
        mode = made_as.get((route, mode), mode)
        buffer = buffers.setdefault((route, mode), [])
        if not buffer:
            share = ROUTE_SHARES[route] * (negative_share if mode == "negative" else 1 - negative_share)
            size = min(BATCH, max(5, math.ceil(1.2 * n * share)))
            batch, made_as[(route, mode)] = generate(schema, route, mode, size, rng.randrange(2**32))
            buffer.extend(reversed((batch * math.ceil(size / max(len(batch), 1)))[:size]))
        yield to_probe(buffer.pop(), route, made_as[(route, mode)], url, adjust, rng)


KEY_PLACEHOLDER = "fuzz-key-placeholder"  # what a saved probe carries where the key goes (never the key)
SAVED_BASE = "http://fuzz.invalid"  # the base URL of saved probes, replaced by --url when they are sent


def probe_record(probe: Probe) -> dict[str, Any]:
    """``probe`` as one JSON line of a saved campaign (the body base64: generated bytes need not be text)."""
    assert probe.url.startswith(SAVED_BASE), probe.url
    return {"route": probe.route, "mode": probe.mode, "keyed": probe.keyed, "method": probe.method,
            "path": probe.url.removeprefix(SAVED_BASE), "headers": probe.headers,
            "content": None if probe.content is None else base64.b64encode(probe.content).decode()}


def from_record(record: dict[str, Any], url: str, api_key: str | None) -> Probe:
    """A saved probe, sent to ``url``: a keyed one carries ``api_key``."""
    headers = dict(record["headers"])
    if record["keyed"]:
        if api_key is None:
            raise ValueError("the saved campaign has requests that carry the key: pass --api-key")
        headers["Authorization"] = f"Bearer {api_key}"
    content = None if record["content"] is None else base64.b64decode(record["content"])
    return Probe(record["route"], record["mode"], record["keyed"], record["method"], url + record["path"],
                 headers, content)


def _generate_part(document: dict[str, Any], n: int, adjust: Adjust, negative_share: float,
                   seed: int) -> list[dict[str, Any]]:
    import schemathesis

    schema = schemathesis.openapi.from_dict(document)
    return [probe_record(p) for p in probes(schema, SAVED_BASE, n, adjust, negative_share=negative_share,
                                            seed=seed)]


def generate_campaign(document: dict[str, Any], n: int, adjust: Adjust, *, negative_share: float, seed: int,
                      workers: int, on_part: Callable[[int], None] = lambda done: None) -> list[dict[str, Any]]:
    """``n`` saved probes made by ``workers`` processes (each its own seed), interleaved so that a replay
    mixes them as one generator would."""
    from concurrent.futures import ProcessPoolExecutor

    parts = _split(n, max(1, min(workers, math.ceil(n / BATCH))))
    made: list[list[dict[str, Any]]] = []
    with ProcessPoolExecutor(len(parts)) as pool:
        futures = [pool.submit(_generate_part, document, size, adjust, negative_share, seed * 1_000 + i)
                   for i, size in enumerate(parts)]
        for future in futures:
            made.append(future.result())
            on_part(sum(map(len, made)))
    return [part[i] for i in range(max(parts)) for part in made if i < len(part)]


def _split(n: int, k: int) -> list[int]:
    return [n // k + (i < n % k) for i in range(k)]


# -- sending ---------------------------------------------------------------------------------------------


async def send(client: Any, probe: Probe, timeout_s: float) -> Answer:
    """One probe; its whole answer (a stream read to its end), or why none came within ``timeout_s``."""
    import httpx

    t0 = time.perf_counter()
    try:
        response = await asyncio.wait_for(
            client.request(probe.method, probe.url, headers=probe.headers, content=probe.content), timeout_s)
    except (TimeoutError, httpx.TimeoutException):
        return Answer(None, elapsed_s=time.perf_counter() - t0, failure="hang")
    except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL, UnicodeEncodeError):
        return Answer(None, failure="unsent")  # the client could not send what was generated
    except httpx.HTTPError as exc:
        return Answer(None, elapsed_s=time.perf_counter() - t0, failure=type(exc).__name__)
    return Answer(response.status_code, response.headers.get("content-type", ""),
                  response.headers.get("retry-after"), response.content, time.perf_counter() - t0)


async def campaign(stream: Iterable[Probe], *, concurrency: int, timeout_s: float,
                   on_answer: Callable[[Tally], None] = lambda tally: None,
                   on_violation: Callable[[list[str], dict[str, Any]], None] = lambda found, example: None) -> Tally:
    """Send the probes of ``stream`` ``concurrency`` at a time, generated on a thread meanwhile."""
    import httpx

    ready: queue.Queue[Probe | BaseException | None] = queue.Queue(maxsize=4 * BATCH)

    def produce() -> None:
        try:
            for probe in stream:
                ready.put(probe)
        except BaseException as exc:  # handed to the workers, raised in this script's main thread
            ready.put(exc)
        for _ in range(concurrency):
            ready.put(None)

    threading.Thread(target=produce, name="fuzz-generator", daemon=True).start()
    tally = Tally()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while True:
                probe = await asyncio.to_thread(ready.get)
                if probe is None:
                    return
                if isinstance(probe, BaseException):
                    raise probe
                answer = await send(client, probe, timeout_s)
                found = tally.add(probe, answer)
                on_answer(tally)
                if found:
                    on_violation(found, _example(probe, answer))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


# -- the command -----------------------------------------------------------------------------------------


def _report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    statuses = sorted({s for counts in result["by_route"].values() for s in counts}, key=lambda s: (len(s), s))
    table = Table(title=f"{result['total']} generated requests: answers per route")
    table.add_column("route")
    for status in statuses:
        table.add_column(status, justify="right")
    for route, counts in result["by_route"].items():
        table.add_row(route, *(str(counts.get(s, "")) for s in statuses))
    console.print(table)
    table = Table(title="violations")
    for col in ("kind", "count", "first example"):
        table.add_column(col)
    for kind, count in result["violations"].items():
        first = (result["examples"].get(kind) or [None])[0]
        shown = "" if first is None else (f"{first['route']} -> {first['status'] or first['failure']}: "
                                          f"{first['answer_body'][:120]}")
        table.add_row(kind, str(count), shown, style="red" if count else None)
    console.print(table)
    slowest = result["slowest"]
    if slowest is not None:
        console.print(f"slowest answer: {slowest['elapsed_s']:.2f} s ({slowest['route']}, {slowest['status']})")
    console.print(f"503 sheds: {result['sheds']}; not sendable as generated: {result['unsent']}")
    console.print("[green]no violation[/green]" if result["ok"] else "[red]violations found[/red]")


def _save(document: dict[str, Any], adjust: Adjust, args: argparse.Namespace, console: Any) -> int:
    """Generate the campaign (no key in it: ``KEY_PLACEHOLDER``) into ``args.save_probes``."""
    from cascade_serve.progress import LoggedProgress

    adjust = dataclasses.replace(adjust, api_key=KEY_PLACEHOLDER)
    with LoggedProgress(console=console) as bar:
        task = bar.add_task(f"generating on {args.workers} processes", total=args.requests)
        records = generate_campaign(document, args.requests, adjust, negative_share=args.negative_share,
                                    seed=args.seed, workers=args.workers,
                                    on_part=lambda done: bar.update(task, completed=done))
    args.save_probes.parent.mkdir(parents=True, exist_ok=True)
    with args.save_probes.open("w") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    console.print(f"{len(records)} requests saved to {args.save_probes}")
    return 0


def _saved(path: Path, url: str, api_key: str | None, limit: int) -> list[Probe]:
    """The first ``limit`` probes of a saved campaign, sent to ``url``; read whole before the first is sent,
    so that a malformed file is refused before the campaign starts."""
    with path.open() as lines:
        return [from_record(json.loads(line), url, api_key) for line, _ in zip(lines, range(limit), strict=False)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The endpoint
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the fleet's endpoint (default :8000)")
    parser.add_argument("--api-key", default=None, help="Bearer key, if the fleet enforces one (never written out)")
    # The campaign
    parser.add_argument("--requests", type=int, default=20_000, help="requests to send (default 20000)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"an answer not whole after this is a hang (default {DEFAULT_TIMEOUT_S:g}: the fleet "
                        "file's default request timeout plus 10 s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator and of the adjustments")
    # Generation
    parser.add_argument("--negative-share", type=float, default=0.5,
                        help="share of requests generated invalid by the schema (default 0.5)")
    parser.add_argument("--unkeyed-share", type=float, default=0.05,
                        help="share of requests sent without --api-key (default 0.05)")
    parser.add_argument("--raw-model-share", type=float, default=0.1,
                        help="share of requests keeping the generated model id (default 0.1)")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="generated token counts above this are lowered to it (default 16)")
    parser.add_argument("--max-n", type=int, default=2, help="generated n above this is lowered to it (default 2)")
    # A campaign made once, replayed
    parser.add_argument("--save-probes", type=Path, default=None,
                        help="generate the campaign into this JSON-lines file and send nothing")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes generating a saved campaign (default: every core)")
    parser.add_argument("--probes", type=Path, default=None,
                        help="send this saved campaign instead of generating one (--requests: at most that many)")
    # Output
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.timeout_s <= 0 or args.workers < 1:
        parser.error("--requests, --concurrency, --workers and --timeout-s must be positive")
    if args.save_probes is not None and args.probes is not None:
        parser.error("--save-probes makes a campaign, --probes sends one: give one of them")
    import httpx
    import schemathesis
    from rich.console import Console

    from cascade_serve.progress import LoggedProgress
    from cascade_serve.report import write_results

    console = Console()
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        document = httpx.get(f"{url}/openapi.json", timeout=120).json()
        listed = httpx.get(f"{url}/v1/models", headers=headers, timeout=30).json()["data"]
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        console.print(f"[red]cannot read the endpoint's schema and models at {url}: {exc}[/red] "
                      "(is it up? `cascade up FILE`; is --api-key right?)")
        return 2
    adjust = Adjust(api_key=args.api_key, models=tuple(m["id"] for m in listed), unkeyed_share=args.unkeyed_share,
                    raw_model_share=args.raw_model_share, max_tokens=args.max_tokens, max_n=args.max_n)
    if args.save_probes is not None:
        return _save(document, adjust, args, console)
    stream: list[Probe] | Iterator[Probe]
    if args.probes is not None:
        try:
            stream = _saved(args.probes, url, args.api_key, args.requests)
        except (OSError, ValueError, KeyError) as exc:
            console.print(f"[red]cannot read the saved campaign {args.probes}: {exc}[/red]")
            return 2
    else:
        schema = schemathesis.openapi.from_dict(document)
        stream = probes(schema, url, args.requests, adjust, negative_share=args.negative_share, seed=args.seed)
    started = time.perf_counter()
    with LoggedProgress(console=console) as bar:
        task = bar.add_task("generated requests", total=len(stream) if isinstance(stream, list) else args.requests)

        seen: list[Tally] = []  # the campaign's tally, kept for a run stopped with Ctrl-C

        def on_answer(tally: Tally) -> None:
            seen[:] = [tally]
            bad = sum(tally.violations.values())
            bar.update(task, advance=1, description=f"generated requests ({bad} violations)" if bad else None)

        def on_violation(found: list[str], example: dict[str, Any]) -> None:
            # As it happens, so that a long campaign's findings can be chased while it runs.
            bar.console.print(f"[red]{', '.join(found)}[/red]: {example['route']} -> "
                              f"{example['status'] or example['failure']} in {example['elapsed_s']} s: "
                              f"{example['answer_body'][:300]!r} for {example['request_body'][:300]!r}",
                              markup=True, highlight=False)

        interrupted = False
        try:
            tally = asyncio.run(campaign(stream, concurrency=args.concurrency, timeout_s=args.timeout_s,
                                         on_answer=on_answer, on_violation=on_violation))
        except KeyboardInterrupt:  # a long campaign stopped by hand still reports what it saw
            if not seen:
                raise
            tally, interrupted = seen[0], True
    result = {**tally.as_dict(), "interrupted": interrupted, "wall_s": round(time.perf_counter() - started, 1),
              "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                              if k != "api_key"}, "models": list(adjust.models), "route_shares": ROUTE_SHARES}}
    _report(result)
    write_results(result, json_path=args.json, plot_path=None, plot=lambda result, path: None)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
