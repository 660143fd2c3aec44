"""Policies with one constant lambda at every step: what a serving controller runs per request.

The fitted policies (``max_expected_cost``) choose lambdas per step on a validation set; a live
request instead names a policy and one multiplier (from the fleet file, a calibrated budget, or a
per-request knob). This maps the pair to a ready policy, the same way offline (calibration curves)
and online (the controller), so a lambda means the same thing in both.
"""

from __future__ import annotations

from routing._base import Policy
from routing._cascade_router import CascadeRouter, OptimalCascade
from routing._threshold_cascade import ThresholdCascade

__all__ = ["API_POLICY_NAMES", "CONSTANT_LAMBDA_POLICIES", "constant_lambda_policy", "core_policy_name"]

# The one list of policy names, simplest first (the order reports and fits use).
CONSTANT_LAMBDA_POLICIES = ("routing", "threshold_cascade", "optimal_cascade", "cascade_routing")
# The names users write (fleet file ``cascade.policy``, the request knob ``cascade.policy``) -> the
# names above. ``cascade`` is the optimal cascade: the only cascade a user would choose to serve.
# ``cluster.config`` spells the same keys as a Literal (it imports nothing of the project); a test
# keeps the two equal.
API_POLICY_NAMES: dict[str, str] = {
    "routing": "routing",
    "cascade": "optimal_cascade",
    "threshold_cascade": "threshold_cascade",
    "cascade_routing": "cascade_routing",
}


def core_policy_name(api_name: str) -> str:
    """The policy a user-facing name (``API_POLICY_NAMES``) stands for."""
    try:
        return API_POLICY_NAMES[api_name]
    except KeyError:
        raise ValueError(f"unknown policy {api_name!r}; choose from {list(API_POLICY_NAMES)}") from None


def constant_lambda_policy(name: str, lam: float, max_depth: int) -> Policy:
    """The policy ``name`` with multiplier ``lam`` at every one of its ``max_depth`` steps.

    ``routing`` is cascade routing limited to one model (one step); ``threshold_cascade`` reads
    ``lam`` as 1 - its quality threshold (in [0, 1]); the others as quality per unit cost.
    """
    if max_depth < 1:
        raise ValueError(f"max_depth must be at least 1, got {max_depth!r}")
    if name == "routing":
        return CascadeRouter.from_lambdas([lam], max_depth=1)
    if name == "threshold_cascade":
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"threshold_cascade's lambda is 1 - a quality threshold, in [0, 1]; got {lam!r}")
        return ThresholdCascade.from_lambdas([lam] * max_depth, max_depth=max_depth)
    if name == "optimal_cascade":
        return OptimalCascade.from_lambdas([lam] * max_depth, max_depth=max_depth)
    if name == "cascade_routing":
        return CascadeRouter.from_lambdas([lam] * max_depth, max_depth=max_depth)
    raise ValueError(f"unknown policy {name!r}; choose from {list(CONSTANT_LAMBDA_POLICIES)}")
