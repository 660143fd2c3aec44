"""Fitting the per-step multipliers lambda and the tie-break probability gamma to a cost budget (spec §1.4).

Every evaluation simulates the whole policy on validation queries and scores ground-truth quality and
cost (``routing._simulate.rollout``). Strategies:

- ``"constant"``: one lambda for every step, by bracketing then bisection on the average cost, which
  falls as lambda rises. Returns the smallest lambda found within budget.
- ``"per_step"``: the constant fit, then a seeded local random search over per-step multipliers
  (log-normal steps around the incumbent), accepting a vector only if it is within budget and raises
  validation quality. It stands in for the reference's hyperopt search, whose bound bug made it a
  search over [0, max_lambda] anyway (spec §8 item 5), at a fixed, small number of evaluations.
  With ``cascade_start`` the search may instead start from the cascade start: lambda_0 so large that the
  first step runs the cheapest model, the later steps' common lambda bisected to the budget. With two
  models that vector *is* the optimal cascade, and a local search from the router-like constant fit
  rarely reaches it (lambda_0 must grow by orders of magnitude while the others stay put). The start
  with the higher validation quality within budget seeds the local search, so the fit can only gain
  validation quality from it. ``CascadeRouter`` asks for it with two models only: with more, cheapest
  first is one cascade among many, and choosing it on the same rows that score it lost held-out quality.

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
# lambda_0 of the cascade start, in units of lambda_scale (1 / mean cost): a cost gap of 1e-4 of the mean
# then outweighs any quality difference (qualities lie in [0, 1]) while lambda * cost stays small enough
# (about 1e6) for float64 to keep the quality digits that break ties between equal costs.
_CASCADE_START_SCALE = 1e6
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
    cascade_start: bool = False,
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
    cascade_start : bool
        With ``strategy="per_step"``, more than one step and ``first_free_step == 0``: also fit the
        cascade start (module docstring) and search from whichever start has the higher validation
        quality. A budget the cascade start cannot keep leaves the constant fit as the start.
    """
    if not np.isfinite(budget) or budget < 0:
        raise ValueError(f"budget must be a finite non-negative number, got {budget!r}")
    calls = 0

    def run(lambdas: FloatArray, expensive: bool = False) -> tuple[float, float]:
        nonlocal calls
        calls += 1
        return evaluate(lambdas, expensive)

    if strategy not in ("constant", "per_step"):
        raise ValueError(f"strategy must be 'constant' or 'per_step', got {strategy!r}")
    limit = budget * (1.0 + BUDGET_RTOL)
    best_lam, best_cost, best_quality = _bisect_constant(
        run, np.zeros(n_steps), np.ones(n_steps), limit=limit, budget=budget, lambda_scale=lambda_scale,
        n_bisect=n_bisect, rtol=rtol,
    )

    free = n_steps - first_free_step
    if strategy == "per_step" and cascade_start and first_free_step == 0 and n_steps > 1:
        offset = np.zeros(n_steps)
        offset[0] = _CASCADE_START_SCALE * max(float(lambda_scale), 1e-12)
        direction = np.ones(n_steps)
        direction[0] = 0.0
        try:
            lam_c, cost_c, quality_c = _bisect_constant(
                run, offset, direction, limit=limit, budget=budget, lambda_scale=lambda_scale,
                n_bisect=n_bisect, rtol=rtol,
            )
        except BudgetUnreachableError:
            pass
        else:
            if quality_c > best_quality + 1e-12:
                best_lam, best_cost, best_quality = lam_c, cost_c, quality_c

    if strategy == "per_step" and free > 1 and np.any(best_lam > 0):
        for _ in range(n_search):
            candidate = best_lam.copy()
            candidate[first_free_step:] *= np.exp(rng.normal(0.0, 0.7, size=free))
            cost_c, quality_c = run(candidate)
            if cost_c <= limit and quality_c > best_quality + 1e-12:
                best_lam, best_cost, best_quality = candidate, cost_c, quality_c

    cost_expensive, _ = run(best_lam, True)
    if cost_expensive > best_cost:
        gamma = float(np.clip((budget - best_cost) / (cost_expensive - best_cost), 0.0, 1.0))
    else:
        gamma = 0.0
    return LambdaFit(best_lam, gamma, best_cost, best_quality, cost_expensive, calls)


def _bisect_constant(
    run: Callable[[FloatArray], tuple[float, float]],
    offset: FloatArray,
    direction: FloatArray,
    *,
    limit: float,
    budget: float,
    lambda_scale: float,
    n_bisect: int,
    rtol: float,
) -> tuple[FloatArray, float, float]:
    """The smallest t >= 0 with ``offset + t * direction`` within budget: (lambdas, cost, quality).

    Cost falls as t rises. t = 0 is tried first; otherwise the bracket starts at ``lambda_scale`` and
    grows by 4 until the cost is within ``limit``, then bisection narrows it to ``rtol``.
    """
    cost0, quality0 = run(offset.copy())
    if cost0 <= limit:
        return offset.copy(), cost0, quality0
    hi = max(float(lambda_scale), 1e-12)
    cost_hi, quality_hi = run(offset + hi * direction)
    while cost_hi > limit:
        hi *= 4.0
        if hi > _LAMBDA_CEILING:
            raise BudgetUnreachableError(
                f"budget {budget:.6g} is below the cheapest average cost this policy reaches on the "
                f"validation set ({cost_hi:.6g} at lambda={hi / 4:.3g})",
                cheapest_cost=cost_hi,
            )
        cost_hi, quality_hi = run(offset + hi * direction)
    lo = 0.0
    for _ in range(n_bisect):
        if hi - lo <= rtol * hi:
            break
        mid = 0.5 * (lo + hi)
        cost_mid, quality_mid = run(offset + mid * direction)
        if cost_mid <= limit:
            hi, cost_hi, quality_hi = mid, cost_mid, quality_mid
        else:
            lo = mid
    return offset + hi * direction, cost_hi, quality_hi
