"""Cascade routing (Dekoninck, Baader, Vechev, ICML 2025): the decision core, numpy/scipy plus numba.

Routing, cascades and cascade routing behind one decision interface, their fitting to an average
cost budget, and fast simulation over a table of queries (the paper's evaluation metrics live in
``evaluation.metrics``). The live search is compiled with numba on first use (``warm_up``), so
``import routing`` loads numpy and scipy only. Nothing here imports Ray, vLLM, torch, pydantic or
scikit-learn.
"""

from routing._base import NotFittedError, Policy, check_is_fitted
from routing._budget_margin import DEFAULT_BUDGET_MARGIN_SE, cost_margin, cost_standard_error
from routing._cascade_router import CascadeRouter, OptimalCascade
from routing._constant_lambda import (
    API_POLICY_NAMES,
    CONSTANT_LAMBDA_POLICIES,
    constant_lambda_policy,
    core_policy_name,
)
from routing._estimates import Estimates, EstimateSource, TableEstimates
from routing._expected_max import clark_expected_max, expected_max
from routing._lambda_search import BudgetUnreachableError, LambdaFit, fit_lambdas
from routing._routing_lp import Router
from routing._simulate import Rollout, rollout
from routing._state_quality import StateMemos
from routing._supermodel_search import Decision, search_supermodel, warm_up
from routing._threshold_cascade import ThresholdCascade
from routing._uncertainty_scale import (
    DEFAULT_SCALE_GRID,
    ScaledUncertainty,
    UncertaintyScaleFit,
    fit_uncertainty_scale,
)

__all__ = [
    "API_POLICY_NAMES",
    "BudgetUnreachableError",
    "CONSTANT_LAMBDA_POLICIES",
    "CascadeRouter",
    "DEFAULT_BUDGET_MARGIN_SE",
    "DEFAULT_SCALE_GRID",
    "Decision",
    "EstimateSource",
    "Estimates",
    "LambdaFit",
    "NotFittedError",
    "OptimalCascade",
    "Policy",
    "Rollout",
    "Router",
    "ScaledUncertainty",
    "StateMemos",
    "TableEstimates",
    "ThresholdCascade",
    "UncertaintyScaleFit",
    "check_is_fitted",
    "clark_expected_max",
    "constant_lambda_policy",
    "core_policy_name",
    "cost_margin",
    "cost_standard_error",
    "expected_max",
    "fit_lambdas",
    "fit_uncertainty_scale",
    "rollout",
    "search_supermodel",
    "warm_up",
]
