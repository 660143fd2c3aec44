"""Can the cluster ever hold the fleet? A check on the cluster's node sizes, before anything is deployed.

A replica that no node can hold waits for its placement group forever: Serve keeps it pending, and the
replica it was to replace may already be gone. So ``cascade up`` asks first, from what Ray's own
placement will ask for (each replica's placement-group bundles and strategy, as Ray Serve LLM derives
them from the model's engine settings) and each live node's total resources, and refuses with one line
per model that cannot be placed: what one replica needs and what the largest node offers.

Totals, not what is free now: resources held by the fleet being replaced come back when its replicas
stop. Pure data in, messages out (no Ray here); ``serve.deploy`` gathers both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ReplicaDemand", "unplaceable"]

Resources = Mapping[str, float]
_EPS = 1e-9  # Ray's fractional resources are fixed-point: compare with a little room


@dataclass(frozen=True, slots=True)
class ReplicaDemand:
    """What one model asks of the cluster: per replica, its placement group's bundles and strategy."""

    bundles: tuple[Resources, ...]
    strategy: str  # Ray's placement strategies: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    replicas: int  # replicas that must run (the minimum when it autoscales)


def _fits(need: Resources, node: Resources) -> bool:
    return all(amount <= node.get(name, 0.0) + _EPS for name, amount in need.items() if amount > 0)


def _total(bundles: Sequence[Resources]) -> dict[str, float]:
    out: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            out[name] = out.get(name, 0.0) + float(amount)
    return out


def _describe(resources: Resources) -> str:
    parts = []
    for name, amount in sorted(resources.items()):
        if amount <= 0:
            continue
        if name.startswith("accelerator_type:"):
            parts.append(name.removeprefix("accelerator_type:"))  # a label, its amount is a token
        elif name == "memory":
            parts.append(f"{amount / 2**30:.1f} GiB memory")
        else:
            parts.append(f"{amount:g} {name}")
    return ", ".join(parts) or "nothing"


def _offers(node: Resources, need: Resources) -> str:
    """What ``node`` has of each resource in ``need``, zeros and missing accelerator types included."""
    parts = []
    for name in sorted(n for n, a in need.items() if a > 0):
        amount = node.get(name, 0.0)
        if name.startswith("accelerator_type:"):
            label = name.removeprefix("accelerator_type:")
            parts.append(label if amount > 0 else f"no {label}")
        elif name == "memory":
            parts.append(f"{amount / 2**30:.1f} GiB memory")
        else:
            parts.append(f"{amount:g} {name}")
    return ", ".join(parts)


def _largest(nodes: Sequence[Resources], need: Resources) -> Resources:
    """The node closest to holding ``need``: the most of the resource it lacks most, for the message."""
    names = [n for n, a in need.items() if a > 0 and not n.startswith("accelerator_type:")]

    def score(node: Resources) -> tuple[float, ...]:
        return tuple(node.get(n, 0.0) / need[n] for n in sorted(names, key=lambda n: node.get(n, 0.0) / need[n]))

    return max(nodes, key=score) if nodes else {}


def unplaceable(demands: Mapping[str, ReplicaDemand], nodes: Sequence[Resources]) -> list[str]:
    """One line per model whose replicas no node (or node set) of the cluster can hold, then one for
    the fleet as a whole if its replicas together exceed the cluster; empty when the fleet can fit.

    Parameters
    ----------
    demands : mapping of str to ReplicaDemand
        Model id (or deployment name) -> what its replicas ask for.
    nodes : sequence of mappings
        Each live node's total resources, as Ray reports them (``CPU``, ``GPU``, ``memory``,
        ``accelerator_type:H100``, custom ones).
    """
    problems = []
    for model, demand in demands.items():
        whole = _total(demand.bundles)
        if demand.strategy == "STRICT_PACK":
            if not any(_fits(whole, node) for node in nodes):
                largest = _largest(nodes, whole)
                problems.append(f"{model}: one replica needs {_describe(whole)} on one node; the largest node "
                                f"offers {_offers(largest, whole)}")
            continue
        for bundle in demand.bundles:
            if not any(_fits(bundle, node) for node in nodes):
                largest = _largest(nodes, bundle)
                problems.append(f"{model}: one replica needs a bundle of {_describe(bundle)} on one node; the "
                                f"largest node offers {_offers(largest, bundle)}")
                break
        else:
            if demand.strategy == "STRICT_SPREAD":
                biggest = max(demand.bundles, key=lambda b: sum(b.values()))
                hosts = sum(_fits(biggest, node) for node in nodes)
                if hosts < len(demand.bundles):
                    problems.append(f"{model}: one replica spreads {len(demand.bundles)} bundles over as many "
                                    f"nodes; {hosts} node(s) can hold one")
    if problems:
        return problems
    fleet = _total([b for d in demands.values() for _ in range(d.replicas) for b in d.bundles])
    cluster = _total(nodes)
    short = {name: amount for name, amount in fleet.items()
             if amount > cluster.get(name, 0.0) + _EPS and not name.startswith("accelerator_type:")}
    if short:
        problems.append(f"the fleet's replicas together need {_describe(short)}; the cluster has "
                        f"{_offers(cluster, short)}")
    return problems
