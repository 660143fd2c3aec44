"""The decision interface shared by every policy, and the fitting logic they share (scikit-learn style).

A policy is given the current estimates of one query and the models that have answered; it returns
a ``Decision``: run model i next, or stop and return the answer of model j. Fitted state (``lambdas_``,
``gamma_``) ends in an underscore; ``decide`` starts with ``check_is_fitted``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing._budget_margin import check_margin_se, cost_margin
from routing._estimates import Estimates, EstimateSource
from routing._lambda_search import BUDGET_RTOL, Strategy, fit_lambdas
from routing._simulate import rollout, validate_ground_truth
from routing._state_quality import StateMemos
from routing._supermodel_search import Decision

__all__ = ["NotFittedError", "Policy", "check_is_fitted", "check_max_depth"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]


class NotFittedError(ValueError, AttributeError):
    """Raised when a policy is used before ``fit`` (as scikit-learn's exception of the same name)."""


def check_is_fitted(policy: object) -> None:
    """Raise ``NotFittedError`` unless ``policy`` has fitted attributes (names ending in ``_``)."""
    if not any(k.endswith("_") and not k.startswith("__") for k in vars(policy)):
        raise NotFittedError(
            f"This {type(policy).__name__} instance is not fitted yet. Call 'fit' with a budget, "
            "or build it with 'from_lambdas'."
        )


def check_max_depth(max_depth: object) -> None:
    """Raise ``ValueError`` unless ``max_depth`` is None (no limit) or an int >= 1.

    A depth of 0 would let a policy stop before any model answered, which no policy can (spec §8 item 1).
    """
    if max_depth is None:
        return
    if isinstance(max_depth, bool) or not isinstance(max_depth, (int, np.integer)) or max_depth < 1:
        raise ValueError(f"max_depth must be None (no limit) or an int >= 1, got {max_depth!r}")


class Policy(ABC):
    """Base of routing, cascades and cascade routing.

    Subclasses set ``max_expected_cost`` (the budget, average cost per query), ``budget_margin_se``,
    ``strategy``, ``n_search`` and ``seed`` in ``__init__`` and implement ``n_steps`` and ``_decide_batch``; a
    faster path for a single decision overrides ``_decide_one``.
    """

    max_expected_cost: float | None
    # Standard errors of the validation mean cost kept free below the budget (routing._budget_margin).
    budget_margin_se: float = 0.0
    strategy: Strategy
    n_search: int
    seed: int
    # Steps whose multiplier has no effect (a cascade always runs its first model).
    _first_free_step = 0
    # With two models the per-step search may also start from the optimal cascade (routing._lambda_search).
    cascade_start: bool = False
    # decide()'s tie-break generator when the caller gives none (created on first use).
    _rng: np.random.Generator | None = None

    # -- scikit-learn parameter protocol ----------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> Policy:
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}")
            if key == "max_depth":
                check_max_depth(value)
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- what subclasses provide ----------------------------------------------------------------
    @abstractmethod
    def n_steps(self, n_models: int) -> int:
        """Number of per-step multipliers for ``n_models`` models."""

    @abstractmethod
    def _decide_batch(
        self,
        est: Estimates,
        answered: BoolArray,
        rows: IntArray,
        step: int,
        lambdas: FloatArray,
        expensive_tie: bool | float,
        rng: np.random.Generator | None,
        memos: StateMemos | None,
    ) -> tuple[IntArray, IntArray]:
        """Decisions for a batch at the same step: (run_next with -1 = stop, answer_from)."""

    def _lambda_scale(self, cost: FloatArray) -> float:
        """A multiplier at which cost dominates quality differences: the bisection's first bracket."""
        return 1.0 / max(float(np.mean(cost)), 1e-12)

    # -- fitting ----------------------------------------------------------------------------------
    def fit(
        self, X: EstimateSource, quality: FloatArray, cost: FloatArray, *, memos: StateMemos | None = None
    ) -> Policy:
        """Fit lambdas and gamma so the average validation cost, plus ``budget_margin_se`` standard errors of
        it, is at most ``max_expected_cost``.

        The margin covers the budget's sampling error: the validation mean is an estimate of what the
        policy will spend on new queries (``routing._budget_margin``); 0 gives the paper's fit.

        Parameters
        ----------
        X : EstimateSource
            Estimates for the validation queries.
        quality, cost : ndarray of shape (n_queries, n_models)
            Ground-truth quality and cost of every model on those queries (models sorted by cost).
        memos : dict, optional
            Per-state memos to share between fits on the same ``X`` (e.g. one per budget of a grid):
            each state's candidates are then scored once for all budgets. Default: a fresh one.

        Attributes set: ``lambdas_``, ``gamma_``, ``fit_cost_`` (validation mean cost, cheapest ties),
        ``fit_cost_margin_`` (the margin at the fitted lambdas: ``fit_cost_ + fit_cost_margin_`` is within
        the budget), ``fit_quality_``, ``n_fit_evaluations_``.
        """
        quality = np.asarray(quality, dtype=np.float64)
        cost = np.asarray(cost, dtype=np.float64)
        validate_ground_truth(X, quality, cost)
        budget = self.max_expected_cost
        if budget is None:
            raise ValueError(f"{type(self).__name__} needs max_expected_cost to fit (or use from_lambdas)")
        margin_se = check_margin_se(self.budget_margin_se)
        cheapest = float(cost.mean(axis=0).min())
        if not np.isfinite(budget) or budget < cheapest * (1.0 - BUDGET_RTOL):
            raise ValueError(
                f"max_expected_cost={budget!r} is below the cheapest model's average cost {cheapest:.6g}"
            )
        n_models = quality.shape[1]
        memos = {} if memos is None else memos

        def evaluate(lambdas: FloatArray, expensive: bool) -> tuple[float, float]:
            # The search compares the upper bound (mean + margin) with the budget, so every accepted
            # vector, and gamma's mix of the two tie-breaks, keeps the bound within it.
            result = rollout(self, X, quality, cost, lambdas=lambdas, expensive_tie=expensive, memos=memos)
            return result.mean_cost + cost_margin(result.cost, margin_se), result.mean_quality

        fitted = fit_lambdas(
            evaluate,
            n_steps=self.n_steps(n_models),
            budget=float(budget),
            lambda_scale=self._lambda_scale(cost),
            strategy=self.strategy,
            first_free_step=self._first_free_step,
            n_search=self.n_search,
            # Only with two models is "cheapest first, then one lambda" the optimal cascade; with more it
            # is one cascade among many, picked on in-sample quality (docs/routellm_results.md).
            cascade_start=self.cascade_start and n_models == 2,
            rng=np.random.default_rng(self.seed),
        )
        self.n_models_ = n_models
        self.lambdas_ = fitted.lambdas
        self.gamma_ = fitted.gamma
        if margin_se > 0.0:
            at_fit = rollout(self, X, quality, cost, lambdas=fitted.lambdas, expensive_tie=False, memos=memos)
            self.fit_cost_margin_ = cost_margin(at_fit.cost, margin_se)
            self.fit_cost_ = at_fit.mean_cost
        else:
            self.fit_cost_margin_ = 0.0
            self.fit_cost_ = fitted.cost
        self.fit_quality_ = fitted.quality
        self.n_fit_evaluations_ = fitted.n_evaluations
        return self

    @classmethod
    def from_lambdas(cls, lambdas: Any, *, gamma: float = 0.0, **params: Any) -> Policy:
        """A ready policy with given multipliers (e.g. from a config file or a per-request knob)."""
        policy = cls(**params)
        lam = np.atleast_1d(np.asarray(lambdas, dtype=np.float64))
        if lam.ndim != 1 or lam.shape[0] == 0 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
            raise ValueError(f"lambdas must be a non-empty list of finite non-negative numbers, got {lambdas!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        policy.lambdas_ = lam
        policy.gamma_ = float(gamma)
        return policy

    def _resolve_lambdas(self, lambdas: FloatArray | None) -> FloatArray:
        if lambdas is not None:
            return np.asarray(lambdas, dtype=np.float64)
        fitted: FloatArray | None = getattr(self, "lambdas_", None)
        if fitted is None:
            check_is_fitted(self)
            raise AttributeError(f"{type(self).__name__} has no lambdas_")
        return fitted

    def _resolve_gamma(self) -> float:
        check_is_fitted(self)
        return float(self.gamma_)

    # -- the decision interface -------------------------------------------------------------------
    def decide(
        self,
        estimates: Estimates,
        answered: BoolArray,
        *,
        rng: np.random.Generator | None = None,
        lambdas: FloatArray | None = None,
    ) -> Decision:
        """Next step for one query.

        Parameters
        ----------
        estimates : Estimates
            Current estimates of this query (``n_queries == 1``), given the answers so far.
        answered : ndarray of shape (n_models,), bool
            Models that have answered.
        rng : numpy.random.Generator, optional
            Draws the gamma tie-break, only when a tie occurs. Default: the policy's own generator,
            seeded with ``seed`` on first use, so a fresh policy with the same seed makes the same
            sequence of decisions, and ties are still mixed across queries.
        lambdas : ndarray, optional
            Per-request multipliers overriding the fitted ones.
        """
        lam = self._resolve_lambdas(lambdas)
        gamma = float(self.gamma_) if hasattr(self, "gamma_") else 0.0
        answered = np.asarray(answered, dtype=bool)
        if estimates.q_mean.shape[0] != 1:
            raise ValueError(f"decide takes the estimates of one query, got {estimates.n_queries}")
        if answered.shape != (estimates.q_mean.shape[1],):
            raise ValueError(f"answered has shape {answered.shape}, expected ({estimates.n_models},)")
        if rng is None:
            if self._rng is None:
                self._rng = np.random.default_rng(self.seed)
            rng = self._rng
        return self._decide_one(estimates, answered, int(np.count_nonzero(answered)), lam, gamma, rng)

    def _decide_one(
        self,
        estimates: Estimates,
        answered: BoolArray,
        step: int,
        lambdas: FloatArray,
        expensive_tie: bool | float,
        rng: np.random.Generator,
    ) -> Decision:
        """The decision of one query (``decide`` after validation): the batch path on a batch of one.
        Policies whose single decision has a faster path override it."""
        run_next, answer_from = self._decide_batch(
            estimates, answered[None, :], np.zeros(1, dtype=np.intp), step, lambdas, expensive_tie, rng, None
        )
        if run_next[0] >= 0:
            return Decision(int(run_next[0]), None)
        return Decision(None, int(answer_from[0]) if answer_from[0] >= 0 else None)
