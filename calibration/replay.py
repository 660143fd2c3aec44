"""Replaying a labelled prompt set through every model of a live fleet, cached so a run can resume.

Every (prompt, model) pair is one direct request to the fleet's endpoint (``model`` = the model's id,
greedy, with token log-probabilities), so what calibration measures is what serving does: the same
replicas, the same engines, vLLM's own per-request timings (queue, prefill, decode). Results are
appended to a JSON-lines cache as they arrive, one line per pair, keyed by prompt id, model and the
model's fingerprint: an interrupted run picks up where it stopped, and a model whose weights or engine
settings changed is measured again. A pair that fails (timeout, 5xx, connection) is recorded with its
error and retried on the next run; one the model rejects (4xx: a prompt over its context length) is
recorded and not asked again, and calibration leaves that prompt out.

Each model gets ``concurrency`` requests in flight (batching changes per-request engine time, so the
concurrency is part of the measurement and is stored with the artifacts). ``models_at_once`` bounds
how many models are measured at the same time: all of them where each replica owns its accelerator,
one where the replicas share a processor (a CPU fleet), or every model's timing would include the
others' compute (on the toy fleet, 2 cores: 1.6-2.2x the same model's time when it is served alone).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.prompt_set import PromptRow
from estimators.stage import StageResult

__all__ = ["ReplayRecord", "load_cache", "permanent_failures", "replay"]

# A cache line's fields and the JSON types each may hold. The measured ones are StageResult's, and a
# failed call writes their empty values: the flat layout of every cache written so far.
_NUMBER = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "prompt_id": (str,), "model": (str,), "fingerprint": (str,),
    "text": (str,), "finish_reason": (str, type(None)), "prompt_tokens": (int,), "completion_tokens": (int,),
    "token_logprobs": (list,), "queue_s": _NUMBER, "prefill_s": _NUMBER, "decode_s": _NUMBER,
    "error": (str, type(None)), "permanent": (bool,),
}
_MEASURED: dict[str, Any] = {"text": "", "finish_reason": None, "prompt_tokens": 0, "completion_tokens": 0,
                             "token_logprobs": [], "queue_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0}
_DEFAULTS: dict[str, Any] = {**_MEASURED, "error": None, "permanent": False}
# The model rejects the request itself (too long, invalid for it): asking again gives the same answer.
_PERMANENT_STATUS = frozenset({400, 404, 413, 422})


@dataclass(frozen=True)
class ReplayRecord:
    """One model's answer to one prompt as its engine measured it (``stage``), or why the call failed.

    ``stage`` is None exactly when ``error`` is set; ``permanent`` marks an error the same request
    always gets (e.g. the prompt exceeds the model's context).
    """

    prompt_id: str
    model: str
    fingerprint: str
    stage: StageResult | None = None
    error: str | None = None
    permanent: bool = False

    def __post_init__(self) -> None:
        if (self.stage is None) == (self.error is None):
            raise ValueError(f"a replay record has a stage or an error, never both or neither: {self!r}")

    def to_json(self) -> str:
        """The record as one cache line (no newline): a flat JSON object, the stage's fields inlined."""
        measured = dict(_MEASURED)
        if self.stage is not None:
            measured = {name: getattr(self.stage, name) for name in _MEASURED}
            measured["token_logprobs"] = list(self.stage.token_logprobs)
        return json.dumps({"prompt_id": self.prompt_id, "model": self.model, "fingerprint": self.fingerprint,
                           **measured, "error": self.error, "permanent": self.permanent})

    @classmethod
    def from_json(cls, line: str) -> ReplayRecord:
        """The record of one cache line, as ``to_json`` writes it; measured fields may be left out.

        Raises
        ------
        ValueError
            The line is not a JSON object, misses ``prompt_id``, ``model`` or ``fingerprint``, has a
            field no record writes, or a value of the wrong JSON type.
        """
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise ValueError(f"a JSON object expected, got {type(raw).__name__}")
        unknown = sorted(raw.keys() - _FIELD_TYPES.keys())
        missing = [name for name in ("prompt_id", "model", "fingerprint") if name not in raw]
        if unknown or missing:
            raise ValueError(f"unknown fields {unknown}, missing fields {missing}")
        values = {**_DEFAULTS, **raw}
        for name, types in _FIELD_TYPES.items():
            value = values[name]
            wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
            if wrong or (name == "token_logprobs" and not all(_is_number(x) for x in value)):
                raise ValueError(f"{name} cannot be {value!r}")
        stage = StageResult(
            model=values["model"], prompt_tokens=values["prompt_tokens"], completion_tokens=values["completion_tokens"],
            token_logprobs=tuple(float(x) for x in values["token_logprobs"]), queue_s=float(values["queue_s"]),
            prefill_s=float(values["prefill_s"]), decode_s=float(values["decode_s"]), text=values["text"],
            finish_reason=values["finish_reason"],
        )
        return cls(values["prompt_id"], values["model"], values["fingerprint"],
                   stage=stage if values["error"] is None else None, error=values["error"],
                   permanent=values["permanent"])


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _read_records(path: Path) -> list[ReplayRecord]:
    """Every record of a cache file in order; a truncated last line (a run killed mid-write) is ignored,
    any other bad line is an error."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(ReplayRecord.from_json(line))
        except ValueError as exc:
            if number == len(lines):
                continue
            raise ValueError(f"{path}:{number}: not a replay record ({exc}); delete the file to start over") from None
    return records


def load_cache(path: Path) -> dict[tuple[str, str, str], ReplayRecord]:
    """Successful records of a cache file by (prompt id, model, fingerprint); later lines win."""
    out: dict[tuple[str, str, str], ReplayRecord] = {}
    for record in _read_records(path):
        key = (record.prompt_id, record.model, record.fingerprint)
        if record.error is None:
            out[key] = record
        else:
            out.pop(key, None)
    return out


def permanent_failures(path: Path) -> dict[tuple[str, str, str], ReplayRecord]:
    """Pairs whose last record is an error the model gives every time (HTTP 400/404/413/422: e.g. a
    prompt over the context length): not asked again while the model's fingerprint stays the same."""
    out: dict[tuple[str, str, str], ReplayRecord] = {}
    for record in _read_records(path):
        key = (record.prompt_id, record.model, record.fingerprint)
        if record.error is not None and record.permanent:
            out[key] = record
        else:
            out.pop(key, None)
    return out


def _record(row: PromptRow, model: str, fingerprint: str, response: dict[str, Any]) -> ReplayRecord:
    return ReplayRecord(row.id, model, fingerprint, stage=StageResult.from_response(model, row.endpoint, response))


async def _replay(
    url: str, rows: Sequence[PromptRow], fingerprints: dict[str, str], cache_path: Path, concurrency: int,
    models_at_once: int | None, timeout_s: float, api_key: str | None, on_done: Callable[[ReplayRecord], None],
) -> None:
    import httpx

    done = load_cache(cache_path).keys() | permanent_failures(cache_path).keys()
    todo = {model: [row for row in rows if (row.id, model, fp) not in done] for model, fp in fingerprints.items()}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_last_line(cache_path)
    slots = asyncio.Semaphore(models_at_once or max(1, len(todo)))
    with cache_path.open("a", encoding="utf-8") as sink:
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, headers=headers) as client:

            async def ask(row: PromptRow, model: str) -> None:
                path = "/v1/chat/completions" if row.endpoint == "chat" else "/v1/completions"
                try:
                    resp = await client.post(path, json=row.request_body(model))
                    if resp.status_code == 200:
                        record = _record(row, model, fingerprints[model], resp.json())
                    else:
                        message = _error_message(resp)
                        record = ReplayRecord(row.id, model, fingerprints[model],
                                              error=f"HTTP {resp.status_code}: {message}",
                                              permanent=resp.status_code in _PERMANENT_STATUS)
                except (httpx.HTTPError, ValueError) as exc:
                    record = ReplayRecord(row.id, model, fingerprints[model], error=f"{type(exc).__name__}: {exc}")
                sink.write(record.to_json() + "\n")
                sink.flush()
                on_done(record)

            async def measure(model: str, queue: list[PromptRow]) -> None:
                async with slots:

                    async def worker() -> None:
                        while queue:
                            await ask(queue.pop(0), model)

                    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))

            await asyncio.gather(*(measure(model, queue) for model, queue in todo.items() if queue))


