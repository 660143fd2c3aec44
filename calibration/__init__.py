"""``cascade calibrate``: the user's labelled prompts, graders, a replay through the live fleet, and the
fit of quality estimators, GPU-time cost model and lambdas."""
