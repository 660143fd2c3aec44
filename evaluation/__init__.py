"""``cascade eval``: benchmark data, the paper's simulated estimators and offline protocol, its metrics
(budget grid, AUC, bootstrap) and plots."""
