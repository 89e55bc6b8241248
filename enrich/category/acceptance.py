"""When a predicted category can be accepted without a human, and how deep.

Each level of the predicted path has a score: the mix's share of the paths under that prefix. Scores are calibrated
level by level (isotonic regression: a raw share mapped to the share of such predictions that were right), then each
level gets the lowest calibrated score at which the predictions above it reach the target precision (by default,
with 90% confidence: not merely on average over the calibration listings). A listing's
`category_confident` is the deepest level, from the top, that clears its threshold; `review` says a human should
look: the full path is not confident. Everything is fitted on listings none of the models learned from (the index's
calibration split) and saved as plain numbers (`acceptance.json`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import beta
from sklearn.isotonic import IsotonicRegression

from enrich.category.calibration import expected_calibration_error
from enrich.catalog.paths import path_levels, path_prefix


@dataclass
class AcceptancePolicy:
    FILE = "acceptance.json"

    target_precision: float
    calibrators: list[tuple[list[float], list[float]]]  # per depth: the isotonic map's knots (raw -> calibrated)
    thresholds: list[float | None]  # per depth: the calibrated score to clear; None: never accepted at that depth
    metrics: dict = field(default_factory=dict)  # per depth: listings, ECE before and after, precision and share kept
    confidence: float | None = None  # the target precision's lower bound was held to at this confidence; None: on average

    @classmethod
    def fit(cls, level_scores: list[list[float]], predicted: list[str], truth: list[str], target_precision: float = 0.9,
            confidence: float | None = 0.9, min_listings: int = 20) -> "AcceptancePolicy":
        """From the calibration split's predicted paths, their level scores and their true paths. With `confidence`,
        a threshold is kept only where the precision above it is at least the target with that confidence (the
        exact binomial lower bound), not merely on average: a few hundred calibration listings estimate a
        precision only to a few points, and the scores were fitted on the same listings."""
        depth = max((len(s) for s in level_scores), default=0)
        calibrators, thresholds, metrics = [], [], {}
        for d in range(1, depth + 1):
            rows = [i for i, s in enumerate(level_scores) if len(s) >= d]
            raw = np.array([level_scores[i][d - 1] for i in rows])
            right = np.array([path_prefix(predicted[i], d) == path_prefix(truth[i], d) for i in rows], dtype=float)
            if len(rows) < min_listings:  # too few to calibrate or to promise a precision at this depth
                calibrators.append(([0.0, 1.0], [0.0, 1.0]))
                thresholds.append(None)
                continue
            isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, right)
            calibrated = isotonic.predict(raw)
            threshold = _lowest_threshold(calibrated, right, target_precision, confidence)
            calibrators.append(([float(x) for x in isotonic.X_thresholds_], [float(y) for y in isotonic.y_thresholds_]))
            thresholds.append(threshold)
            kept = calibrated >= threshold if threshold is not None else np.zeros(len(rows), bool)
            metrics[f"depth {d}"] = {
                "listings": len(rows), "ece_before": expected_calibration_error(raw, right),
                "ece_after": expected_calibration_error(calibrated, right), "threshold": threshold,
                "accepted_share": float(kept.mean()), "accepted_precision": float(right[kept].mean()) if kept.any() else None}
        return cls(target_precision, calibrators, thresholds, metrics, confidence)

    def calibrated(self, level_scores: list[float]) -> list[float]:
        return [float(np.interp(s, *self.calibrators[d])) if d < len(self.calibrators) else 0.0
                for d, s in enumerate(level_scores)]

    def confident_depth(self, level_scores: list[float]) -> int:
        """How many levels, from the top, clear their thresholds."""
        depth = 0
        for d, score in enumerate(self.calibrated(level_scores)):
            threshold = self.thresholds[d] if d < len(self.thresholds) else None
            if threshold is None or score < threshold:
                break
            depth = d + 1
        return depth

    def decide(self, path: str | None, level_scores: list[float]) -> tuple[str | None, bool]:
        """(category_confident, review) of a predicted path."""
        if not path:
            return None, True
        depth = self.confident_depth(level_scores)
        return (path_prefix(path, depth) or None), depth < len(path_levels(path))

    def save(self, folder: Path) -> None:
        (folder / self.FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: Path) -> "AcceptancePolicy":
        saved = json.loads((folder / cls.FILE).read_text())
        saved["calibrators"] = [tuple(c) for c in saved["calibrators"]]
        return cls(**saved)


def _lowest_threshold(calibrated: np.ndarray, right: np.ndarray, target: float, confidence: float | None = None) -> float | None:
    """The lowest score whose listings at or above it are right at least `target` of the time (the most accepted);
    with `confidence`, the Clopper-Pearson lower bound of that share at that confidence must reach `target`."""
    order = np.argsort(-calibrated, kind="stable")
    hits, seen = np.cumsum(right[order]), np.arange(1, len(order) + 1)
    precision = hits / seen if confidence is None else np.nan_to_num(beta.ppf(1 - confidence, hits, seen - hits + 1))
    candidates = [i for i in range(len(order)) if precision[i] >= target
                  and (i + 1 == len(order) or calibrated[order[i + 1]] < calibrated[order[i]])]  # only where a score ends
    return float(calibrated[order[max(candidates)]]) if candidates else None
