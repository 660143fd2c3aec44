"""Fitting the per-step multipliers lambda and the tie-break probability gamma to a cost budget (spec §1.4).

Every evaluation simulates the whole policy on validation queries and scores ground-truth quality and
cost (``routing._simulate.rollout``). Strategies:

- ``"constant"``: one lambda for every step, by bracketing then bisection on the average cost, which
  falls as lambda rises. Returns the smallest lambda found within budget.
- ``"per_step"``: the constant fit, then a seeded local random search over per-step multipliers
  (log-normal steps around the incumbent), accepting a vector only if it is within budget and raises
  validation quality. It stands in for the reference's hyperopt search, whose bound bug made it a
  search over [0, max_lambda] anyway (spec §8 item 5), at a fixed, small number of evaluations.

Budget checks are ``cost <= budget`` everywhere, up to one ulp of summation order (the reference
mixes < and <=, spec §8 item 6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["BUDGET_RTOL", "BudgetUnreachableError", "LambdaFit", "Strategy", "fit_lambdas"]

FloatArray = NDArray[np.float64]
Strategy = Literal["constant", "per_step"]
# evaluate(lambdas, expensive_ties) -> (mean cost, mean quality) on the validation set.
Evaluate = Callable[[FloatArray, bool], tuple[float, float]]

_LAMBDA_CEILING = 1e12
# An average cost equal to the budget up to summation order (one ulp) is within budget: the same
# mean summed along another axis can differ in the last bit.
BUDGET_RTOL = 1e-12


class BudgetUnreachableError(ValueError):
    """The budget is below the cheapest average cost the policy reaches on the validation set.

    ``cheapest_cost`` is that cost (the policy at the largest lambda tried). With estimated costs it
    can exceed the cheapest model's average: where two models cost nearly the same, the estimates rank
    them the other way on some queries, so even an infinite lambda does not always pick the cheaper.
    """

    def __init__(self, message: str, *, cheapest_cost: float) -> None:
        super().__init__(message)
        self.cheapest_cost = cheapest_cost


@dataclass(frozen=True, slots=True)
class LambdaFit:
    """Result of a fit: the multipliers, gamma, and the validation cost/quality they reach.

    ``cost`` and ``quality`` are with cheapest tie-breaks; ``cost_expensive_ties`` with the dearest,
    and gamma mixes the two so the expected cost meets the budget.
    """

    lambdas: FloatArray
    gamma: float
    cost: float
    quality: float
    cost_expensive_ties: float
    n_evaluations: int


def fit_lambdas(
    evaluate: Evaluate,
    *,
    n_steps: int,
    budget: float,
    lambda_scale: float,
    strategy: Strategy = "per_step",
    first_free_step: int = 0,
    n_bisect: int = 40,
    rtol: float = 1e-4,
    n_search: int = 24,
    rng: np.random.Generator,
) -> LambdaFit:
    """Fit lambdas (shape (n_steps,)) and gamma so that the validation cost stays within ``budget``.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(lambdas, expensive_ties) -> (mean_cost, mean_quality)``.
    lambda_scale : float
        A lambda at which cost clearly dominates (e.g. 1 / mean cost): the first bracket.
    first_free_step : int
        Steps before it have no effect on the policy (a cascade always runs its first model), so the
        per-step search leaves them alone.
    """
    if not np.isfinite(budget) or budget < 0:
        raise ValueError(f"budget must be a finite non-negative number, got {budget!r}")
    calls = 0

    def run(lambdas: FloatArray, expensive: bool = False) -> tuple[float, float]:
        nonlocal calls
        calls += 1
        return evaluate(lambdas, expensive)

    limit = budget * (1.0 + BUDGET_RTOL)
    ones = np.ones(n_steps)
    cost0, quality0 = run(0.0 * ones)
    if cost0 <= limit:
        best_lam, best_cost, best_quality = 0.0 * ones, cost0, quality0
    else:
        hi = max(float(lambda_scale), 1e-12)
        cost_hi, quality_hi = run(hi * ones)
        while cost_hi > limit:
            hi *= 4.0
            if hi > _LAMBDA_CEILING:
                raise BudgetUnreachableError(
                    f"budget {budget:.6g} is below the cheapest average cost this policy reaches on the "
                    f"validation set ({cost_hi:.6g} at lambda={hi / 4:.3g})",
                    cheapest_cost=cost_hi,
                )
            cost_hi, quality_hi = run(hi * ones)
        lo = 0.0
        for _ in range(n_bisect):
            if hi - lo <= rtol * hi:
                break
            mid = 0.5 * (lo + hi)
            cost_mid, quality_mid = run(mid * ones)
            if cost_mid <= limit:
                hi, cost_hi, quality_hi = mid, cost_mid, quality_mid
            else:
                lo = mid
        best_lam, best_cost, best_quality = hi * ones, cost_hi, quality_hi

    free = n_steps - first_free_step
    if strategy == "per_step" and free > 1 and np.any(best_lam > 0):
        for _ in range(n_search):
            candidate = best_lam.copy()
            candidate[first_free_step:] *= np.exp(rng.normal(0.0, 0.7, size=free))
            cost_c, quality_c = run(candidate)
            if cost_c <= limit and quality_c > best_quality + 1e-12:
                best_lam, best_cost, best_quality = candidate, cost_c, quality_c
    elif strategy not in ("constant", "per_step"):
        raise ValueError(f"strategy must be 'constant' or 'per_step', got {strategy!r}")

    cost_expensive, _ = run(best_lam, True)
    if cost_expensive > best_cost:
        gamma = float(np.clip((budget - best_cost) / (cost_expensive - best_cost), 0.0, 1.0))
    else:
        gamma = 0.0
    return LambdaFit(best_lam, gamma, best_cost, best_quality, cost_expensive, calls)
