"""Live quality estimates from a calibrated ``TrainedQualityEstimator``: the controller's trained estimator.

`cascade calibrate` fits :class:`~estimators.trained_quality.TrainedQualityEstimator` on the user's
own prompts and the fleet's answers to them. This adapter gives it the controller's interface
(``estimators.stage.QualityEstimator``): for one live query and the stages answered so far it builds
the one-row table the estimator reads (the query text; the answered models' answers, their token
log-probability statistics and finish reasons; empty answers for the others), and returns P(correct)
of each model (post-hoc for answered models, ex-ante given the others' answers otherwise) with the
variance of the answered subset's fitted covariance (spec §1.1).

Queries carry no task label at serving time, so calibration trains with one task for all rows and
this adapter uses the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from estimators.answer_signals import answer_signals, answer_stats
from estimators.stage import QueryInfo, StageResult
from estimators.table import ANSWER_STATS
from estimators.trained_quality import PreparedQueries, TrainedQualityEstimator

__all__ = ["SERVING_TASK", "CalibratedQuality"]

FloatArray = NDArray[np.float64]
SERVING_TASK = "serving"  # the one task label of calibration tables (live queries have none)


@dataclass
class CalibratedQuality:
    """See the module docstring. ``answer_kind``: how answers are compared ("final", "choice", "code")."""

    estimator: TrainedQualityEstimator
    answer_kind: str = "final"
    _last: tuple[tuple[object, ...], PreparedQueries] | None = field(default=None, repr=False)
    _ante: tuple[str, FloatArray, FloatArray] | None = field(default=None, repr=False)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.estimator.models_)

    def predict(
        self, query: QueryInfo, models: list[str], stages: dict[str, StageResult]
    ) -> tuple[FloatArray, FloatArray]:
        known = self.models
        unknown = [m for m in models if m not in known]
        if unknown:
            raise ValueError(f"model {unknown[0]!r} was not calibrated (calibrated: {list(known)})")
        answered = np.array([m in stages for m in known])
        responses = tuple(stages[m].text if m in stages else "" for m in known)
        prepared = self._prepared(query.text, responses, stages)
        mean = self.estimator.predict_quality(prepared, np.zeros(1, dtype=np.intp), answered[None, :])[0]
        var = np.diag(self.estimator.subset_covariance(answered)).copy()
        cols = [known.index(m) for m in models]
        return mean[cols], var[cols]

    def observe(self, query: QueryInfo, stage: StageResult) -> None:
        """Nothing to learn online: the estimator is refitted by the next calibration."""

    def _prepared(self, text: str, responses: tuple[str, ...], stages: dict[str, StageResult]) -> PreparedQueries:
        # A request asks once per decision, with one more answer each time: the query's text features
        # (most of the work) are computed once per query, the answer signals per set of answers.
        known = self.models
        # The key holds everything the row is built from: which models answered, and their statistics.
        key = (text, responses, tuple((m, stages[m].token_logprobs, stages[m].finish_reason) if m in stages
                                      else None for m in known))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        if self._ante is None or self._ante[0] != text:
            est = self.estimator
            task = est._task_onehot((SERVING_TASK,))
            z = np.asarray(est.ante_.decision_function(est._ante_features((text,), task)), dtype=np.float64)
            self._ante = (text, z.reshape(1, -1), task)
        stats = np.zeros((1, len(known), len(ANSWER_STATS)))
        for j, m in enumerate(known):
            if m in stages:
                stats[0, j] = answer_stats(stages[m].token_logprobs, stages[m].finish_reason)
        signals = answer_signals((text,), (responses,), kinds=(self.answer_kind,), stats=stats)
        prepared = PreparedQueries(z_ante=self._ante[1], task=self._ante[2], signals=signals)
        self._last = (key, prepared)
        return prepared
