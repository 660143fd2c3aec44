"""The replay cache (later lines win, errors retried, a torn last line tolerated) and ``replay`` against a
local HTTP server that imitates the fleet's OpenAI endpoints."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fake_http import running, send_json

from calibration.prompt_set import PromptRow
from calibration.replay import ReplayRecord, load_cache, permanent_failures, replay
from estimators.stage import StageResult

# -- load_cache ----------------------------------------------------------------------------------------


# Every field a cache line has held since the cache exists, with a failed call's values.
_FLAT = {"text": "", "finish_reason": None, "prompt_tokens": 0, "completion_tokens": 0, "token_logprobs": [],
         "queue_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0, "error": None, "permanent": False}


def _line(prompt_id: str, model: str = "small", fp: str = "fp1", **fields: Any) -> str:
    """A cache line as every version wrote it: one flat JSON object."""
    return json.dumps({"prompt_id": prompt_id, "model": model, "fingerprint": fp, **_FLAT, **fields})


def _stage(model: str = "small", **fields: Any) -> StageResult:
    """A stage with nothing measured but ``fields``."""
    empty = {"prompt_tokens": 0, "completion_tokens": 0, "token_logprobs": (), "queue_s": 0.0, "prefill_s": 0.0,
             "decode_s": 0.0}
    return StageResult(model=model, **{**empty, **fields})


def _text(record: ReplayRecord) -> str:
    assert record.stage is not None
    return record.stage.text


def _write(path: Path, *lines: str, end: str = "\n") -> Path:
    path.write_text("\n".join(lines) + end)
    return path


def test_missing_cache_is_empty(tmp_path: Path) -> None:
    assert load_cache(tmp_path / "none.jsonl") == {}


def test_records_round_trip_by_prompt_model_and_fingerprint(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl",
                  _line("a", text="42", token_logprobs=[-0.5, -0.25], prefill_s=0.1, decode_s=0.2),
                  "", _line("a", model="large"), _line("a", fp="fp2", text="other"))
    cache = load_cache(path)
    assert set(cache) == {("a", "small", "fp1"), ("a", "large", "fp1"), ("a", "small", "fp2")}
    record = cache[("a", "small", "fp1")]
    assert record == ReplayRecord("a", "small", "fp1", stage=_stage(text="42", token_logprobs=(-0.5, -0.25),
                                                                    prefill_s=0.1, decode_s=0.2))
    assert record.stage is not None
    assert isinstance(record.stage.token_logprobs, tuple) and record.stage.gpu_s == pytest.approx(0.3)


def test_later_lines_win_and_errors_remove_successes(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.jsonl",
        _line("a", text="first"), _line("a", text="second"),  # a: the later success wins
        _line("b", text="ok"), _line("b", error="HTTP 500: boom"),  # b: a later failure removes it
        _line("c", error="HTTP 500: boom"), _line("c", text="retried"),  # c: retried successfully
        _line("d", error="ReadTimeout: "),  # d: only failed
    )
    cache = load_cache(path)
    assert {k[0]: _text(r) for k, r in cache.items()} == {"a": "second", "c": "retried"}


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    full = _line("b", text="b")
    path = _write(tmp_path / "c.jsonl", _line("a", text="a"), full[: len(full) // 2], end="")
    assert list(load_cache(path)) == [("a", "small", "fp1")]


@pytest.mark.parametrize("bad", ['{"prompt_id": "x", "mod', "[1, 2]", '{"prompt_id": "x", "model": "m"}',
                                 '{"prompt_id": "x", "model": "m", "fingerprint": "f", "colour": "red"}',
                                 '{"prompt_id": "x", "model": "m", "fingerprint": "f", "token_logprobs": null}'])
def test_a_bad_middle_line_is_an_error_naming_path_and_line(tmp_path: Path, bad: str) -> None:
    path = _write(tmp_path / "c.jsonl", _line("a"), bad, _line("b"))
    with pytest.raises(ValueError, match=rf"^{path}:2: not a replay record .*delete the file to start over"):
        load_cache(path)


@pytest.mark.parametrize("bad", ['{"prompt_id": "x", "model": "m", "fingerprint": "f", "prompt_tokens": "7"}',
                                 '{"prompt_id": "x", "model": "m", "fingerprint": "f", "decode_s": true}',
                                 '{"prompt_id": "x", "model": "m", "fingerprint": "f", "token_logprobs": ["a"]}',
                                 '{"prompt_id": 3, "model": "m", "fingerprint": "f"}',
                                 '{"prompt_id": "x", "model": "m", "fingerprint": "f", "permanent": 1}'])
def test_a_value_of_the_wrong_type_is_not_a_record(tmp_path: Path, bad: str) -> None:
    path = _write(tmp_path / "c.jsonl", _line("a"), bad, _line("b"))
    with pytest.raises(ValueError, match=rf"^{path}:2: not a replay record"):
        load_cache(path)


@pytest.mark.parametrize("record", [
    ReplayRecord("a", "large", "fp", stage=StageResult(
        model="large", prompt_tokens=7, completion_tokens=3, token_logprobs=(-0.25, -1e4), queue_s=0.005,
        prefill_s=0.02, decode_s=0.03, text="large: 42", finish_reason="length")),
    ReplayRecord("a", "large", "fp", error="HTTP 500: engine died"),
    ReplayRecord("a", "large", "fp", error="HTTP 400: too long", permanent=True),
])
def test_a_record_written_now_reads_back_as_the_flat_line_of_every_version(record: ReplayRecord) -> None:
    line = record.to_json()
    assert list(json.loads(line)) == ["prompt_id", "model", "fingerprint", *_FLAT]  # the layout on disk
    assert ReplayRecord.from_json(line) == record


def test_a_record_has_a_stage_or_an_error() -> None:
    with pytest.raises(ValueError, match="a stage or an error, never both or neither"):
        ReplayRecord("a", "small", "fp1")
    with pytest.raises(ValueError, match="a stage or an error, never both or neither"):
        ReplayRecord("a", "small", "fp1", stage=_stage(), error="HTTP 500: engine died")


def test_a_failed_call_has_no_stage_and_a_bare_line_an_empty_one() -> None:
    failed = ReplayRecord.from_json(_line("a", error="ReadTimeout: "))
    assert failed.stage is None and failed.error == "ReadTimeout: " and not failed.permanent
    bare = ReplayRecord.from_json(json.dumps({"prompt_id": "a", "model": "small", "fingerprint": "fp1"}))
    assert bare == ReplayRecord("a", "small", "fp1", stage=_stage())


# -- replay against a fake fleet -----------------------------------------------------------------------


class FakeFleet(ThreadingHTTPServer):
    """OpenAI-style /v1/chat/completions and /v1/completions; ``fail`` holds (prompt text, model) pairs that
    get ``fail_status`` on their first ``fail_times`` calls."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.fail: set[tuple[str, str]] = set()
        self.fail_times = 1
        self.fail_status = 500
        self.fail_body: bytes = json.dumps({"error": {"message": "engine died", "code": 500}}).encode()
        self.logprobs: list[float] = [-0.25, -0.5, -0.125]
        self.lock = threading.Lock()
        self.delay_s = 0.0  # how long each request takes, so requests overlap
        self.in_flight: Counter[str] = Counter()
        self.peak_per_model: Counter[str] = Counter()
        self.peak_models = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-response (an aborted replay) is not the server's error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def pairs(self) -> Counter[tuple[str, str]]:
        return Counter((_prompt_text(body), body["model"]) for _, body, _ in self.requests)


