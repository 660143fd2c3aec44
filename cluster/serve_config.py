"""The Ray Serve config (``serve deploy``'s file, KubeRay's ``serveConfigV2``) that deploys a fleet file.

One application, ``cascade``, built by ``serve.app:build_app`` from the fleet file at ``fleet_path`` on
the cluster's nodes. Both launch configs use it, so a cluster starts the fleet the same way wherever
it runs; ``tests/cluster/test_launch_configs.py`` checks it with Ray's own Serve schema.
"""

from __future__ import annotations

from typing import Any

__all__ = ["APP_NAME", "FLEET_DIR", "FLEET_PATH", "serve_config"]

APP_NAME = "cascade"  # serve.deploy.APP_NAME: `cascade status` and `cascade down` look for it
FLEET_DIR = "/home/ray/cascade"  # the home of the Ray images' user; the fleet file is mounted here
FLEET_PATH = f"{FLEET_DIR}/models.yaml"


def serve_config(*, port: int = 8000, pip: list[str] | None = None) -> dict[str, Any]:
    """The Serve config; ``pip``: packages the application's runtime environment installs (KubeRay's pods
    start from a stock image; machines from ``ray up`` install cascade-serve in their setup instead).

    The HTTP proxies listen on every interface of each node so the cluster's own network (a Kubernetes
    Service, a load balancer) reaches them; the fleet's API keys (``CASCADE_API_KEYS``) guard them.
    """
    app: dict[str, Any] = {"name": APP_NAME, "route_prefix": "/", "import_path": "serve.app:build_app",
                           "args": {"config": FLEET_PATH}}
    if pip:
        app["runtime_env"] = {"pip": list(pip)}
    return {"proxy_location": "EveryNode", "http_options": {"host": "0.0.0.0", "port": port}, "applications": [app]}
