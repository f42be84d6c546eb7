"""The optional model on top of the rules: trained from the detector's own features, saved as a file.

`train_model` fits a gradient-boosted tree model. LightGBM is the default: on a synccfd corpus
(470k rows, time split) it reached ROC AUC 0.90 / AP 0.69 against scikit-learn's
HistGradientBoostingClassifier's 0.90 / 0.68, trained ~10x faster and saves as plain text, so
loading an artifact never unpickles code (`method="hgb"` is kept for comparison). A LightGBM
model is evaluated by `trees` (compiled) rather than `Booster.predict`, whose per-call cost
alone would exceed the detector's CPU budget. The features are exactly
`features.FEATURE_NAMES`, taken from `Detector.process(batch, features=True)` over labelled
history, so training and scoring see the same numbers.

An artifact is one file: a JSON header line (artifact version, model version, kind, feature
names and feature version, SHA-256 of the payload, training summary) and the payload. Loading
checks the hash and the version; `Detector` refuses a model whose features are not its own.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from pipelines.detect.features import FEATURE_NAMES, FEATURE_VERSION, feature_matrix
from pipelines.detect.trees import FlatTrees, flatten_lightgbm
from pipelines.errors import ConfigError, UsageError

ARTIFACT_VERSION: Final = 1
ARTIFACT_MAGIC: Final = "nova-fraud-model"
Method = Literal["lightgbm", "hgb"]


@dataclass
class FraudModel:
    """A trained model and what it was trained on."""

    kind: Method
    estimator: Any  # lightgbm.Booster or sklearn HistGradientBoostingClassifier
    feature_names: tuple[str, ...] = FEATURE_NAMES
    feature_version: int = FEATURE_VERSION
    version: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    # The rules' weight beside the model when the config leaves it unset (see train_model): 1 keeps the
    # rules' noisy-OR, 0 ranks by the model alone (it has the rules' score among its features).
    rules_weight: float = 1.0
    # Ranking alone, the probability it alerts at (see train_model); None: the config's alert_threshold.
    alert_threshold: float | None = None
    _flat: FlatTrees | None = field(default=None, repr=False, compare=False)

    def predict(self, features: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """P(fraud) per row (float64), from a matrix in feature_names order or named columns."""
        matrix = feature_matrix(features) if isinstance(features, Mapping) else features
        if len(matrix) == 0:
            return np.zeros(0)
        if self.kind == "lightgbm":
            if self._flat is None:
                self._flat = flatten_lightgbm(self.estimator)
            return self._flat.predict(matrix)
        return np.asarray(self.estimator.predict_proba(matrix)[:, 1], dtype=np.float64)

    def check_features(self, names: Sequence[str]) -> None:
        """ConfigError unless the model was trained on exactly these features (same version)."""
        if tuple(self.feature_names) == tuple(names) and self.feature_version == FEATURE_VERSION:
            return
        missing = [n for n in names if n not in self.feature_names]
        extra = [n for n in self.feature_names if n not in names]
        detail = []
        if missing:
            detail.append(f"it lacks {', '.join(missing)}")
        if extra:
            detail.append(f"it has unknown {', '.join(extra)}")
        if not detail:
            detail.append(f"feature version {self.feature_version} (or order) differs from {FEATURE_VERSION}")
        raise ConfigError(
            f"fraud model {self.version!r} was trained on other features than this detector computes: "
            + "; ".join(detail),
            hint="retrain it with `nova fraud train`, or set detection.model to null",
        )

    def _payload(self) -> bytes:
        if self.kind == "lightgbm":
            return str(self.estimator.model_to_string()).encode()
        return pickle.dumps(self.estimator, protocol=pickle.HIGHEST_PROTOCOL)

    def save(self, path: str | Path) -> Path:
        """Write the artifact (header line + payload); returns the path."""
        payload = self._payload()
        header = {
            "magic": ARTIFACT_MAGIC,
            "artifact_version": ARTIFACT_VERSION,
            "version": self.version,
            "kind": self.kind,
            "feature_names": list(self.feature_names),
            "feature_version": self.feature_version,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "rules_weight": self.rules_weight,
            "alert_threshold": self.alert_threshold,
            "summary": self.summary,
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(json.dumps(header).encode() + b"\n" + payload)
        tmp.replace(target)  # a worker loading it never sees half a file
        return target

    @classmethod
    def load(cls, path: str | Path) -> FraudModel:
        """Read an artifact written by `save`; ConfigError if it is missing, damaged or of another version."""
        source = Path(path)
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"fraud model {source} does not exist", hint="train one with `nova fraud train` or set detection.model"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read fraud model {source}: {exc.strerror}") from None
        line, _, payload = data.partition(b"\n")
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("magic") != ARTIFACT_MAGIC:
            raise ConfigError(f"{source} is not a nova fraud model", hint="point detection.model at a trained artifact")
        if header.get("artifact_version") != ARTIFACT_VERSION:
            raise ConfigError(
                f"fraud model {source} has artifact version {header.get('artifact_version')!r}; "
                f"this nova reads {ARTIFACT_VERSION}",
                hint="retrain it with `nova fraud train`",
            )
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise ConfigError(f"fraud model {source} is damaged (hash mismatch)", hint="retrain it or copy it again")
        kind = header.get("kind")
        if kind == "lightgbm":
            import lightgbm

            estimator: Any = lightgbm.Booster(model_str=payload.decode())
        elif kind == "hgb":
            estimator = pickle.loads(payload)  # our own artifact (kind hgb), hash-checked above
        else:
            raise ConfigError(f"fraud model {source} has unknown kind {kind!r}")
        return cls(
            kind=kind,
            estimator=estimator,
            feature_names=tuple(header.get("feature_names", ())),
            feature_version=int(header.get("feature_version", 0)),
            version=str(header.get("version", "")),
            summary=dict(header.get("summary") or {}),
            rules_weight=float(header.get("rules_weight", 1.0)),
            alert_threshold=None if header.get("alert_threshold") is None else float(header["alert_threshold"]),
        )


def train_model(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    method: Method = "lightgbm",
    seed: int = 0,
    version: str | None = None,
    trees: int = 100,
    leaves: int = 7,
    learning_rate: float = 0.1,
    event_time_ms: np.ndarray | None = None,
    alert_threshold: float = 0.7,
) -> FraudModel:
    """Fit P(fraud | features) on labelled rows; the version defaults to `<kind>-<hash of the model>`.

    The default size (100 trees of 7 leaves) was picked by measurement: on synccfd and on the
    generator's corpus it scored within ~0.01 AP of 150 trees of 15 leaves (better on synccfd)
    at a third of the scoring cost, which every row of the stream pays.

    With `event_time_ms` (each row's event time), the model also chooses its `rules_weight`: a
    model fitted on all but the latest VALIDATION_SHARE of the rows (by event time) is judged on
    that latest part, alone and beside the rules (noisy-OR), by average precision; it ranks alone
    (rules_weight 0) only if it did better so, with at least VALIDATION_MIN_FRAUDS frauds on each
    side of the split (a generator's frauds start days into its corpus, and a first model's
    earlier part may hold 2 of its 90, fitting nothing worth judging). A young
    model does worse alone than the rules it learns from, a grown one better (measured by replay
    with retraining: synccfd AP 0.727 -> 0.750, a Handbook-style corpus 0.604 -> 0.636, the
    generator's one model keeps the rules). The figures are in the summary's `validation`.

    A model that ranks alone also chooses the probability it alerts at (`alert_threshold`), since
    its probability is not on the rules' scale: trained on frauds not yet reported (labelled
    legitimate at the time) and shrunk by the L2 term, it is underconfident, and the config's
    `alert_threshold` (the score of the rules and the model together) would silence it. Measured
    on the generator's corpus: a model chosen alone ranked its days at AP 0.96 but alerted on 12 %
    of the frauds at 0.7, against 95 % at 0.05. So on the validation part it keeps the recall the
    rules and the model had together at `alert_threshold` (the highest probability that catches as
    many frauds), unless that costs precision below theirs (then the lowest probability that keeps
    their precision), and never goes above `alert_threshold` (`_threshold_alone`).
    """
    matrix = feature_matrix(features)
    y = np.asarray(labels).astype(np.int8)
    if len(y) != len(matrix):
        raise UsageError(f"{len(matrix)} feature rows but {len(y)} labels")
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise UsageError(
            f"training needs both frauds and legitimate rows; got {positives} frauds in {len(y)} rows",
            hint="train on a longer labelled history",
        )
    fit: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "trees": trees,
        "leaves": leaves,
        "learning_rate": learning_rate,
    }
    estimator = _fit(matrix, y, **fit)
    model = FraudModel(
        kind=method,
        estimator=estimator,
        summary={"rows": len(y), "frauds": positives, "trees": trees, "leaves": leaves, "seed": seed},
    )
    if event_time_ms is not None:
        model.rules_weight, model.alert_threshold, model.summary["validation"] = _choose_rules_weight(
            matrix, y, event_time_ms, fit, alert_threshold
        )
    model.version = version or f"{method}-{hashlib.sha256(model._payload()).hexdigest()[:12]}"
    return model


VALIDATION_SHARE: Final = 0.25
VALIDATION_MIN_FRAUDS: Final = 20


def _choose_rules_weight(
    matrix: np.ndarray, y: np.ndarray, event_time_ms: np.ndarray, fit: dict[str, Any], alert_threshold: float
) -> tuple[float, float | None, dict[str, Any]]:
    """(rules_weight, the alert threshold ranking alone, the validation figures): see train_model."""
    from sklearn.metrics import average_precision_score

    t = np.asarray(event_time_ms, dtype=np.int64)
    if len(t) != len(y):
        raise UsageError(f"{len(y)} training rows but {len(t)} event times")
    order = np.argsort(t, kind="stable")
    cut = int(len(order) * (1.0 - VALIDATION_SHARE))
    early, late = order[:cut], order[cut:]
    figures: dict[str, Any] = {"rows": len(late), "frauds": int(y[late].sum())}
    if min(figures["frauds"], int(y[early].sum())) < VALIDATION_MIN_FRAUDS or y[early].all():
        figures["chosen"] = "rules_and_model (too few frauds to judge)"
        return 1.0, None, figures
    p = FraudModel(kind=fit["method"], estimator=_fit(matrix[early], y[early], **fit)).predict(matrix[late])
    rules = matrix[late, FEATURE_NAMES.index("rules_score")].astype(np.float64)
    together = 1.0 - (1.0 - rules) * (1.0 - p)
    alone = float(average_precision_score(y[late], p))
    beside = float(average_precision_score(y[late], together))
    figures.update({"ap_rules": float(average_precision_score(y[late], rules)), "ap_model": alone})
    figures["ap_rules_and_model"] = beside
    figures["chosen"] = "model" if alone > beside else "rules_and_model"
    if alone <= beside:
        return 1.0, None, figures
    threshold = _threshold_alone(y[late].astype(bool), p, together, alert_threshold)
    figures.update(_operating_point("rules_and_model", y[late], together, alert_threshold))
    figures.update(_operating_point("model", y[late], p, threshold))
    figures["alert_threshold"] = threshold
    return 0.0, threshold, figures


def _threshold_alone(fraud: np.ndarray, p: np.ndarray, together: np.ndarray, alert_threshold: float) -> float:
    """Where `p` alerts ranking alone, given what `together` did at `alert_threshold` (see train_model).

    The highest probability that catches as many frauds as `together` did, unless its precision
    falls below theirs there: then the lowest that keeps their precision; never above
    `alert_threshold`. Scores are compared in float32, as the detector compares them.
    """
    p32, threshold = p.astype(np.float32), np.float32(alert_threshold)
    flagged = together.astype(np.float32) >= threshold
    caught = int((flagged & fraud).sum())
    if not caught:
        return alert_threshold
    order = np.argsort(-p32, kind="stable")
    ranked = p32[order]
    hits = np.cumsum(fraud[order])
    last = np.flatnonzero(np.append(ranked[1:] < ranked[:-1], True))  # each distinct probability's last row
    at = last[np.searchsorted(hits[last], caught)]  # the first that catches `caught` frauds
    precision = hits[last] / (last + 1)
    floor = caught / int(flagged.sum())
    if precision[np.searchsorted(last, at)] < floor:
        keeps = last[(precision >= floor) & (ranked[last] <= threshold)]
        if not len(keeps):
            return alert_threshold
        at = int(keeps[-1])
    return min(alert_threshold, float(ranked[at]))


def _operating_point(name: str, y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float | None]:
    alerted = score.astype(np.float32) >= np.float32(threshold)
    hits = int((alerted & (y == 1)).sum())
    return {
        f"recall_{name}": hits / max(int(y.sum()), 1),
        f"precision_{name}": hits / int(alerted.sum()) if alerted.any() else None,
    }


def _fit(
    matrix: np.ndarray, y: np.ndarray, *, method: Method, seed: int, trees: int, leaves: int, learning_rate: float
) -> Any:
    estimator: Any
    if method == "lightgbm":
        import lightgbm

        params = {
            "objective": "binary",
            "learning_rate": learning_rate,
            "num_leaves": leaves,
            "min_data_in_leaf": 20,
            # L2 on leaf values: fraud is rare and often nearly separable, and without it a leaf of a few
            # frauds gets an unbounded value and boosting diverges (measured on the generator's corpus:
            # AP 0.49 with 100 trees, 0.40 with 200; 0.99 with lambda_l2 = 1)
            "lambda_l2": 1.0,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "seed": seed,
            "deterministic": True,
            "num_threads": 1,
            "verbose": -1,
        }
        estimator = lightgbm.train(params, lightgbm.Dataset(matrix, y, feature_name=list(FEATURE_NAMES)), trees)
    elif method == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        estimator = HistGradientBoostingClassifier(
            max_iter=trees, max_leaf_nodes=leaves, learning_rate=learning_rate, random_state=seed
        ).fit(matrix, y)
    else:
        raise UsageError(f"unknown training method {method!r}; use lightgbm or hgb")
    return estimator
