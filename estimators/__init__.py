"""Quality and cost estimators (scikit-learn contract) and the benchmark data they learn from."""

from estimators.routerbench import MODEL_SETS, ROUTERBENCH_MODELS, RouterBenchTable, load_routerbench
from estimators.simulated import (
    NOISE_LEVELS,
    NoiseLevel,
    NoisySignals,
    PerModelLinearCalibrator,
    draw_noise,
    simulated_estimates,
)

__all__ = [
    "MODEL_SETS",
    "NOISE_LEVELS",
    "ROUTERBENCH_MODELS",
    "NoiseLevel",
    "NoisySignals",
    "PerModelLinearCalibrator",
    "RouterBenchTable",
    "draw_noise",
    "load_routerbench",
    "simulated_estimates",
]
