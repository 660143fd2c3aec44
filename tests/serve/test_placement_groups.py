"""Which deployments' replicas wait for a node: read from Ray's placement-group table (the real-stack
counterpart is ``test_multinode_e2e.py``, where a lost node leaves the replacement replica's group waiting)."""

from __future__ import annotations

from serve.deploy import waiting_placement_groups


def test_groups_waiting_for_resources_are_counted_per_deployment_of_the_cascade_app() -> None:
    table = {
        "a": {"name": "SERVE_REPLICA::cascade#model:tiny-large#abc123", "state": "PENDING"},
        "b": {"name": "SERVE_REPLICA::cascade#model:tiny-large#def456", "state": "RESCHEDULING"},
        "c": {"name": "SERVE_REPLICA::cascade#model:tiny-small#aaa111", "state": "CREATED"},
        "d": {"name": "SERVE_REPLICA::cascade#model:tiny-small#bbb222", "state": "REMOVED"},
        "e": {"name": "SERVE_REPLICA::other#model:x#ccc333", "state": "PENDING"},  # another application
        "f": {"name": "", "state": "PENDING"},  # a group of someone else's, unnamed
        "g": {"name": "SERVE_REPLICA::cascade#model:org/name#with#hash#ddd444", "state": "PENDING"},
    }
    assert waiting_placement_groups(table) == {"model:tiny-large": 2, "model:org/name#with#hash": 1}


def test_nothing_waits_on_an_empty_table() -> None:
    assert waiting_placement_groups({}) == {}