def _prompt_text(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"]) if "messages" in body else str(body["prompt"])


class _Handler(BaseHTTPRequestHandler):
    server: FakeFleet

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        key = (_prompt_text(body), body["model"])
        with server.lock:
            server.requests.append((self.path, body, dict(self.headers)))
            calls = server.pairs()[key]
            server.in_flight[body["model"]] += 1
            server.peak_per_model[body["model"]] = max(server.peak_per_model[body["model"]],
                                                       server.in_flight[body["model"]])
            server.peak_models = max(server.peak_models, sum(n > 0 for n in server.in_flight.values()))
        try:
            time.sleep(server.delay_s)
            self._answer(body, key, calls)
        finally:
            with server.lock:
                server.in_flight[body["model"]] -= 1

    def _answer(self, body: dict[str, Any], key: tuple[str, str], calls: int) -> None:
        server = self.server
        if key in server.fail and calls <= server.fail_times:
            self._send(server.fail_status, server.fail_body)
            return
        choice: dict[str, Any]
        if self.path == "/v1/chat/completions":
            choice = {"index": 0, "message": {"role": "assistant", "content": f"{body['model']}: {key[0]}"},
                      "logprobs": {"content": [{"token": "x", "logprob": lp} for lp in server.logprobs]},
                      "finish_reason": "stop"}
        elif self.path == "/v1/completions":
            choice = {"index": 0, "text": f"{body['model']}: {key[0]}", "finish_reason": "length",
                      "logprobs": {"token_logprobs": [None, *server.logprobs]}}
        else:
            self._send(404, b'{"detail": "Not Found"}')
            return
        response = {
            "choices": [choice], "model": body["model"],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            "metrics": {"queue_time_ms": 5.0, "time_to_first_token_ms": 20.0, "generation_time_ms": 30.0},
        }
        self._send(200, json.dumps(response).encode())

    def _send(self, status: int, payload: bytes) -> None:
        send_json(self, status, payload)


@pytest.fixture
def fleet() -> Iterator[FakeFleet]:
    with running(FakeFleet()) as server:
        yield server


ROWS = [PromptRow(id=f"q{i}", answer=str(i), grader="numeric", task="t", max_tokens=16,
                  messages=(("user", f"question {i}"),)) for i in range(4)]
FPS = {"small": "fp-small", "large": "fp-large"}


def test_replay_measures_every_pair(fleet: FakeFleet, tmp_path: Path) -> None:
    cache = tmp_path / "out" / "replay.jsonl"  # the folder is created
    seen: list[ReplayRecord] = []
    records = replay(fleet.url, ROWS, FPS, cache, concurrency=3, api_key="sk-test", on_done=seen.append)
    assert set(records) == {(r.id, m) for r in ROWS for m in FPS}
    assert fleet.pairs() == Counter({(f"question {i}", m): 1 for i in range(4) for m in FPS})
    assert len(seen) == 8 and all(r.error is None for r in seen)
    record = records[("q2", "large")]
    assert record == ReplayRecord(
        prompt_id="q2", model="large", fingerprint="fp-large",
        stage=StageResult(model="large", prompt_tokens=7, completion_tokens=3, token_logprobs=(-0.25, -0.5, -0.125),
                          queue_s=0.005, prefill_s=0.02, decode_s=0.03, text="large: question 2", finish_reason="stop"),
    )
    path, body, headers = next(r for r in fleet.requests if r[1]["model"] == "large" and _prompt_text(r[1]) ==
                               "question 2")
    assert path == "/v1/chat/completions" and body == ROWS[2].request_body("large")
    assert headers["Authorization"] == "Bearer sk-test"
    assert len(cache.read_text().splitlines()) == 8
    assert {k[:2]: v for k, v in load_cache(cache).items()} == records


@pytest.mark.parametrize("models_at_once", [1, None])
def test_each_model_gets_the_concurrency_and_models_at_once_bounds_the_overlap(
    fleet: FakeFleet, tmp_path: Path, models_at_once: int | None
) -> None:
    """A CPU fleet times one model at a time (its engines share the cores); a GPU fleet all at once."""
    fleet.delay_s = 0.05
    rows = [PromptRow(id=f"q{i}", answer="0", grader="numeric", task="t", max_tokens=4,
                      messages=(("user", f"question {i}"),)) for i in range(12)]
    records = replay(fleet.url, rows, FPS, tmp_path / "replay.jsonl", concurrency=3, models_at_once=models_at_once)
    assert len(records) == 24
    assert fleet.peak_per_model == Counter({"small": 3, "large": 3})
    assert fleet.peak_models == (1 if models_at_once == 1 else 2)


def test_failures_are_cached_as_errors_and_retried_on_resume(fleet: FakeFleet, tmp_path: Path) -> None:
    cache = tmp_path / "replay.jsonl"
    fleet.fail = {("question 1", "large"), ("question 3", "small")}
    seen: list[ReplayRecord] = []
    first = replay(fleet.url, ROWS, FPS, cache, concurrency=2, on_done=seen.append)
    assert set(first) == {(r.id, m) for r in ROWS for m in FPS} - {("q1", "large"), ("q3", "small")}
    errors = [r for r in seen if r.error is not None]
    assert sorted((r.prompt_id, r.model) for r in errors) == [("q1", "large"), ("q3", "small")]
    assert all(r.error == "HTTP 500: engine died" for r in errors)
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sum(line["error"] is not None for line in lines) == 2

    second = replay(fleet.url, ROWS, FPS, cache, concurrency=2)
    assert set(second) == {(r.id, m) for r in ROWS for m in FPS}
    counts = fleet.pairs()
    assert counts[("question 1", "large")] == counts[("question 3", "small")] == 2  # retried once
    assert sum(counts.values()) == 10  # the 6 successes were not requested again
    assert _text(second[("q1", "large")]) == "large: question 1"

    third = replay(fleet.url, ROWS, FPS, cache)  # nothing left to do
    assert len(fleet.requests) == 10 and third == second


def test_requests_a_model_rejects_are_recorded_and_not_asked_again(fleet: FakeFleet, tmp_path: Path) -> None:
    cache = tmp_path / "replay.jsonl"
    fleet.fail, fleet.fail_times, fleet.fail_status = {("question 2", "small")}, 99, 400
    fleet.fail_body = json.dumps({"error": {"message": "maximum context length is 512 tokens",
                                            "code": "context_length_exceeded"}}).encode()
    seen: list[ReplayRecord] = []
    first = replay(fleet.url, ROWS, FPS, cache, on_done=seen.append)
    assert ("q2", "small") not in first and len(first) == 7
    [rejected] = [r for r in seen if r.error is not None]
    assert rejected.permanent and "maximum context length" in rejected.error
    assert set(permanent_failures(cache)) == {("q2", "small", FPS["small"])}

    replay(fleet.url, ROWS, FPS, cache)  # the rejected pair is not asked again, nothing else is either
    assert len(fleet.requests) == 8
    # A new fingerprint (a longer context, say) asks again.
    replay(fleet.url, ROWS, {**FPS, "small": "changed"}, cache)
    assert fleet.pairs()[("question 2", "small")] == 2


def test_a_changed_fingerprint_is_measured_again(fleet: FakeFleet, tmp_path: Path) -> None:
    cache = tmp_path / "replay.jsonl"
    replay(fleet.url, ROWS, FPS, cache)
    records = replay(fleet.url, ROWS, {**FPS, "large": "fp-large-v2"}, cache)
    assert sum(fleet.pairs().values()) == 8 + 4  # only the retrained model's pairs
    assert {r.fingerprint for (_, m), r in records.items() if m == "large"} == {"fp-large-v2"}
    # Records of other fingerprints stay in the cache but are not returned.
    assert ("q0", "large", "fp-large") in load_cache(cache)


def test_rows_not_asked_for_are_not_returned(fleet: FakeFleet, tmp_path: Path) -> None:
    cache = tmp_path / "replay.jsonl"
    replay(fleet.url, ROWS, FPS, cache)
    records = replay(fleet.url, ROWS[:2], {"small": "fp-small"}, cache)
    assert set(records) == {("q0", "small"), ("q1", "small")}
    assert len(fleet.requests) == 8


def test_completions_rows_read_token_logprobs(fleet: FakeFleet, tmp_path: Path) -> None:
    rows = [PromptRow(id="c", answer="x", grader="exact_match", task="t", max_tokens=4, prompt="2+2=")]
    fleet.logprobs = [-0.5, float("-inf"), float("nan")]  # a forced token; JSON -Infinity and NaN
    record = replay(fleet.url, rows, {"small": "fp"}, tmp_path / "c.jsonl")[("c", "small")]
    assert fleet.requests[0][0] == "/v1/completions" and fleet.requests[0][1] == rows[0].request_body("small")
    assert record.stage is not None
    assert record.stage.text == "small: 2+2=" and record.stage.finish_reason == "length"
    assert record.stage.token_logprobs == (-0.5, -1e4, -1e4)  # the prompt's None dropped, non-finite values floored
    assert load_cache(tmp_path / "c.jsonl")[("c", "small", "fp")] == record  # and the cache stays valid JSON


def test_an_unreachable_fleet_records_errors(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()  # nothing listens there now
    seen: list[ReplayRecord] = []
    assert replay(url, ROWS[:2], FPS, tmp_path / "c.jsonl", timeout_s=5, on_done=seen.append) == {}
    assert len(seen) == 4 and all(r.error and r.error.startswith("ConnectError") for r in seen)


def test_a_non_json_error_body_is_recorded(fleet: FakeFleet, tmp_path: Path) -> None:
    fleet.fail = {("question 0", "small")}
    fleet.fail_body = b"Internal Server Error"
    seen: list[ReplayRecord] = []
    records = replay(fleet.url, ROWS[:1], FPS, tmp_path / "c.jsonl", on_done=seen.append)
    assert set(records) == {("q0", "large")}
    (error,) = [r.error for r in seen if r.error]
    assert error is not None


def test_an_error_body_with_a_string_error_is_recorded(fleet: FakeFleet, tmp_path: Path) -> None:
    fleet.fail = {("question 0", "small")}
    fleet.fail_status = 503
    fleet.fail_body = json.dumps({"error": "overloaded"}).encode()
    records = replay(fleet.url, ROWS[:1], FPS, tmp_path / "c.jsonl")
    assert set(records) == {("q0", "large")}


def test_resume_after_a_torn_last_line(fleet: FakeFleet, tmp_path: Path) -> None:
    """A run killed mid-write leaves a partial line without a newline; the next run must still work."""
    cache = tmp_path / "replay.jsonl"
    torn = ReplayRecord("q0", "small", "fp-small", stage=_stage(text="small: question 0")).to_json()
    cache.write_text(torn[:30])
    records = replay(fleet.url, ROWS, FPS, cache)
    assert set(records) == {(r.id, m) for r in ROWS for m in FPS}
    assert len(load_cache(cache)) == 8
