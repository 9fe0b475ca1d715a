"""The cost model: features of a loop nest and an XGBoost model trained on measurements.

    estimate.py   the analytic estimate from the machine model (the model's prior)
    features.py   extract_features(nest, target) -> vector; FEATURE_NAMES documents each entry
    xgb.py        XGBCostModel: fit / predict / save / load (XGBoost's own format)
    metrics.py    pairwise accuracy, top-k recall, Kendall tau on held-out records
"""
