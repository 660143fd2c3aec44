"""Hashed word and character n-gram features of prompts: a stateless, download-free text featurizer.

An optional third block hashes the prompt's *shape*: character n-grams after every digit is replaced by
``0``, so ``47+385`` and ``12+907`` share features (two numbers of 2 and 3 digits) that their digit
n-grams do not. How long an answer runs often follows the size of the numbers in the question (column
sums, step-by-step arithmetic), and value n-grams cannot generalise that to numbers never seen.

Ex-ante quality estimators see only the query (algorithm-spec §1.1), and for RouterBench the query is
its prompt text. Hashing keeps the featurizer stateless and deterministic: the same prompt always maps
to the same sparse row, whatever else was fitted, with no vocabulary to learn and nothing to download.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import HashingVectorizer

__all__ = ["PromptFeatures"]

_DIGIT = re.compile(r"\d")


class PromptFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Hashed word n-grams, character n-grams and (optionally) shape n-grams of each prompt, side by side,
    L2-normalised per block.

    Parameters
    ----------
    n_word_features : int, default=2**15
        Hash buckets for word n-grams (a power of two keeps the modulo unbiased).
    n_char_features : int, default=2**15
        Hash buckets for character n-grams (within word boundaries, ``analyzer="char_wb"``).
    word_ngram_range : tuple of (int, int), default=(1, 2)
        Smallest and largest word n-gram.
    char_ngram_range : tuple of (int, int), default=(4, 5)
        Smallest and largest character n-gram.
    tail_chars : int or None, default=600
        Only the last ``tail_chars`` characters of a prompt are hashed. RouterBench prompts put the
        few-shot examples first and the actual question last, so the tail carries the query (and
        hashing cost grows with length); None hashes the whole prompt.
    n_shape_features : int, default=0
        Hash buckets for shape n-grams: character n-grams (``char_wb``) of the prompt with every digit
        replaced by ``0`` (module docstring). 0 leaves the block out.
    shape_ngram_range : tuple of (int, int), default=(2, 5)
        Smallest and largest shape n-gram.

    Attributes
    ----------
    n_features_out_ : int
        ``n_word_features + n_char_features + n_shape_features``.

    Notes
    -----
    Input is an iterable of strings (shape (n_samples,)), as for scikit-learn's own text vectorizers,
    so the estimator tags declare string input. ``fit`` learns nothing; it validates the parameters
    and the input, and ``transform`` works without it (the tags say ``requires_fit=False``).
    """

    def __init__(
        self,
        *,
        n_word_features: int = 2**15,
        n_char_features: int = 2**15,
        word_ngram_range: tuple[int, int] = (1, 2),
        char_ngram_range: tuple[int, int] = (4, 5),
        tail_chars: int | None = 600,
        n_shape_features: int = 0,
        shape_ngram_range: tuple[int, int] = (2, 5),
    ) -> None:
        self.n_word_features = n_word_features
        self.n_char_features = n_char_features
        self.word_ngram_range = word_ngram_range
        self.char_ngram_range = char_ngram_range
        self.tail_chars = tail_chars
        self.n_shape_features = n_shape_features
        self.shape_ngram_range = shape_ngram_range

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = False
        return tags

    def fit(self, X: Iterable[str], y: object = None) -> PromptFeatures:
        """Validate the parameters and the input; nothing is learned (hashing is stateless).

        Parameters
        ----------
        X : iterable of str of shape (n_samples,)
        y : ignored

        Returns
        -------
        self : PromptFeatures
        """
        self._validate_params()
        _check_texts(X)
        self.n_features_out_ = int(self.n_word_features + self.n_char_features + self.n_shape_features)
        return self

    def _validate_params(self) -> None:
        for name in ("n_word_features", "n_char_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        shape = self.n_shape_features
        if isinstance(shape, bool) or not isinstance(shape, numbers.Integral) or shape < 0:
            raise ValueError(f"n_shape_features must be a non-negative int (0: no shape block), got {shape!r}")
        for name in ("word_ngram_range", "char_ngram_range", "shape_ngram_range"):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or len(value) != 2
                or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
                or not 1 <= value[0] <= value[1]
            ):
                raise ValueError(f"{name} must be a tuple (low, high) of ints with 1 <= low <= high, got {value!r}")
        tail = self.tail_chars
        if tail is not None and (isinstance(tail, bool) or not isinstance(tail, numbers.Integral) or tail < 1):
            raise ValueError(f"tail_chars must be a positive int or None, got {self.tail_chars!r}")

    def transform(self, X: Iterable[str]) -> sp.csr_matrix:
        """Hash each prompt. Stateless, like ``HashingVectorizer``: works with or without ``fit``.

        Parameters
        ----------
        X : iterable of str of shape (n_samples,)

        Returns
        -------
        scipy.sparse.csr_matrix of shape (n_samples, n_word_features + n_char_features + n_shape_features)
            Word block first, then character block, then shape block; each block has unit L2 norm
            (zero for an empty prompt). Entries are float64 and depend on the prompt alone.
        """
        self._validate_params()
        texts = _check_texts(X)
        if self.tail_chars is not None:
            texts = [t[-self.tail_chars :] for t in texts]
        words = HashingVectorizer(
            n_features=self.n_word_features, ngram_range=self.word_ngram_range, alternate_sign=False,
            norm="l2", dtype=np.float64,
        )
        chars = HashingVectorizer(
            n_features=self.n_char_features, analyzer="char_wb", ngram_range=self.char_ngram_range,
            alternate_sign=False, norm="l2", dtype=np.float64,
        )
        blocks = [words.transform(texts), chars.transform(texts)]
        if self.n_shape_features:
            shapes = HashingVectorizer(
                n_features=self.n_shape_features, analyzer="char_wb", ngram_range=self.shape_ngram_range,
                alternate_sign=False, norm="l2", dtype=np.float64,
            )
            blocks.append(shapes.transform([_DIGIT.sub("0", t) for t in texts]))
        out: sp.csr_matrix = sp.hstack(blocks, format="csr")
        return out

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray[Any, np.dtype[np.object_]]:
        """Names ``word0..``, ``char0..`` then ``shape0..``: hashed buckets have no readable names."""
        self._validate_params()
        return np.asarray(
            [f"word{i}" for i in range(self.n_word_features)] + [f"char{i}" for i in range(self.n_char_features)]
            + [f"shape{i}" for i in range(self.n_shape_features)],
            dtype=object,
        )


def _check_texts(X: Iterable[str]) -> list[str]:
    if isinstance(X, str):
        raise ValueError("X must be an iterable of strings (one per prompt), got a single string")
    try:
        texts = list(X)
    except TypeError:
        raise ValueError(f"X must be an iterable of strings, got {type(X).__name__}") from None
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"X must contain only strings, found {sorted(set(bad))}")
    if not texts:
        raise ValueError("X is empty: need at least one prompt")
    return texts
