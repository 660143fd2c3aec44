"""Smoke test of ``scripts/bench_load.py``'s attack mode against a stdlib endpoint that fails the way the
fleet did before the reliability fixes: a lone surrogate sent to a model is a 500 and takes the model out."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts import bench_load

KEY = "k"


def _parsed(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


@pytest.fixture
def fragile_url() -> Iterator[str]:
    """``/health`` lists one model, ``m1``; valid cascade requests with the key are 200 while ``m1`` is up and
    503 once a lone surrogate sent to ``m1`` took it out; every other request is a 400 (401 without the key)."""
    down = threading.Event()
    victim = {"model": "cascade", "messages": bench_load.CHAT, "max_tokens": 2, "temperature": 0.0}

    class Endpoint(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, body: dict[str, object]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._answer(200, {"models": {"m1": "starting" if down.is_set() else "ready"}})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                self._answer(401, {"error": {"code": "invalid_api_key"}})
            elif b"\\ud800" in raw and b'"m1"' in raw:
                down.set()
                self._answer(500, {"error": {"code": 500}})
            elif _parsed(raw) == victim:
                self._answer(503, {"error": {"code": 503}}) if down.is_set() else self._answer(200, {"choices": []})
            else:
                self._answer(400, {"error": {"code": 400}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_attack_phase_reports_the_victim_the_attackers_statuses_and_health(fragile_url: str) -> None:
    alone = asyncio.run(bench_load.attack_phase(fragile_url, api_key=KEY, rate_per_s=0, seconds=0.5, max_tokens=2))
    assert alone["attacker"] is None and alone["victim"]["success_rate"] == 1.0
    assert alone["health"]["always_ready"] and alone["health"]["polls"] >= 2
    assert alone["victim"]["other_load_cores"] >= 0

    attacked = asyncio.run(bench_load.attack_phase(fragile_url, api_key=KEY, rate_per_s=40, seconds=1.5,
                                                   max_tokens=2))
    attacker = attacked["attacker"]
    # Every input went to m1 and to cascade, in turn (15 x 2 a cycle): both lone surrogates to m1 twice.
    assert attacker["sent"] == 60 and set(attacker["by_input"]) == set(attacker["messages"]) == set(bench_load.HOSTILE)
    assert attacker["statuses"] == {"400": 56, "500": 4} and not attacker["all_4xx"]
    assert {(b["input"], b["model"], b["status"]) for b in attacker["not_4xx"]} == {
        ("lone surrogate", "m1", "500"), ("completions: lone surrogate", "m1", "500")}
    assert not attacked["health"]["always_ready"] and attacked["health"]["lapses"][0]["models"] == {"m1": "starting"}
    victim = attacked["victim"]
    assert victim["success_rate"] < 1 and victim["other"] == {"503": victim["requests"] - victim["accepted"]}
