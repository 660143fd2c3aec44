"""Bringing a fleet file up on Ray Serve, inspecting it and taking it down (``cascade up/status/down``).

The processes are Ray's: ``cascade up`` connects to a running Ray cluster (``--address``, or
``RAY_ADDRESS``), or starts a local head node with Ray's own ``ray start`` when there is none, then
deploys the application of ``serve.app`` with ``serve.run`` and waits until the controller reports
every model ready. The app outlives the command, like ``serve deploy``; ``cascade down`` deletes it
(and with ``--stop-ray`` stops the local head node).
"""

from __future__ import annotations

import json
import logging
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
    "APP_NAME", "ENGINE_ENV", "PlacementError", "check_placement", "check_reachable", "connect", "deploy",
    "deploy_ray_ingress", "fetch_health", "health_summary", "init_single_machine", "shutdown_app", "wait_deployed",
    "wait_ready",
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


# Ray's switch for a one-machine cluster: its node address becomes the loopback one, so the metrics
# exporter (unauthenticated) and the other per-node servers listen on 127.0.0.1, not on every interface.
# Ray reads it when it picks a node's address; Ray names it for Windows and macOS, where it is off by
# default, but it holds on Linux too. Only for clusters this command starts itself: a multi-node
# cluster is started with `ray start` by its operator, who passes --address. A driver joining such a
# cluster needs the switch too (Ray would otherwise turn the recorded 127.0.0.1 into the machine's
# address): ``connect`` sets it for a loopback address, and Ray's own CLI needs it in its environment.
SINGLE_MACHINE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def init_single_machine(**init_kwargs: Any) -> None:
    """``ray.init`` on one machine: a new Ray inside this process, or a driver joining a local
    one-machine cluster (``address`` on the loopback), its servers on the loopback address.

    Ray reads the switch into a module constant when it is first imported, which may be before this
    call (a test session, a script): the constant is set for the start and restored after.
    """
    import ray
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**init_kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _join(address: str) -> None:
    """Join the cluster at ``address`` (``auto``: the local one Ray recorded) as a driver."""
    import ray
    from ray._private.services import get_ray_address_from_environment

    recorded = get_ray_address_from_environment(address, None) if address == "auto" else address
    host = (recorded or "").rpartition(":")[0].strip("[]")
    if host in _LOOPBACK:
        # The address as given: Ray finds the local cluster's token itself only for "auto".
        init_single_machine(address=address, logging_level="warning", log_to_driver=False)
    else:
        ray.init(address=address, logging_level="warning", log_to_driver=False)


