"""``cascade up``'s checks before it touches the cluster (deploying for real: ``tests/serve/test_serving_e2e.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cascade_serve.main import main

REPO = Path(__file__).resolve().parents[2]


def test_up_refuses_to_drop_the_api_keys_of_a_running_fleet(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (reliability issue, finding 7): `cascade up` without CASCADE_API_KEYS redeployed a keyed
    fleet with authentication off. Now it refuses before touching Ray, unless told --no-auth."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import serve.deploy

    class Keyed(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keyed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    touched: list[str] = []

    def connect(*args: Any, **kwargs: Any) -> str:
        touched.append("ray")
        raise SystemExit(99)  # stands in for the cluster work a refusal must never reach

    monkeypatch.setattr(serve.deploy, "connect", connect)
    monkeypatch.delenv("CASCADE_API_KEYS", raising=False)
    port = str(server.server_address[1])
    try:
        assert main(["up", str(REPO / "models.cpu.yaml"), "--port", port]) == 2
        assert "requires API keys" in capsys.readouterr().err and touched == []
        with pytest.raises(SystemExit):  # told to: it goes on to the cluster
            main(["up", str(REPO / "models.cpu.yaml"), "--port", port, "--no-auth"])
        assert touched == ["ray"]
        monkeypatch.setenv("CASCADE_API_KEYS", "k1")
        with pytest.raises(SystemExit):  # keys given: nothing to protect
            main(["up", str(REPO / "models.cpu.yaml"), "--port", port])
    finally:
        server.shutdown()
        server.server_close()


def test_up_names_an_unreachable_ray_address_within_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    assert main(["up", str(REPO / "models.cpu.yaml"), "--address", f"127.0.0.1:{port}", "--port", "1"]) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert f"--address: no Ray cluster answers at 127.0.0.1:{port}" in err and "Traceback" not in err


def test_up_refuses_a_fleet_the_cluster_cannot_place_before_deploying(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The check itself runs on a real cluster in tests/serve/test_serving_e2e.py; here, that its refusal
    is one line per model and exit code 2, within --timeout."""
    import serve.deploy

    monkeypatch.setattr(serve.deploy, "connect", lambda *a, **k: "existing")
    monkeypatch.setattr(serve.deploy, "_requires_api_key", lambda url: False, raising=False)

    def deploy(*args: Any, **kwargs: Any) -> None:
        assert 0 < kwargs["timeout_s"] <= 30  # what is left of --timeout
        raise serve.deploy.PlacementError(["qwen2.5-72b: one replica needs 4 GPU on one node; the largest node "
                                           "offers 0 GPU"])

    monkeypatch.setattr(serve.deploy, "deploy", deploy)
    monkeypatch.setenv("CASCADE_API_KEYS", "k1")
    assert main(["up", str(REPO / "models.yaml"), "--port", "1", "--timeout", "30"]) == 2
    err = capsys.readouterr().err
    assert "the cluster cannot place this fleet:\n  qwen2.5-72b: one replica needs 4 GPU" in err
