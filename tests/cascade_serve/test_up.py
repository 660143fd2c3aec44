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
