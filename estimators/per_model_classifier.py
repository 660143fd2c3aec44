"""One binary probabilistic classifier per model: P(model i answers query x correctly) from query features.

The ex-ante quality estimator of algorithm-spec §1.1 for 0/1 quality: column ``i`` of the target
matrix is model ``i``'s correctness, and each column gets its own clone of a probabilistic classifier
(logistic regression by default), fitted on the same features. A model that was always right (or
always wrong) on the training rows gets a Laplace-smoothed constant instead of a classifier, so every
probability stays strictly inside (0, 1) and every logit is finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data as _validate_data

__all__ = ["PerModelClassifier"]

FloatArray = NDArray[np.float64]


class PerModelClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Independent binary classifiers, one per output column, sharing the same features.

    Parameters
    ----------
    estimator : classifier or None, default=None
        Cloned once per column; must have ``predict_proba`` and ``decision_function`` (a linear
        classifier). None means ``LogisticRegression(max_iter=1000)``. The caller's instance is never
        fitted.

    Attributes
    ----------
    classes_ : ndarray
        The labels. With a 2-D ``y`` (one 0/1 column per model) ``[0, 1]``; with a 1-D ``y`` its two
        labels (or its one label, when only one occurs).
    estimators_ : list of (fitted estimator or None), length n_outputs
        Per column; None where the column held a single label.
    constant_proba_ : ndarray of shape (n_outputs,)
        Per column, the Laplace-smoothed rate ``(n_positive + 1) / (n + 2)`` of ``classes_[-1]``; the
        prediction of single-label columns.
    n_outputs_ : int
    n_features_in_ : int

    Notes
    -----
    With a 2-D ``y``, ``predict_proba`` returns the (n_samples, n_outputs) probabilities of label 1 (the
    multilabel convention of e.g. ``MLPClassifier``) and ``decision_function`` their logits; with a
    1-D ``y`` both follow the binary convention ((n_samples, 2) and (n_samples,)). Only binary
    targets are supported.
    """

    def __init__(self, *, estimator: Any = None) -> None:
        self.estimator = estimator

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_class = False
        tags.classifier_tags.multi_label = True
        return tags

    def fit(self, X: ArrayLike, y: ArrayLike) -> PerModelClassifier:
        """Fit one classifier per column of ``y``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Binary labels; a 2-D ``y`` must hold 0/1 (one column per model).

        Returns
        -------
        self : PerModelClassifier
        """
        base = LogisticRegression(max_iter=1000) if self.estimator is None else self.estimator
        if not (hasattr(base, "fit") and hasattr(base, "predict_proba") and hasattr(base, "decision_function")):
            raise ValueError(
                f"estimator must be a classifier with predict_proba and decision_function, got {base!r}"
            )
        X, y = _validate_data(self, X, y, accept_sparse=("csr", "csc"), multi_output=True, dtype=np.float64)
        y = np.asarray(y)
        check_classification_targets(y)
        self._ravel = y.ndim == 1
        if self._ravel:
            y_type = type_of_target(y, input_name="y")
            if y_type not in ("binary", "unknown") and len(np.unique(y)) > 2:
                raise ValueError(f"Only binary classification is supported. The type of the target is {y_type}.")
            self.classes_, codes = np.unique(y, return_inverse=True)
            columns = codes.reshape(-1, 1)
        else:
            y_type = type_of_target(y, input_name="y")
            if y_type != "multilabel-indicator" and not np.all(np.isin(y, (0, 1))):
                raise ValueError(
                    "Only binary classification is supported: a 2-D y must hold 0/1 labels, one column per "
                    f"model. The type of the target is {y_type}."
                )
            self.classes_ = np.array([0, 1])
            columns = y.astype(np.intp)
        n, k = columns.shape
        estimators: list[Any] = []
        for j in range(k):
            col = columns[:, j]
            estimators.append(clone(base).fit(X, col) if np.unique(col).shape[0] == 2 else None)
        self.estimators_ = estimators
        self.constant_proba_ = (columns.sum(axis=0) + 1.0) / (n + 2.0)
        if self._ravel and self.classes_.shape[0] == 1:
            # The one label seen counts as positive: its smoothed rate is (n + 1) / (n + 2).
            self.constant_proba_ = np.array([(n + 1.0) / (n + 2.0)])
        self.n_outputs_ = k
        return self

    def decision_function(self, X: ArrayLike) -> FloatArray:
        """Logit of P(positive) per column.

        Returns
        -------
        ndarray of shape (n_samples,) for a 1-D ``y``, (n_samples, n_outputs) for a 2-D one
        """
        logits = self._logits(X)
        return logits[:, 0] if self._ravel else logits

    def predict_proba(self, X: ArrayLike) -> FloatArray:
        """Probability of the positive label (label 1; ``classes_[-1]`` for a 1-D ``y``).

        Returns
        -------
        ndarray of shape (n_samples, n_outputs) for a 2-D ``y``; for a 1-D ``y`` shape
        (n_samples, n_classes), columns in ``classes_`` order, rows summing to 1
        """
        p = _sigmoid(self._logits(X))
        if not self._ravel:
            return p
        if self.classes_.shape[0] == 1:
            return np.ones((p.shape[0], 1))
        return np.column_stack([1.0 - p[:, 0], p[:, 0]])

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Most probable label per column (ties go to the positive label's complement).

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
        """
        logits = self._logits(X)
        if self._ravel:
            if self.classes_.shape[0] == 1:
                return np.repeat(self.classes_, logits.shape[0])
            out: NDArray[Any] = self.classes_[(logits[:, 0] > 0).astype(np.intp)]
            return out
        return (logits > 0).astype(np.int64)

    def _logits(self, X: ArrayLike) -> FloatArray:
        check_is_fitted(self)
        x = _validate_data(self, X, accept_sparse=("csr", "csc"), reset=False, dtype=np.float64)
        n = x.shape[0]
        out = np.empty((n, self.n_outputs_))
        for j, est in enumerate(self.estimators_):
            if est is None:
                p = self.constant_proba_[j]
                out[:, j] = np.log(p) - np.log1p(-p)
            else:
                out[:, j] = np.asarray(est.decision_function(x), dtype=np.float64).reshape(n)
        return out


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|
    return out