def connect(address: str | None, *, start_local: bool, num_cpus: int | None = None) -> str:
    """Connect this process to Ray; returns how (``"existing"``, ``"started"`` or ``"in-process"``).

    ``start_local``: with no cluster at ``address``/``RAY_ADDRESS``, start a head node with ``ray
    start`` (it outlives this process); without it, start Ray inside this process (the demo).
    """

    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    target = address or os.environ.get("RAY_ADDRESS")
    if target or _local_cluster_running():
        _join(target or "auto")
        return "existing"
    if start_local:
        ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        cmd = [ray_bin, "start", "--head", "--disable-usage-stats", "--include-dashboard=false"]
        if num_cpus is not None:
            cmd.append(f"--num-cpus={num_cpus}")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env={**os.environ, **SINGLE_MACHINE_ENV})
        if done.returncode != 0:
            raise RuntimeError(f"`ray start --head` failed: {done.stderr.strip()[-500:]}")
        _join("auto")
        return "started"
    init_single_machine(num_cpus=num_cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    return "in-process"


def _local_cluster_running() -> bool:
    try:
        from ray._private.services import find_gcs_addresses

        return bool(find_gcs_addresses())
    except Exception:  # the helper moved between Ray versions: assume none
        return False


def node_names(report: list[dict[str, Any]]) -> list[str]:
    """A name for each node of ``ray.nodes()``: its address, and where several raylets share one (nodes
    of one machine) the start of its node id too."""
    names = [str(n.get("NodeManagerAddress") or n.get("NodeID", "?")[:8]) for n in report]
    return [name if names.count(name) == 1 else f"{name}/{str(n.get('NodeID', '?'))[:6]}"
            for name, n in zip(names, report, strict=True)]


class PlacementError(ValueError):
    """The cluster can never hold the fleet: one line per model at fault (``cluster.feasibility``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the cluster cannot place this fleet:\n  " + "\n  ".join(problems))
        self.problems = problems


def check_placement(fleet: FleetConfig) -> FleetConfig:
    """The fleet as it will be deployed on the connected cluster: its placement plan (``cluster.plan``:
    memory, tensor parallel, shared GPUs) made on the live nodes and written in. Raises
    ``PlacementError`` before anything is deployed, so a running fleet is left as it is, when the plan
    refuses a model or no node can hold a replica as Serve will ask for it (``cluster.feasibility``)."""
    import ray

    from cluster.feasibility import unplaceable
    from cluster.nodes import NodeSpecError, node_from_resources
    from cluster.plan import PlanError, apply_plan, plan_fleet
    from serve.app import replica_demands

    alive = [node for node in ray.nodes() if node.get("Alive")]
    try:
        nodes = [node_from_resources(name, n["Resources"]) for name, n in zip(node_names(alive), alive, strict=True)]
    except NodeSpecError as exc:
        # A GPU kind the planner does not know: no memory plan, but Ray's own resource check still runs.
        logging.getLogger(__name__).warning("no placement plan: %s", exc)
    else:
        try:
            fleet = apply_plan(fleet, plan_fleet(fleet, nodes))
        except PlanError as exc:
            raise PlacementError(exc.problems) from None
    problems = unplaceable(replica_demands(fleet), [dict(n["Resources"]) for n in alive])
    if problems:
        raise PlacementError(problems)
    return fleet


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A ``host:port`` Ray address that does not answer is a clear error within seconds, not a long
    hang in ``ray.init`` (other forms, ``auto`` and ``ray://``, are left to Ray)."""
    import socket

    target = address or os.environ.get("RAY_ADDRESS")
    if not target or target in ("auto", "local") or "://" in target or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--address: {target!r} is not host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except OSError as exc:
        raise ValueError(f"--address: no Ray cluster answers at {target} ({exc.strerror or exc})") from None


DEPLOY_TIMEOUT_S = 900.0


def deploy(fleet: FleetConfig, *, host: str, port: int, api_keys: list[str] | None = None,
           timeout_s: float = DEPLOY_TIMEOUT_S, on_poll: Callable[[str], None] | None = None) -> None:
    """Deploy the fleet's application and wait until Serve runs it (every deployment of the new version
    healthy), for at most ``timeout_s``. Raises ``PlacementError`` first, leaving any running fleet
    untouched, when the cluster can never place it; ``TimeoutError`` naming what Serve still waits for
    (a replica that cannot be scheduled, say) past the deadline. ``on_poll`` gets a line of progress."""
    import logging

    import ray.serve.llm  # noqa: F401  (creates Ray LLM's loggers, quieted below)
    from ray import serve

    from serve.app import fleet_app

    # Ray Serve and Ray LLM log each deployment's full options at INFO in the driver while the app is
    # built and deployed: keep the CLI readable (the replicas' own logs are untouched).
    for name in ["ray.serve", *logging.root.manager.loggerDict]:
        if name.startswith("ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    fleet = check_placement(fleet)
    app = fleet_app(fleet, api_keys=api_keys)
    serve.start(proxy_location=_proxy_location(), http_options={"host": host, "port": port})
    # serve.run would wait for every replica with no deadline of its own; the caller waits instead.
    serve.run_many([serve.RunTarget(app, name=APP_NAME, route_prefix="/")],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    wait_deployed(timeout_s, on_poll)


def deploy_ray_ingress(fleet: FleetConfig, *, app_name: str, route_prefix: str,
                       env_vars: dict[str, str] | None = None) -> None:
    """Deploy Ray Serve LLM's own OpenAI ingress, as application ``app_name`` at ``route_prefix``, in front of
    the replicas of the running fleet (``serve.app.ray_ingress_app``); returns once it runs."""
    from ray import serve

    from serve.app import ray_ingress_app

    serve.run(ray_ingress_app(fleet, APP_NAME, env_vars=env_vars), name=app_name, route_prefix=route_prefix)


def _proxy_location() -> str | None:
    """Serve's HTTP proxy on the head only when the cluster's nodes are raylets of one host; Serve's
    default (a proxy on every node) otherwise.

    Every node's proxy binds the same port, so on one host the kernel spreads new connections over all
    of them; when a node is lost, the connections its proxy had accepted are dropped with it. On a real
    cluster each node has its own address and a load balancer in front, which is what the default is for.
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    hosts = {n.get("NodeManagerAddress") for n in alive}
    return "HeadOnly" if len(alive) > 1 and len(hosts) == 1 else None


def alive_actor_names() -> list[str]:
    """The names of the actors Ray's GCS holds ALIVE (filtered there, one call, no dashboard needed).

    ``ray._private.state.actors`` is Ray's own accessor of the GCS actor table (documented "for debugging";
    the public state API needs the dashboard, which a cluster may run without). If a Ray upgrade moves
    it, the named actors stand in: they may include a replica still pending, which is what this avoids,
    but never miss a live one.
    """
    import ray

    try:
        from ray._private.state import actors

        table = actors(actor_state_name="ALIVE")
    except (ImportError, AttributeError, TypeError):
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return [str(info.get("Name") or "") for info in table.values()]


_WAITING_STATES = ("PENDING", "RESCHEDULING")  # Ray's placement-group states of a group not (yet) placed


def waiting_placement_groups(table: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Per deployment of the cascade application, its replicas' placement groups that wait for resources
    (``ray.util.placement_group_table()`` in; Serve names a replica's group as the replica actor,
    ``SERVE_REPLICA::<app>#<deployment>#<replica id>``)."""
    prefix = f"SERVE_REPLICA::{APP_NAME}#"
    out: dict[str, int] = {}
    for group in table.values():
        name = str(group.get("name") or "")
        if name.startswith(prefix) and group.get("state") in _WAITING_STATES:
            deployment = name[len(prefix):].rpartition("#")[0]
            out[deployment] = out.get(deployment, 0) + 1
    return out


def placement_line() -> str:
    """``placement groups waiting: model:tiny-large 1``, or "" when none waits (read from Ray's GCS)."""
    import ray

    try:
        waiting = waiting_placement_groups(ray.util.placement_group_table())
    except Exception:  # a GCS hiccup must not end a wait that is only reporting
        return ""
    return ("placement groups waiting: " + ", ".join(f"{d} {n}" for d, n in sorted(waiting.items()))
            if waiting else "")


def wait_deployed(timeout_s: float, on_poll: Callable[[str], None] | None = None) -> None:
    """Poll Serve until the application runs; ``ValueError`` when Serve gave up on it, ``TimeoutError``
    with Serve's own words on each deployment still pending (its "cannot be scheduled" messages name the
    resources a replica waits for) past ``timeout_s``."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(APP_NAME)
        status = str(getattr(app, "status", "MISSING"))
        if status.endswith("RUNNING"):
            return
        pending = {} if app is None else {
            name: f"{d.status}: {d.message}".strip(": ") for name, d in app.deployments.items()
            if not str(d.status).endswith("HEALTHY")}
        if status.endswith("DEPLOY_FAILED"):
            raise ValueError(f"Serve could not deploy the fleet: {app.message if app else ''} "
                             + "; ".join(f"{n}: {m}" for n, m in pending.items()))
        if on_poll is not None:
            groups = placement_line()
            on_poll("deploying: " + (", ".join(f"{n} {m.split(':')[0].lower()}" for n, m in pending.items())
                                     or status.lower()) + (f"; {groups}" if groups else ""))
        if time.monotonic() >= deadline:
            detail = "; ".join(f"{n}: {m}" for n, m in pending.items()) or status
            raise TimeoutError(f"the fleet was not deployed within {timeout_s:g} s: {detail}")
        time.sleep(1.0)


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
