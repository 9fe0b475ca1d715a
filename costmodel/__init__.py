"""The cost model: features of a loop nest and an XGBoost model trained on measurements.

    features.py   extract_features(nest, threads) -> vector; FEATURE_NAMES documents each entry
    model.py      XGBModel: fit / predict / save / load (XGBoost's own format)
    metrics.py    pairwise accuracy, top-k recall, Kendall tau on held-out records
"""
