"""The scikit-learn API contract of the estimators that take non-array inputs.

PromptFeatures takes strings, TrainedQualityEstimator a QueryModelTable and GpuTimeCostModel
CostSample rows, so (as for sklearn's own text vectorizers) the data-driven checks, which feed 2-D
numeric arrays, do not apply; these are the checks of the API contract that need no data. Fitting,
immutability of parameters, idempotence and pickling are tested by hand in each estimator's module.
"""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import (
    check_do_not_raise_errors_in_init_or_set_params,
    check_estimator_cloneable,
    check_estimator_repr,
    check_estimator_tags_renamed,
    check_get_params_invariance,
    check_mixin_order,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
    check_valid_tag_types,
)

from estimators.calibrated_cost import GpuTimeCostModel
from estimators.text_features import PromptFeatures
from estimators.trained_quality import TrainedQualityEstimator

_API_CHECKS = (
    check_estimator_cloneable,
    check_estimator_tags_renamed,
    check_valid_tag_types,
    check_estimator_repr,
    check_no_attributes_set_in_init,
    check_do_not_raise_errors_in_init_or_set_params,
    check_mixin_order,
    check_parameters_default_constructible,
    check_get_params_invariance,
    check_set_params,
)


@pytest.mark.parametrize("estimator", [PromptFeatures(), TrainedQualityEstimator(), GpuTimeCostModel()], ids=type)
@pytest.mark.parametrize("check", _API_CHECKS, ids=lambda c: c.__name__)
def test_data_free_sklearn_api_checks(estimator: object, check: object) -> None:
    check(type(estimator).__name__, estimator)  # type: ignore[operator]
