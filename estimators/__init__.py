"""Quality and cost estimators (scikit-learn contract) and the benchmark data they learn from."""

from estimators.answer_signals import AnswerSignals, answer_signals
from estimators.per_model_classifier import PerModelClassifier
from estimators.routerbench import MODEL_SETS, ROUTERBENCH_MODELS, RouterBenchTable, load_routerbench, split_by_file
from estimators.simulated import (
    NOISE_LEVELS,
    NoiseLevel,
    NoisySignals,
    PerModelLinearCalibrator,
    draw_noise,
    simulated_estimates,
)
from estimators.text_features import PromptFeatures
from estimators.trained_estimates import TrainedEstimates
from estimators.trained_quality import PreparedQueries, TrainedQualityEstimator

__all__ = [
    "MODEL_SETS",
    "NOISE_LEVELS",
    "ROUTERBENCH_MODELS",
    "AnswerSignals",
    "NoiseLevel",
    "NoisySignals",
    "PerModelClassifier",
    "PerModelLinearCalibrator",
    "PreparedQueries",
    "PromptFeatures",
    "RouterBenchTable",
    "TrainedEstimates",
    "TrainedQualityEstimator",
    "answer_signals",
    "draw_noise",
    "load_routerbench",
    "simulated_estimates",
    "split_by_file",
]