def _drop_torn_last_line(path: Path) -> None:
    """Cut a partial last line (a run killed mid-write), which ``load_cache`` ignores, so the next record
    does not join it."""
    if not path.exists():
        return
    with path.open("rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def _error_message(resp: Any) -> str:
    """The OpenAI error envelope's message, else the body's text."""
    try:
        body = resp.json()
    except ValueError:
        return str(resp.text)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(error) if isinstance(error, str) else str(resp.text)


def replay(
    url: str,
    rows: Sequence[PromptRow],
    fingerprints: dict[str, str],
    cache_path: Path,
    *,
    concurrency: int = 4,
    models_at_once: int | None = None,
    timeout_s: float = 120.0,
    api_key: str | None = None,
    on_done: Callable[[ReplayRecord], None] = lambda record: None,
) -> dict[tuple[str, str], ReplayRecord]:
    """Run every missing (prompt, model) pair against ``url`` and return all successful records.

    ``concurrency`` requests per model; at most ``models_at_once`` models at a time (None: all).

    Returns (prompt id, model) → record for the current fingerprints; pairs that failed are missing
    (their errors are in the cache file and in the ``on_done`` callbacks).
    """
    asyncio.run(_replay(url, rows, fingerprints, cache_path, concurrency, models_at_once, timeout_s, api_key,
                        on_done))
    done = load_cache(cache_path)
    wanted = {(row.id, m): fp for row in rows for m, fp in fingerprints.items()}
    return {(pid, m): rec for (pid, m, fp), rec in done.items() if wanted.get((pid, m)) == fp}
