"""Calibrated GPU-time cost model: per-model GPU-seconds per token fitted from a calibration replay's engine timings.

Each calibration row (:class:`CostSample`) is one model answering one prompt, with vLLM's per-request
split of the answer's time: ``prefill_s`` (scheduled to first token) and ``decode_s`` (first to last
token); queueing is excluded, as it is load, not work. Per model the fit is the linear law

    gpu_s = gpus * (overhead_s + prefill_s_per_token * prompt_tokens
                     + decode_s_per_token * max(completion_tokens - 1, 0))

with non-negative coefficients (the first answer token comes out of prefill, so decode covers the
``completion_tokens - 1`` tokens after it, as in :mod:`estimators.token_cost`), where ``gpus`` is the
number of GPUs the replica holds: the GPU-seconds of a request are its engine wall seconds times them.
The coefficients are valid at the concurrency the replay ran at (``concurrency``, informational): with
more requests batched together each one's decode is slower, and since batched requests share the GPUs,
these GPU-seconds measure occupancy, not exclusive use; compare models calibrated at one concurrency.

**Fitting on relative error.** The benchmark is the mean absolute percentage error (MAPE) per model,
so by default (``loss="relative"``) rows are weighted by 1 / measured seconds: the least-squares
problem is then on ``predicted / measured - 1``, and long requests do not dominate the fit at the
expense of the short ones. ``loss="absolute"`` is plain non-negative least squares on seconds. On
synthetic replays (prompts log-uniform in 10..4,000 tokens, answers log-normal around 60 tokens capped
at 1,024; 1,000 rows fitted, 5,000 held out, mean of 10 seeds), held-out MAPE given the true token
counts was, relative vs absolute: 3.99% vs 4.20% with 5% multiplicative timing noise; 5.3% vs 10.9%
when 2% of the rows also take 3x as long (preemptions, stalls: the absolute fit chases the long
outliers and misplaces the fixed overhead, which is most of a short request's cost;
``test_relative_loss_beats_absolute_on_mape``); but 1.9% vs 1.6% with purely additive 5 ms noise, for
which unweighted least squares is the efficient estimator. Engine timings scale with the work and
have stalls, so relative is the default.

**Ex-ante cost** needs the answer's length before it exists: per model a ridge regression of
``log(completion_tokens)`` on hashed prompt n-grams (:class:`~estimators.text_features.PromptFeatures`,
with its shape block: digits as ``0``, so the size of the question's numbers is a feature; held-out
ex-ante MAPE of the scratchpad toy models 19 % → 13-14 % with it, unchanged on text prompts)
and ``log(1 + prompt_tokens)``, exponentiated and clipped to ``[1, max_tokens]``. The log target
makes the prediction a median, not a mean, which suits a percentage error better (long answers
would pull a mean up). Rows cut at ``max_tokens`` (``finish_reason="length"``) are kept at their cut
length (a lower bound of the length the model wanted); aborted rows (``"abort"``) are left out of
the length fit but kept in the cost fit, since their timings still match the tokens they produced.
**Post-hoc cost** is the measured value.

**Live use** (:class:`~estimators.stage.CostEstimator`): ``predict`` returns measured GPU-seconds for
the models that answered and ex-ante predictions otherwise; ``observe`` keeps each model's prediction
current with a multiplicative correction that follows measured / predicted-given-tokens (the law priced
on the prompt tokens the engine prefilled, not those its prefix cache served), within ``live_bounds``.
Each stage moves the correction, and the moving averages of answer length shown next to it, by a
bounded step (``estimators.bounded_update``: weight ``live_smoothing`` near the estimate, at most
``live_max_log_step`` in log space), so a client's requests, whatever their shape, move a model's
predicted cost by a bounded factor (README; ``tests/estimators/test_poisoning.py``).
``current_rates`` gives the law times the correction, what the controller exports as Prometheus gauges
(``coefficients`` lists everything per model). ``supersede_measurements`` (a startup measurement was
skewed) changes nothing: the calibrated law is the measurement, and one skewed stage moves the
correction by one bounded step at most.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import nnls
from sklearn.base import BaseEstimator
from sklearn.linear_model import Ridge
from sklearn.utils.validation import check_is_fitted

from estimators.bounded_update import DEFAULT_MAX_LOG_STEP, bounded_update
from estimators.stage import CostRates, QueryInfo, StageResult
from estimators.text_features import PromptFeatures

__all__ = ["CostSample", "GpuTimeCostModel", "ModelCost", "fit_linear_cost"]

FloatArray = NDArray[np.float64]
FinishReason = Literal["stop", "length", "abort"]
_FINISH_REASONS = ("stop", "length", "abort")
_LOSSES = ("relative", "absolute")


@dataclass(frozen=True, slots=True)
class CostSample:
    """One calibration row: one model's answer to one prompt, timed by its vLLM engine.

    Validated on construction: token counts are non-negative ints, ``completion_tokens <= max_tokens``,
    times are finite and non-negative with a positive sum.
    """

    model: str
    prompt_text: str
    prompt_tokens: int  # as the replica's tokenizer counted them
    completion_tokens: int
    max_tokens: int  # the request's cap on completion tokens
    prefill_s: float  # scheduled to first token (engine clock), queueing excluded
    decode_s: float  # first to last token
    finish_reason: FinishReason = "stop"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        if not isinstance(self.prompt_text, str):
            raise ValueError(f"prompt_text must be a string, got {type(self.prompt_text).__name__}")
        for name, low in (("prompt_tokens", 0), ("completion_tokens", 0), ("max_tokens", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r} (model {self.model!r})")
        if self.completion_tokens > self.max_tokens:
            raise ValueError(
                f"completion_tokens ({self.completion_tokens}) exceeds max_tokens ({self.max_tokens}) "
                f"(model {self.model!r})"
            )
        for name in ("prefill_s", "decode_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r} (model {self.model!r})")
        if self.prefill_s + self.decode_s <= 0.0:
            raise ValueError(f"prefill_s + decode_s must be positive (model {self.model!r})")
        if self.finish_reason not in _FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {list(_FINISH_REASONS)}, got {self.finish_reason!r}")

    @property
    def wall_s(self) -> float:
        """Engine time of the answer: prefill plus decode (one GPU's worth; multiply by the GPUs held)."""
        return float(self.prefill_s + self.decode_s)

    @classmethod
    def from_stage(cls, query: QueryInfo, stage: StageResult, *, finish_reason: FinishReason = "stop") -> CostSample:
        """The calibration row of a live stage (e.g. to refit from logged traffic)."""
        return cls(
            model=stage.model, prompt_text=query.text, prompt_tokens=stage.prompt_tokens,
            completion_tokens=stage.completion_tokens, max_tokens=query.max_tokens,
            prefill_s=stage.prefill_s, decode_s=stage.decode_s, finish_reason=finish_reason,
        )


@dataclass(frozen=True, slots=True)
class ModelCost:
    """One model's fitted cost law, in GPU-seconds (engine seconds times ``gpus``)."""

    overhead_s: float  # GPU-seconds per request
    prefill_s_per_token: float  # GPU-seconds per prompt token
    decode_s_per_token: float  # GPU-seconds per completion token after the first
    gpus: int  # GPUs the replica holds

    def gpu_s(self, prompt_tokens: ArrayLike, completion_tokens: ArrayLike) -> FloatArray:
        """GPU-seconds of requests with these token counts (broadcast; shape of the broadcast inputs)."""
        p = np.asarray(prompt_tokens, dtype=np.float64)
        c = np.asarray(completion_tokens, dtype=np.float64)
        out: FloatArray = np.asarray(
            self.overhead_s + self.prefill_s_per_token * p + self.decode_s_per_token * np.maximum(c - 1.0, 0.0),
            dtype=np.float64,
        )
        return out


def fit_linear_cost(
    prompt_tokens: ArrayLike,
    completion_tokens: ArrayLike,
    wall_s: ArrayLike,
    *,
    loss: str = "relative",
) -> tuple[float, float, float]:
    """Non-negative least squares of ``wall_s`` on ``[1, prompt_tokens, max(completion_tokens - 1, 0)]``.

    Parameters
    ----------
    prompt_tokens, completion_tokens : array-like of shape (n_samples,)
    wall_s : array-like of shape (n_samples,)
        Measured engine seconds (prefill + decode), all positive.
    loss : {"relative", "absolute"}, default="relative"
        ``"relative"`` minimises the squared relative error (rows weighted by ``1 / wall_s``), the
        least-squares stand-in for MAPE; ``"absolute"`` the squared error in seconds.

    Returns
    -------
    (overhead_s, prefill_s_per_token, decode_s_per_token) : tuple of float
        Engine seconds per request and per token, all >= 0.
    """
    p = np.asarray(prompt_tokens, dtype=np.float64).reshape(-1)
    c = np.asarray(completion_tokens, dtype=np.float64).reshape(-1)
    y = np.asarray(wall_s, dtype=np.float64).reshape(-1)
    if not p.shape == c.shape == y.shape:
        raise ValueError(
            f"prompt_tokens, completion_tokens and wall_s differ in length: {p.size}, {c.size}, {y.size}"
        )
    if y.size == 0:
        raise ValueError("no rows to fit")
    if not np.all(np.isfinite(y) & (y > 0)):
        raise ValueError("wall_s must be finite and positive")
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {list(_LOSSES)}, got {loss!r}")
    a = np.column_stack([np.ones_like(p), p, np.maximum(c - 1.0, 0.0)])
    b = y.copy()
    if loss == "relative":
        a /= y[:, None]
        b /= y
    # Columns differ by orders of magnitude (1 vs thousands of tokens): scale them to unit norm so NNLS
    # is well conditioned, then undo the scaling. An all-zero column (e.g. one-token answers only)
    # keeps a zero coefficient.
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0.0] = 1.0
    x, _ = nnls(a / scale, b)
    coef = x / scale
    return float(coef[0]), float(coef[1]), float(coef[2])


