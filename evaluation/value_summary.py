"""What the cascade is worth on a set of questions: each arm's accuracy and GPU-seconds, side by side.

An *arm* is one way of answering every question (the strongest model alone, routing at a budget,
cascade routing at the same budget), measured on the same questions. Each arm gets its accuracy with a
bootstrap CI, its mean GPU-seconds per question, its cost as a share of a reference arm's (the
strongest model), and its accuracy minus every other arm's with a paired CI: all arms see the same
resamples of the questions, so a difference is judged against the noise of the questions both answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from evaluation.metrics import ConfidenceInterval, bootstrap_indices, bootstrap_means

__all__ = ["value_summary"]


def value_summary(
    quality: Mapping[str, ArrayLike], gpu_s: Mapping[str, ArrayLike], *, reference: str,
    n_resamples: int = 2000, seed: int = 0,
) -> dict[str, Any]:
    """Each arm's accuracy (95% CI), GPU-seconds per question, cost relative to ``reference``, and its
    accuracy minus every other arm's (paired 95% CI).

    Parameters
    ----------
    quality, gpu_s : mapping of arm name to a sequence of shape (n_questions,)
        Per-question quality (1 right, 0 wrong; partial credit allowed) and measured GPU-seconds, every
        arm on the same questions in the same order.
    reference : str
        The arm whose cost the others are measured against (the strongest model alone).
    n_resamples, seed : int
        Bootstrap resamples of the questions, and their seed.

    Returns
    -------
    dict
        ``{"n_questions", "reference", "arms": {name: {"accuracy", "accuracy_ci": [low, high],
        "gpu_s_per_question", "cost_vs_reference", "minus": {other: {"mean", "low", "high"}}}}}``.
    """
    names = list(quality)
    if not names:
        raise ValueError("no arms to summarise")
    if set(gpu_s) != set(names):
        raise ValueError(f"quality has arms {sorted(names)} but gpu_s has {sorted(gpu_s)}")
    if reference not in quality:
        raise ValueError(f"reference {reference!r} is not one of the arms {names}")
    q = np.column_stack([np.asarray(quality[n], dtype=np.float64) for n in names])
    c = np.column_stack([np.asarray(gpu_s[n], dtype=np.float64) for n in names])
    if q.shape != c.shape:
        raise ValueError(f"quality has shape {q.shape} but gpu_s has {c.shape}: every arm needs both, per question")
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(c))):
        raise ValueError("quality and gpu_s must be finite")
    means = bootstrap_means(q, bootstrap_indices(q.shape[0], n_resamples=n_resamples, seed=seed))
    reference_gpu_s = float(c[:, names.index(reference)].mean())
    arms: dict[str, Any] = {}
    for j, name in enumerate(names):
        ci = ConfidenceInterval.from_samples(means[:, j])
        minus = {}
        for k, other in enumerate(names):
            if k != j:
                d = ConfidenceInterval.from_samples(means[:, j] - means[:, k])
                minus[other] = {"mean": float(q[:, j].mean() - q[:, k].mean()), "low": d.low, "high": d.high}
        arms[name] = {
            "accuracy": float(q[:, j].mean()),
            "accuracy_ci": [ci.low, ci.high],
            "gpu_s_per_question": float(c[:, j].mean()),
            "cost_vs_reference": float(c[:, j].mean()) / reference_gpu_s if reference_gpu_s > 0 else float("nan"),
            "minus": minus,
        }
    return {"n_questions": int(q.shape[0]), "reference": reference, "arms": arms}
