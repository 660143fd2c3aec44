"""Quality and cost estimators (scikit-learn contract), the live adapters the controller runs, the
query x model table they learn from, answer extraction, and calibration artifacts.

Import the module you need (``estimators.stage``, ``estimators.trained_quality``, ...): this package
re-exports nothing, so a numpy-only module never pays for scikit-learn.
"""
