"""A budget's sampling error: the margin a lambda fit keeps below the budget (issue 13 item 2).

A lambda fitted so that the *validation* mean cost meets the budget exactly overshoots it on new
queries about half the time, and by a lot when validation is small: per-query costs are skewed (a few
queries reach the dearest model), so the mean of a few dozen of them is a noisy estimate of the mean the
policy will spend. The fit therefore asks that an upper confidence bound of the mean stay within the
budget: the validation mean plus ``margin_se`` standard errors of the per-query cost under the policy.
The standard error falls as one over the square root of the number of validation queries, so the
margin vanishes as validation grows and the fit tends to the paper's (``margin_se = 0``).

Measured effect (overshoot and AUC with 20-158 validation rows): ``docs/small_validation.md``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["DEFAULT_BUDGET_MARGIN_SE", "check_margin_se", "cost_margin", "cost_standard_error"]

# Standard errors of the validation mean cost kept free below the budget by the commands that fit a
# lambda to a budget (`cascade eval`, `cascade calibrate`, the controller's budget_gpu_s): the one-sided
# 95 % normal quantile, a conventional level chosen before measuring, not tuned to the benchmark
# (docs/small_validation.md). The policy classes default to 0 (the paper's fit).
DEFAULT_BUDGET_MARGIN_SE = 1.645


def check_margin_se(margin_se: object) -> float:
    """``margin_se`` as a float, or ``ValueError`` unless it is a finite number >= 0."""
    if isinstance(margin_se, bool) or not isinstance(margin_se, (int, float, np.integer, np.floating)):
        raise ValueError(f"budget_margin_se must be a finite number >= 0, got {margin_se!r}")
    value = float(margin_se)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"budget_margin_se must be a finite number >= 0, got {margin_se!r}")
    return value


def cost_standard_error(per_query_cost: ArrayLike) -> float:
    """Standard error of the mean of ``per_query_cost`` (shape (n_queries,)): sample std (ddof=1) / sqrt(n).

    One query gives no estimate of the spread; its standard error is reported as 0 rather than NaN, so a
    single validation query fits as without margin (nothing better is known).
    """
    cost = np.asarray(per_query_cost, dtype=np.float64).ravel()
    n = cost.shape[0]
    if n < 2:
        return 0.0
    return float(np.std(cost, ddof=1) / math.sqrt(n))


def cost_margin(per_query_cost: ArrayLike, margin_se: float) -> float:
    """``margin_se`` standard errors of the mean per-query cost: what a fit keeps free below the budget."""
    if margin_se == 0.0:
        return 0.0
    return margin_se * cost_standard_error(per_query_cost)
