"""``scripts/fuzz_live.py``: how each answer is judged, and a whole campaign against a stdlib endpoint whose
routes misbehave in known ways (a plain-text 500, a hang, a shed), counted exactly.

Its run against the controller's routes over fake replicas, where it must find nothing, is in
``tests/serve/test_schema_fuzz.py``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scripts import fuzz_live
from scripts.fuzz_live import Answer, judge

KEY = "secret-fuzz-key"
HANG_S = 4.0  # how long the misbehaving endpoint's completions take
JSON = "application/json"


def _env(message: str = "bad", code: Any = 400) -> bytes:
    return json.dumps({"error": {"message": message, "type": "X", "param": None, "code": code}}).encode()


def _sse(*events: Any) -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()


@pytest.mark.parametrize(("route", "answer", "violations"), [
    ("POST /v1/chat/completions", Answer(200, JSON, body=b'{"choices": []}'), []),
    ("POST /v1/chat/completions", Answer(200, "text/plain", body=b"hello"), ["plain_text"]),
    ("POST /v1/chat/completions", Answer(200, JSON, body=b"hello"), ["plain_text"]),
    ("POST /v1/chat/completions", Answer(200, "text/event-stream", body=_sse({"choices": []}, "[DONE]")), []),
    ("POST /v1/chat/completions", Answer(200, "text/event-stream", body=_sse("oops", "[DONE]")), ["plain_text"]),
    ("POST /v1/chat/completions", Answer(200, "text/event-stream",
                                         body=_sse({"choices": []}, json.loads(_env("died", 500)), "[DONE]")),
     ["server_error"]),
    ("POST /v1/completions", Answer(400, JSON, body=_env()), []),
    ("POST /v1/completions", Answer(400, "text/plain", body=b"Bad Request"), ["plain_text"]),
    ("POST /v1/completions", Answer(400, JSON, body=_env("line one\nTraceback")), ["plain_text"]),
    ("POST /v1/completions", Answer(500, JSON, body=_env("internal server error", 500)), ["server_error"]),
    ("POST /v1/completions", Answer(500, "text/plain", body=b"Internal Server Error"), ["plain_text", "server_error"]),
    ("POST /v1/completions", Answer(503, JSON, "1", _env("at capacity (256 requests in flight)", "overloaded")), []),
    ("POST /v1/completions", Answer(503, JSON, None, _env("at capacity", "overloaded")), ["server_error"]),
    ("POST /v1/completions", Answer(503, JSON, "5", _env("model 'm' is at capacity; retry shortly", 503)), []),
    ("POST /v1/completions", Answer(503, JSON, "5", _env("model 'm' did not answer within 30 s", 503)),
     ["server_error"]),
    ("POST /v1/completions", Answer(503, JSON, "5", b'{"status": "unavailable"}'), ["plain_text", "server_error"]),
    ("GET /health", Answer(503, JSON, None, b'{"status": "unavailable"}'), ["server_error"]),
    ("GET /health", Answer(None, failure="hang"), ["hang"]),
    ("GET /health", Answer(None, failure="ConnectError"), ["transport_error"]),
    ("GET /health", Answer(None, failure="unsent"), []),
])
def test_each_answer_is_judged_against_the_issues_bar(route: str, answer: Answer, violations: list[str]) -> None:
    assert judge(route, answer) == violations


# A loose document of the five routes (the endpoint's own is tests/serve/test_openapi.py's).
DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "fake", "version": "0"},
    "paths": {
        **{path: {"post": {
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "type": "object", "required": ["model", field],
                "properties": {"model": {"type": "string"}, field: {"type": "string"},
                               "max_tokens": {"type": "integer"}, "n": {"type": "integer"}}}}}},
            "responses": {"200": {"description": "ok"}}}}
           for path, field in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt"))},
        "/v1/models": {"get": {"responses": {"200": {"description": "ok"}}}},
        "/v1/models/{model_id}": {"get": {
            "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "ok"}}}},
        "/health": {"get": {"responses": {"200": {"description": "ok"}}}},
    },
}


@pytest.fixture
def misbehaving_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Chat answers a plain-text 500, completions hang, a model card is a 503 shed; the rest is fine. Also
    the JSON bodies the endpoint received."""
    received: list[dict[str, Any]] = []

    class Endpoint(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, body: bytes, content_type: str = JSON, **headers: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up on a hang
                pass

        def do_GET(self) -> None:
            if self.path == "/openapi.json":
                self._answer(200, json.dumps(DOCUMENT).encode())
            elif self.path == "/v1/models":
                self._answer(200, b'{"object": "list", "data": [{"id": "cascade"}, {"id": "m1"}]}')
            elif self.path.startswith("/v1/models/"):
                self._answer(503, _env("the endpoint is at capacity", "overloaded"), Retry_After="1")
            else:
                self._answer(200, b'{"status": "ok"}')

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parsed = fuzz_live._json(raw)
            if isinstance(parsed, dict):
                received.append(parsed)
            if self.path == "/v1/completions":
                time.sleep(HANG_S)
                self._answer(200, b"{}")
            else:
                self._answer(500, b"Internal Server Error", "text/plain")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    server.block_on_close = False  # closed without waiting for the hanging handlers
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_campaign_counts_every_violation_and_fails(misbehaving_url: tuple[str, list[dict[str, Any]]],
                                                     tmp_path: Path) -> None:
    url, received = misbehaving_url
    out = tmp_path / "fuzz.json"
    # A timeout far above any real answer's time on a busy machine, and many hangs waited out at once.
    rc = fuzz_live.main(["--url", url, "--api-key", KEY, "--requests", "60", "--timeout-s", str(HANG_S / 2),
                         "--concurrency", "16", "--max-tokens", "3", "--max-n", "1", "--json", str(out)])
    assert rc == 1
    result = json.loads(out.read_text())
    by_route = result["by_route"]
    assert result["total"] == 60 == sum(sum(c.values()) for c in by_route.values())
    assert set(by_route) == set(fuzz_live.ROUTE_SHARES)
    chat = by_route["POST /v1/chat/completions"]
    assert chat == {"500": sum(chat.values())}
    assert by_route["POST /v1/completions"] == {"hang": sum(by_route["POST /v1/completions"].values())}
    assert result["violations"] == {"plain_text": chat["500"], "server_error": chat["500"],
                                    "hang": by_route["POST /v1/completions"]["hang"], "transport_error": 0}
    assert result["sheds"] == by_route["GET /v1/models/{model_id}"]["503"]
    assert by_route["GET /health"] == {"200": sum(by_route["GET /health"].values())}
    assert not result["ok"] and len(result["examples"]["plain_text"]) == min(chat["500"], fuzz_live.EXAMPLES)
    assert result["slowest"]["route"] != "POST /v1/completions"  # a hang is no answer
    assert KEY not in json.dumps({k: v for k, v in result.items() if k != "settings"})
    assert "api_key" not in result["settings"]
    # Generated bodies were adjusted: token counts capped, most named models served ones (an invalid
    # request may have no model, or one that is not a string: kept as generated).
    assert all(b["max_tokens"] <= 3 for b in received if isinstance(b.get("max_tokens"), int | float))
    assert all(b["n"] <= 1 for b in received if isinstance(b.get("n"), int | float))
    named = [b["model"] for b in received if isinstance(b.get("model"), str)]
    assert sum(m in ("cascade", "m1") for m in named) >= 0.7 * len(named) > 0


def test_no_endpoint_is_exit_code_2() -> None:
    assert fuzz_live.main(["--url", "http://127.0.0.1:9", "--requests", "1"]) == 2


def test_a_saved_campaign_carries_no_key_and_replays_the_same_requests(
        misbehaving_url: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """Made on two processes, saved without the key, replayed with it: the same requests arrive, and a
    keyed campaign replayed without a key is refused before anything is sent."""
    url, received = misbehaving_url
    saved = tmp_path / "probes.jsonl"
    common = ["--url", url, "--api-key", KEY, "--requests", "40", "--max-tokens", "3"]
    assert fuzz_live.main([*common, "--workers", "2", "--save-probes", str(saved)]) == 0
    lines = saved.read_text().splitlines()
    assert len(lines) == 40 and KEY not in saved.read_text() and not received
    records = [json.loads(line) for line in lines]
    assert {r["route"] for r in records} >= {"POST /v1/chat/completions", "POST /v1/completions"}
    assert any(r["keyed"] for r in records)

    assert fuzz_live.main(["--url", url, "--probes", str(saved), "--requests", "40"]) == 2
    assert not received

    out = tmp_path / "fuzz.json"
    rc = fuzz_live.main([*common, "--probes", str(saved), "--timeout-s", str(HANG_S / 2), "--concurrency", "16",
                         "--json", str(out)])
    result = json.loads(out.read_text())
    assert rc == 1 and result["total"] == 40
    # Every body that arrived was saved; every chat body saved arrived (chat answers at once; a completion
    # hangs, and one given up on may not have been read).
    def bodies(route: str = "") -> list[str]:
        decoded = [fuzz_live._json(base64.b64decode(r["content"])) for r in records
                   if r["method"] == "POST" and r["content"] is not None and r["route"].endswith(route)]
        return [json.dumps(b, sort_keys=True) for b in decoded if isinstance(b, dict)]

    arrived = [json.dumps(b, sort_keys=True) for b in received]
    assert set(arrived) <= set(bodies()) and set(bodies("/chat/completions")) <= set(arrived)
