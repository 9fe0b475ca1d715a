"""The XGBoost cost model: predicts how fast a schedule runs, to rank candidates unmeasured.

A two-method contract as in TVM's auto_scheduler: `fit(features, gflops, groups)` on the
measurements so far and `predict(features) -> scores` (higher is faster). Before the first
fit, `predict` returns the prior: the analytic estimate from the machine model, which is one
of the features (costmodel/estimate.py). Labels are throughput
normalised by the best of the same task (a task's best scores 1, a failed candidate 0), so one
model learns across tasks; with `objective="rank"` XGBoost's pairwise ranking is used instead,
each task a query group. Which of the two ranks better is measured, not assumed
(notebooks/cost_model.ipynb). Hist trees with 64 bins fit 5,000 x 150 in 0.5-1 s and predict
10,000 rows in ~15 ms, so the search refits whenever it has new measurements (once a batch).

Saved in XGBoost's own JSON format (never pickled), with the feature version beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from costmodel.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES

ESTIMATE = FEATURE_NAMES.index("estimate")


@dataclass(frozen=True, slots=True)
class CostModelParams:
    objective: str = "regression"  # or "rank"
    rounds: int = 100
    max_depth: int = 6
    eta: float = 0.2
    min_child_weight: float = 1.0
    max_bin: int = 64
    seed: int = 0
    threads: int = 1  # XGBoost's threads (fits run between batches, while measuring idles)


def normalized_labels(gflops: np.ndarray, groups: np.ndarray) -> np.ndarray:
    labels = np.zeros(len(gflops), dtype=np.float32)
    for g in np.unique(groups):
        mask = groups == g
        best = gflops[mask].max()
        if best > 0:
            labels[mask] = gflops[mask] / best
    return labels


class XGBCostModel:
    def __init__(self, params: CostModelParams = CostModelParams()):
        self.params = params
        self._booster = None

    @property
    def fitted(self) -> bool:
        return self._booster is not None

    def _xgb_params(self) -> dict:
        p = self.params
        return {"objective": "rank:pairwise" if p.objective == "rank" else "reg:squarederror",
                "tree_method": "hist", "max_bin": p.max_bin, "max_depth": p.max_depth,
                "eta": p.eta, "min_child_weight": p.min_child_weight, "seed": p.seed,
                "nthread": p.threads, "verbosity": 0}

    def fit(self, features: np.ndarray, gflops: np.ndarray, groups: np.ndarray) -> None:
        import xgboost as xgb

        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != N_FEATURES:
            raise ValueError(f"features must be (n, {N_FEATURES}), got {features.shape}")
        gflops = np.asarray(gflops, dtype=np.float64)
        groups = np.asarray(groups)
        order = np.argsort(groups, kind="stable")  # ranking wants each query contiguous
        labels = normalized_labels(gflops, groups)[order]
        _, qid = np.unique(groups[order], return_inverse=True)
        data = xgb.DMatrix(features[order], label=labels,
                           qid=qid if self.params.objective == "rank" else None)
        self._booster = xgb.train(self._xgb_params(), data, num_boost_round=self.params.rounds)

    def predict(self, features: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        features = np.asarray(features, dtype=np.float32)
        if self._booster is None:
            return features[:, ESTIMATE].astype(np.float64)
        return self._booster.predict(xgb.DMatrix(features))

    def feature_importance(self) -> dict[str, float]:
        from costmodel.features import FEATURE_NAMES

        gain = self._booster.get_score(importance_type="gain")
        return {FEATURE_NAMES[int(k[1:])]: v for k, v in gain.items()}

    def save(self, path: str) -> None:
        self._booster.save_model(path)
        with open(path + ".meta.json", "w") as f:
            json.dump({"feature_version": FEATURE_VERSION, "objective": self.params.objective,
                       "n_features": N_FEATURES}, f)

    @staticmethod
    def load(path: str) -> "XGBCostModel":
        import xgboost as xgb

        from tuner.errors import TunerError

        try:
            with open(path + ".meta.json") as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise TunerError(f"cannot read cost model metadata {path}.meta.json: {err}") from None
        if meta.get("feature_version") != FEATURE_VERSION:
            raise TunerError(f"cost model {path} was trained on feature version "
                             f"{meta.get('feature_version')}, this tuner has {FEATURE_VERSION}")
        model = XGBCostModel(CostModelParams(objective=meta["objective"]))
        model._booster = xgb.Booster()
        model._booster.load_model(path)
        return model