class GpuTimeCostModel(BaseEstimator):  # type: ignore[misc]
    """Per-model GPU-seconds from a calibration replay, ex ante and live (module docstring).

    Parameters
    ----------
    n_text_features : int, default=2**12
        Hash buckets of each of the word and character blocks of the output-length predictor's prompt
        features.
    length_alpha : float, default=1.0
        Ridge strength of the output-length predictor.
    loss : {"relative", "absolute"}, default="relative"
        Error the cost law is fitted on (see :func:`fit_linear_cost`).
    live_smoothing : float, default=0.05
        Weight of the newest stage in the live correction and moving averages, near their value (an
        EWMA's); 0 freezes the model.
    live_bounds : tuple of (float, float), default=(0.5, 2.0)
        Bounds of the live correction factor; ``low <= 1 <= high``.
    live_max_log_step : float, default=DEFAULT_MAX_LOG_STEP
        The most one stage moves the correction (and each moving average) in log space
        (``estimators.bounded_update``).
    concurrency : int or None, default=None
        Informational: the replay concurrency the timings were measured at.
    gpus_per_replica : dict of str to number or None, default=None
        GPUs each model's replica holds; models not listed hold one.
    usd_per_gpu_hour : float or None, default=None
        Price of one GPU-hour, for :meth:`usd`.

    Attributes
    ----------
    models_ : tuple of str
        The calibrated models, sorted.
    coef_ : dict of str to ModelCost
        Per model, the fitted law in GPU-seconds (GPUs included).
    n_samples_ : dict of str to int
        Calibration rows per model.
    features_ : PromptFeatures
        The output-length predictor's text featurizer.
    length_coef_ : ndarray of shape (n_models, n_length_features)
        Per model (in ``models_`` order), ridge weights on the hashed prompt features followed by
        ``log(1 + prompt_tokens)``, predicting ``log(completion_tokens)``.
    length_intercept_ : ndarray of shape (n_models,)
    correction_ : dict of str to float
        Live multiplicative correction per model (1.0 after ``fit``).
    n_observed_ : dict of str to int
        Live stages observed per model since ``fit``.
    live_completion_tokens_, live_expected_completion_tokens_ : dict of str to float
        Bounded moving averages of measured and of ex-ante predicted completion tokens; both start at
        the calibration means, so their gap shows drift of the length predictor.
    """

    def __init__(
        self,
        *,
        n_text_features: int = 2**12,
        length_alpha: float = 1.0,
        loss: str = "relative",
        live_smoothing: float = 0.05,
        live_bounds: tuple[float, float] = (0.5, 2.0),
        live_max_log_step: float = DEFAULT_MAX_LOG_STEP,
        concurrency: int | None = None,
        gpus_per_replica: Mapping[str, float] | None = None,
        usd_per_gpu_hour: float | None = None,
    ) -> None:
        self.n_text_features = n_text_features
        self.length_alpha = length_alpha
        self.loss = loss
        self.live_smoothing = live_smoothing
        self.live_bounds = live_bounds
        self.live_max_log_step = live_max_log_step
        self.concurrency = concurrency
        self.gpus_per_replica = gpus_per_replica
        self.usd_per_gpu_hour = usd_per_gpu_hour

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Artifacts pickled before the step bound existed load with it: their live use is bounded too.
        state.setdefault("live_max_log_step", DEFAULT_MAX_LOG_STEP)
        super().__setstate__(state)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, X: Iterable[CostSample], y: None = None) -> GpuTimeCostModel:
        """Fit every model's cost law and output-length predictor on calibration rows.

        Parameters
        ----------
        X : iterable of CostSample
            The replay's rows, any models in any order; every model needs at least one row that was
            not aborted.
        y : None
            Ignored: the targets are in the rows.

        Returns
        -------
        self : GpuTimeCostModel
        """
        self._validate_params()
        rows = _check_samples(X)
        gpus_of = dict(self.gpus_per_replica or {})
        only_aborted = sorted({r.model for r in rows} - {r.model for r in rows if r.finish_reason != "abort"})
        if only_aborted:
            raise ValueError(f"models {only_aborted} have only aborted rows: nothing to learn output length from")
        self.models_ = tuple(sorted({r.model for r in rows}))
        # The shape block (digits as 0) lets answer length follow the size of the question's numbers.
        self.features_ = PromptFeatures(n_word_features=self.n_text_features, n_char_features=self.n_text_features,
                                        n_shape_features=self.n_text_features)
        texts = [r.prompt_text for r in rows]
        self.features_.fit(texts)
        x_all = self._length_features(texts, np.array([r.prompt_tokens for r in rows], dtype=np.float64))

        self.coef_: dict[str, ModelCost] = {}
        self.n_samples_: dict[str, int] = {}
        self.length_coef_ = np.zeros((len(self.models_), x_all.shape[1]))
        self.length_intercept_ = np.zeros(len(self.models_))
        self.live_completion_tokens_: dict[str, float] = {}
        self.live_expected_completion_tokens_: dict[str, float] = {}
        model_of = np.array([r.model for r in rows], dtype=object)
        for j, model in enumerate(self.models_):
            idx = np.flatnonzero(model_of == model)
            mine = [rows[i] for i in idx]
            p = np.array([r.prompt_tokens for r in mine], dtype=np.float64)
            c = np.array([r.completion_tokens for r in mine], dtype=np.float64)
            overhead, prefill, decode = fit_linear_cost(p, c, [r.wall_s for r in mine], loss=self.loss)
            gpus = int(gpus_of.get(model, 1))
            self.coef_[model] = ModelCost(overhead * gpus, prefill * gpus, decode * gpus, gpus)
            self.n_samples_[model] = len(mine)

            finished = np.array([r.finish_reason != "abort" for r in mine])
            ridge = Ridge(alpha=self.length_alpha, solver="sparse_cg", tol=1e-6)
            ridge.fit(x_all[idx[finished]], np.log(np.maximum(c[finished], 1.0)))
            self.length_coef_[j] = ridge.coef_
            self.length_intercept_[j] = float(ridge.intercept_)
            predicted = self._expected_tokens(j, x_all[idx], np.array([r.max_tokens for r in mine]))
            # Moved by factors from here on, so above 0 (rows may all have empty answers).
            self.live_completion_tokens_[model] = max(float(c.mean()), 1.0)
            self.live_expected_completion_tokens_[model] = float(predicted.mean())
        # Features of the last live query (``_query_features``); stale after a refit.
        self._last_query: tuple[tuple[str, float], Any] | None = None
        self.correction_ = dict.fromkeys(self.models_, 1.0)
        self.n_observed_ = dict.fromkeys(self.models_, 0)
        return self

    def _validate_params(self) -> None:
        n = self.n_text_features
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n_text_features must be a positive int, got {n!r}")
        alpha = self.length_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < float(alpha) < math.inf:
            raise ValueError(f"length_alpha must be a positive finite number, got {alpha!r}")
        if self.loss not in _LOSSES:
            raise ValueError(f"loss must be one of {list(_LOSSES)}, got {self.loss!r}")
        a = self.live_smoothing
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not 0.0 <= float(a) <= 1.0:
            raise ValueError(f"live_smoothing must be a number in [0, 1], got {a!r}")
        bounds = self.live_bounds
        if (
            not isinstance(bounds, tuple | list)
            or len(bounds) != 2
            or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in bounds)
            or not 0.0 < float(bounds[0]) <= 1.0 <= float(bounds[1]) < math.inf
        ):
            raise ValueError(f"live_bounds must be (low, high) with 0 < low <= 1 <= high < inf, got {bounds!r}")
        step = self.live_max_log_step
        if isinstance(step, bool) or not isinstance(step, numbers.Real) or not 0.0 < float(step) < math.inf:
            raise ValueError(f"live_max_log_step must be a positive finite number, got {step!r}")
        k = self.concurrency
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"concurrency must be a positive int or None, got {k!r}")
        gpus = self.gpus_per_replica
        if gpus is not None:
            if not isinstance(gpus, Mapping):
                raise ValueError(f"gpus_per_replica must be a dict of model to int or None, got {gpus!r}")
            for model, g in gpus.items():
                if isinstance(g, bool) or not isinstance(g, numbers.Integral) or g < 1:
                    raise ValueError(f"gpus_per_replica[{model!r}] must be a positive int, got {g!r}")
        usd = self.usd_per_gpu_hour
        if usd is not None and (isinstance(usd, bool) or not isinstance(usd, numbers.Real)
                                or not 0.0 <= float(usd) < math.inf):
            raise ValueError(f"usd_per_gpu_hour must be a finite number >= 0 or None, got {usd!r}")

    # -- offline predictions --------------------------------------------------------------------------
    def knows(self, model: str) -> bool:
        """Whether ``model`` was calibrated (False before ``fit``)."""
        return model in getattr(self, "coef_", {})

    def gpu_s_given_tokens(self, model: str, prompt_tokens: ArrayLike, completion_tokens: ArrayLike) -> FloatArray:
        """GPU-seconds of ``model`` answering with known token counts: the fitted law times the live correction.

        Parameters
        ----------
        model : str
        prompt_tokens, completion_tokens : array-like of shape (n_samples,) or scalars

        Returns
        -------
        ndarray of the broadcast shape of the token counts
        """
        self._index(model)
        out: FloatArray = self.coef_[model].gpu_s(prompt_tokens, completion_tokens) * self.correction_[model]
        return out

    def expected_completion_tokens(
        self, model: str, prompt_texts: Sequence[str], prompt_tokens: ArrayLike, max_tokens: ArrayLike
    ) -> FloatArray:
        """Predicted (median) answer length of ``model``, clipped to ``[1, max_tokens]``.

        Parameters
        ----------
        model : str
        prompt_texts : sequence of str of shape (n_samples,)
        prompt_tokens, max_tokens : array-like of shape (n_samples,)

        Returns
        -------
        ndarray of shape (n_samples,)
            Completion tokens (not rounded).
        """
        j = self._index(model)
        p, m = _token_arrays(prompt_texts, prompt_tokens, max_tokens)
        return self._expected_tokens(j, self._length_features(prompt_texts, p), m)

    def predict_gpu_s(
        self, model: str, prompt_texts: Sequence[str], prompt_tokens: ArrayLike, max_tokens: ArrayLike
    ) -> FloatArray:
        """Ex-ante GPU-seconds of ``model`` answering each prompt: the law at the predicted answer length.

        Parameters
        ----------
        model : str
        prompt_texts : sequence of str of shape (n_samples,)
        prompt_tokens, max_tokens : array-like of shape (n_samples,)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        expected = self.expected_completion_tokens(model, prompt_texts, prompt_tokens, max_tokens)
        return self.gpu_s_given_tokens(model, np.asarray(prompt_tokens, dtype=np.float64), expected)

    def measured_gpu_s(self, sample: CostSample | StageResult) -> float:
        """Measured GPU-seconds of a calibration row or a live stage: engine seconds times the replica's GPUs."""
        j = self._index(sample.model)
        wall = sample.wall_s if isinstance(sample, CostSample) else sample.gpu_s
        return float(wall * self.coef_[self.models_[j]].gpus)

    def mape(self, samples: Iterable[CostSample]) -> dict[str, dict[str, float]]:
        """Mean absolute percentage error per model of the ex-ante and the given-tokens predictions.

        Parameters
        ----------
        samples : iterable of CostSample
            Held-out rows; every model must be calibrated.

        Returns
        -------
        dict of model to {"ex_ante": float, "given_tokens": float}
            Fractions (0.1 is 10%) of measured GPU-seconds, for the models present in ``samples``.
            ``ex_ante`` predicts from the prompt alone; ``given_tokens`` from the measured token counts.
        """
        check_is_fitted(self)
        rows = _check_samples(samples)
        out: dict[str, dict[str, float]] = {}
        for model in sorted({r.model for r in rows}):
            mine = [r for r in rows if r.model == model]
            measured = np.array([self.measured_gpu_s(r) for r in mine])
            p = np.array([r.prompt_tokens for r in mine])
            ante = self.predict_gpu_s(model, [r.prompt_text for r in mine], p, [r.max_tokens for r in mine])
            given = self.gpu_s_given_tokens(model, p, [r.completion_tokens for r in mine])
            out[model] = {
                "ex_ante": float(np.mean(np.abs(ante - measured) / measured)),
                "given_tokens": float(np.mean(np.abs(given - measured) / measured)),
            }
        return out

    def usd(self, gpu_s: ArrayLike) -> FloatArray:
        """Dollars of ``gpu_s`` GPU-seconds at ``usd_per_gpu_hour`` (same shape as ``gpu_s``)."""
        if self.usd_per_gpu_hour is None:
            raise ValueError("usd_per_gpu_hour is None: set it to price GPU-seconds")
        out: FloatArray = np.asarray(gpu_s, dtype=np.float64) * (float(self.usd_per_gpu_hour) / 3600.0)
        return out

    # -- live CostEstimator protocol ------------------------------------------------------------------
    def predict(self, query: QueryInfo, models: list[str], stages: dict[str, StageResult]) -> FloatArray:
        """GPU-seconds of each of ``models`` on ``query``: measured for those in ``stages``, ex ante otherwise.

        The ex-ante prompt length is a finished stage's (a replica tokenized the prompt) when there is
        one, else ``query.prompt_tokens``.

        Returns
        -------
        ndarray of shape (len(models),)
        """
        check_is_fitted(self)
        index = [self._index(m) for m in models]
        cost = np.empty(len(models))
        pending = []
        for i, model in enumerate(models):
            if model in stages:
                cost[i] = self.measured_gpu_s(stages[model])
            else:
                pending.append(i)
        if pending:
            prompt = stages[next(iter(stages))].prompt_tokens if stages else query.prompt_tokens
            p, m = np.array([prompt], dtype=np.float64), np.array([query.max_tokens], dtype=np.float64)
            x = self._query_features(query.text, p)
            for i in pending:
                expected = self._expected_tokens(index[i], x, m)
                cost[i] = float(self.gpu_s_given_tokens(models[i], p, expected)[0])
        return cost

    def observe(self, query: QueryInfo, stage: StageResult) -> None:
        """Move ``stage.model``'s correction toward measured / predicted-given-tokens, and the moving
        averages of measured and ex-ante predicted completion tokens toward the stage's, each by a
        bounded step (module docstring)."""
        check_is_fitted(self)
        if not stage.measures_rates:  # no engine timing of its own: nothing to compare the law with
            return
        j = self._index(stage.model)
        model = self.models_[j]
        a, cap = float(self.live_smoothing), float(self.live_max_log_step)
        low, high = (float(b) for b in self.live_bounds)
        # The engine prefilled only the tokens its prefix cache did not hold: price those.
        law = float(self.coef_[model].gpu_s(stage.uncached_prompt_tokens, stage.completion_tokens))
        ratio = self.measured_gpu_s(stage) / law if law > 0.0 else math.inf
        updated = bounded_update(self.correction_[model], ratio, weight=a, max_log_step=cap)
        self.correction_[model] = min(max(updated, low), high)
        self.n_observed_[model] += 1
        p = np.array([stage.prompt_tokens], dtype=np.float64)
        x = self._query_features(query.text, p)
        expected = float(self._expected_tokens(j, x, np.array([query.max_tokens], dtype=np.float64))[0])
        self.live_completion_tokens_[model] = bounded_update(
            self.live_completion_tokens_[model], float(stage.completion_tokens), weight=a, max_log_step=cap)
        self.live_expected_completion_tokens_[model] = bounded_update(
            self.live_expected_completion_tokens_[model], expected, weight=a, max_log_step=cap)

    def coefficients(self) -> dict[str, dict[str, float]]:
        """Per model, the numbers the controller exports as gauges.

        Returns
        -------
        dict of model to dict
            ``overhead_s``, ``prefill_s_per_token``, ``decode_s_per_token`` (the fitted law in GPU-seconds,
            before the correction), ``gpus``, ``correction``, ``completion_tokens`` and
            ``expected_completion_tokens`` (moving averages, measured and ex-ante predicted),
            ``n_observed``; all floats.
        """
        check_is_fitted(self)
        return {
            model: {
                "overhead_s": c.overhead_s,
                "prefill_s_per_token": c.prefill_s_per_token,
                "decode_s_per_token": c.decode_s_per_token,
                "gpus": float(c.gpus),
                "correction": self.correction_[model],
                "completion_tokens": self.live_completion_tokens_[model],
                "expected_completion_tokens": self.live_expected_completion_tokens_[model],
                "n_observed": float(self.n_observed_[model]),
            }
            for model, c in self.coef_.items()
        }

    def billed_gpu_s(self, stage: StageResult) -> float:
        """Measured GPU-seconds (engine seconds times the replica's GPUs), or for an untimed stage the law
        given its token counts (the prompt's uncached ones), times the live correction."""
        if stage.timed:
            return self.measured_gpu_s(stage)
        return float(self.gpu_s_given_tokens(stage.model, stage.uncached_prompt_tokens, stage.completion_tokens))

    def supersede_measurements(self, model: str) -> None:
        """Nothing to drop: the calibrated law stands, and the correction is bounded (module docstring)."""

    def current_rates(self, model: str) -> CostRates | None:
        """``model``'s fitted law times its live correction, in GPU-seconds; None for a model not calibrated.

        Returns
        -------
        CostRates or None
            ``prefill_s_per_token``, ``decode_s_per_token`` and ``overhead_s`` as predictions use them
            now (correction applied), and the ``correction`` itself.
        """
        check_is_fitted(self)
        law = self.coef_.get(model)
        if law is None:
            return None
        k = self.correction_[model]
        return CostRates(prefill_s_per_token=k * law.prefill_s_per_token, decode_s_per_token=k * law.decode_s_per_token,
                         overhead_s=k * law.overhead_s, correction=k)

    # -- internals ----------------------------------------------------------------------------------
    def _index(self, model: str) -> int:
        check_is_fitted(self)
        try:
            return self.models_.index(model)
        except ValueError:
            raise ValueError(f"model {model!r} was not calibrated (known: {list(self.models_)})") from None

    def _query_features(self, text: str, prompt_tokens: FloatArray) -> sp.csr_matrix:
        """One live query's features, kept for the next call: a request predicts, then observes, the
        same query several times, and the text features are most of a prediction's time."""
        key = (text, float(prompt_tokens[0]))
        cached = getattr(self, "_last_query", None)
        if cached is not None and cached[0] == key:
            x: sp.csr_matrix = cached[1]
            return x
        x = self._length_features([text], prompt_tokens)
        self._last_query = (key, x)
        return x

    def _length_features(self, prompt_texts: Sequence[str], prompt_tokens: FloatArray) -> sp.csr_matrix:
        text = self.features_.transform(prompt_texts)
        length = sp.csr_matrix(np.log1p(np.asarray(prompt_tokens, dtype=np.float64)).reshape(-1, 1))
        out: sp.csr_matrix = sp.hstack([text, length], format="csr")
        return out

    def _expected_tokens(self, j: int, x: sp.csr_matrix, max_tokens: FloatArray) -> FloatArray:
        log_tokens = np.asarray(x @ self.length_coef_[j], dtype=np.float64).reshape(-1) + self.length_intercept_[j]
        upper = np.maximum(np.asarray(max_tokens, dtype=np.float64), 1.0)
        # Cap the exponent so a wild prediction cannot overflow; the clip then makes the cap exact.
        out: FloatArray = np.clip(np.exp(np.clip(log_tokens, 0.0, 700.0)), 1.0, upper)
        return out


def _check_samples(X: Iterable[CostSample]) -> list[CostSample]:
    try:
        rows = list(X)
    except TypeError:
        raise ValueError(f"X must be an iterable of CostSample, got {type(X).__name__}") from None
    bad = sorted({type(r).__name__ for r in rows if not isinstance(r, CostSample)})
    if bad:
        raise ValueError(f"X must contain only CostSample rows, found {bad}")
    if not rows:
        raise ValueError("X is empty: need at least one calibration row")
    return rows


def _token_arrays(
    prompt_texts: Sequence[str], prompt_tokens: ArrayLike, max_tokens: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    if isinstance(prompt_texts, str):
        raise ValueError("prompt_texts must be a sequence of strings, got a single string")
    n = len(prompt_texts)
    p = np.asarray(prompt_tokens, dtype=np.float64).reshape(-1)
    m = np.asarray(max_tokens, dtype=np.float64).reshape(-1)
    if p.shape != (n,) or m.shape != (n,):
        raise ValueError(
            f"prompt_texts, prompt_tokens and max_tokens differ in length: {n}, {p.shape[0]}, {m.shape[0]}"
        )
    return p, m
