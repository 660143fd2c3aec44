"""Which models still have a live replica, read from Ray's actor table.

A replica killed outright (``kill -9``, the kernel's OOM killer, its node lost) drops out of Ray's alive
actors within a second or two. Serve notices later (its health check period), and until then its
router keeps requests for that model waiting for a replica, so a cascade stage would wait out its whole
timeout. The controller polls this instead (``CascadeController.start``) and takes such a model out of
the cascade at once; its probes bring it back once a new replica answers.

Serve names a replica actor ``SERVE_REPLICA::<app>#<deployment>#<replica id>``; matching the
deployment part alone keeps this right under any application name. Only actors in state ALIVE count:
once a node is lost, Serve at once creates the replacement replica's actor, which stays pending (its
placement group waits for a node) yet is already listed among the named actors; counting it kept a
model whose only replica was gone "ready", and every stage sent to it waited out its timeout.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["live_models"]

REPLICA_PREFIX = "SERVE_REPLICA::"


def live_models(deployments: Mapping[str, str]) -> set[str] | None:
    """The model ids (``deployments``: model id -> its Serve deployment name) with a live replica actor;
    None when no replica of any model is found, which means the naming is not what this expects (a
    Ray upgrade), not that every model died: the caller then learns nothing."""
    from serve.deploy import alive_actor_names  # Ray's internals stay behind serve.deploy

    names = [name for name in alive_actor_names() if name.startswith(REPLICA_PREFIX)]
    alive = {model for model, deployment in deployments.items() if any(f"#{deployment}#" in n for n in names)}
    return alive or None

