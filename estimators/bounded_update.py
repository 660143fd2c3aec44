"""Bounded live updates: one observation moves an estimate by at most a fixed factor, whatever its value.

Live estimators learn from every finished stage, and a client chooses its requests: a long prompt sent
again and again so that the engine's prefix cache makes its prefill nearly free, answers cut at one
token or run to ``max_tokens``, answers the model is certain of. An average that follows each
observation by a share of its distance (an exponential moving average, a running mean) can be dragged
anywhere by enough such requests, however small the share, and a clipped observation only slows that
down. So every live estimate here moves in log space (log-odds for a probability), by a step that is an
EWMA's for observations near the estimate (``weight`` times the relative error) and is capped at
``max_log_step`` for any other: N observations of any values move an estimate by a factor of at most
``exp(N * max_log_step)``.

The cap binds honest change too: a genuine change by a factor F takes at least ``ln(F) /
max_log_step`` observations to learn, and an estimator cannot tell a client's odd requests from a
change without knowing the client. Far from its target the update takes constant steps, so under noise
it settles where as many observations fall above it as below (a median); within ``max_log_step /
weight`` of it, on the mean. ``DEFAULT_MAX_LOG_STEP``, the bound and the convergence counts are in the
README ("Estimates that can't be poisoned") and pinned by ``tests/estimators/test_bounded_update.py``
and ``tests/estimators/test_poisoning.py``.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_MAX_LOG_STEP", "bounded_log_step", "bounded_probability_update", "bounded_update"]

# ln(1.1) / 100, rounded down: a hundred observations move an estimate by less than 10 %.
DEFAULT_MAX_LOG_STEP = 0.0009
# A probability is moved in log-odds, which are infinite at 0 and 1: it is kept this far inside.
_PROBABILITY_MARGIN = 1e-12


def bounded_log_step(estimate: float, observed: float, *, weight: float, max_log_step: float) -> float:
    """The log-space move of a positive ``estimate`` toward one ``observed`` value.

    ``weight * (observed / estimate - 1)`` within ``±max_log_step``: the relative error rather than the
    log ratio, so an observed 0 is a finite error and the estimate settles on the observations' mean,
    not their geometric mean. A negative observation counts as 0, an infinite one moves by the cap, a
    NaN one (no observation) not at all.
    """
    assert 0.0 < estimate < math.inf, estimate
    if math.isnan(observed):
        return 0.0
    return _capped(max(observed, 0.0) / estimate - 1.0, weight, max_log_step)


def bounded_update(estimate: float, observed: float, *, weight: float, max_log_step: float) -> float:
    """A positive ``estimate`` after one ``observed`` value (:func:`bounded_log_step`)."""
    return estimate * math.exp(bounded_log_step(estimate, observed, weight=weight, max_log_step=max_log_step))


def bounded_probability_update(p: float, observed: float, *, weight: float, max_log_step: float) -> float:
    """A probability ``p`` after one ``observed`` value in [0, 1] (NaN: none), moved in log-odds by at most
    ``max_log_step``.

    The error is ``(observed - p) / (p * (1 - p))``, the log-odds' slope times the distance, so near
    ``p`` the step is an EWMA's on the probability scale and ``p`` settles on the observations' mean.
    """
    if math.isnan(observed):
        return p
    p = min(max(p, _PROBABILITY_MARGIN), 1.0 - _PROBABILITY_MARGIN)
    relative = (min(max(observed, 0.0), 1.0) - p) / (p * (1.0 - p))
    log_odds = math.log(p / (1.0 - p)) + _capped(relative, weight, max_log_step)
    return 1.0 / (1.0 + math.exp(-log_odds))


def _capped(relative_error: float, weight: float, max_log_step: float) -> float:
    if weight == 0.0:  # a frozen estimate; and 0 * inf would be NaN
        return 0.0
    return min(max(weight * relative_error, -max_log_step), max_log_step)
