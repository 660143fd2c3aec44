"""Bringing a fleet file up on Ray Serve, inspecting it and taking it down (``cascade up/status/down``).

The processes are Ray's: ``cascade up`` connects to a running Ray cluster (``--address``, or
``RAY_ADDRESS``), or starts a local head node with Ray's own ``ray start`` when there is none, then
deploys the application of ``serve.app`` with ``serve.run`` and waits until the controller reports
every model ready. The app outlives the command, like ``serve deploy``; ``cascade down`` deletes it
(and with ``--stop-ray`` stops the local head node).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.config import FleetConfig

__all__ = [
    "APP_NAME", "ENGINE_ENV", "connect", "deploy", "fetch_health", "health_summary", "shutdown_app", "wait_ready",
]

APP_NAME = "cascade"

# The driver's own process needs these too on CPU machines (shared/docs/cpu-stack.md): Ray copies its
# environment into local workers.
ENGINE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "TORCHDYNAMO_DISABLE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def connect(address: str | None, *, start_local: bool, num_cpus: int | None = None) -> str:
    """Connect this process to Ray; returns how (``"existing"``, ``"started"`` or ``"in-process"``).

    ``start_local``: with no cluster at ``address``/``RAY_ADDRESS``, start a head node with ``ray
    start`` (it outlives this process); without it, start Ray inside this process (the demo).
    """
    import ray

    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    target = address or os.environ.get("RAY_ADDRESS")
    if target or _local_cluster_running():
        ray.init(address=target or "auto", logging_level="warning", log_to_driver=False)
        return "existing"
    if start_local:
        ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        cmd = [ray_bin, "start", "--head", "--disable-usage-stats", "--include-dashboard=false"]
        if num_cpus is not None:
            cmd.append(f"--num-cpus={num_cpus}")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`ray start --head` failed: {done.stderr.strip()[-500:]}")
        ray.init(address="auto", logging_level="warning", log_to_driver=False)
        return "started"
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    return "in-process"


def _local_cluster_running() -> bool:
    try:
        from ray._private.services import find_gcs_addresses

        return bool(find_gcs_addresses())
    except Exception:  # the helper moved between Ray versions: assume none
        return False


def deploy(fleet: FleetConfig, *, host: str, port: int, api_keys: list[str] | None = None) -> None:
    """Deploy the fleet's application (returns once Serve has created its deployments)."""
    import logging

    import ray.serve.llm  # noqa: F401  (creates Ray LLM's loggers, quieted below)
    from ray import serve

    from serve.app import fleet_app

    # Ray Serve and Ray LLM log each deployment's full options at INFO in the driver while the app is
    # built and deployed: keep the CLI readable (the replicas' own logs are untouched).
    for name in ["ray.serve", *logging.root.manager.loggerDict]:
        if name.startswith("ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    app = fleet_app(fleet, api_keys=api_keys)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def fetch_health(base_url: str) -> tuple[int, dict[str, Any]]:
    """``GET /health``: (status code, body); (0, {}) when nothing answers yet."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read())
        except ValueError:
            return err.code, {}
    except (OSError, ValueError):
        return 0, {}


def health_summary(body: dict[str, Any]) -> str:
    """A ``/health`` body in one line: ``tiny-small ready, tiny-large starting; cost model settling``."""
    text = ", ".join(f"{m} {v}" for m, v in (body.get("models") or {}).items())
    return text + (f"; cost model {body['cost_model']}" if body.get("cost_model") else "")


def wait_ready(
    base_url: str, timeout_s: float, on_poll: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Poll ``/health`` until every model is ready and the controller's startup cost measurements were
    redone on the complete fleet (``serve.probes``); ``TimeoutError`` naming the laggards otherwise."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        code, body = fetch_health(base_url)
        if on_poll is not None:
            on_poll(body)
        models = body.get("models") or {}
        if code == 200 and models and all(v == "ready" for v in models.values()):
            if body.get("cost_model") == "settled":
                return body
        time.sleep(2.0)
    waiting = [m for m, v in (body.get("models") or {}).items() if v != "ready"] or [
        "the cost model's settling probes" if body.get("cost_model") == "settling" else "the controller"]
    raise TimeoutError(f"not ready after {timeout_s:g} s: {', '.join(waiting)}")


def shutdown_app() -> bool:
    """Delete the cascade application; False when there was none."""
    from ray import serve

    apps = serve.status().applications
    if APP_NAME not in apps:
        return False
    serve.delete(APP_NAME)
    return True
