"""Calibration: how far a score can be read as the chance of being right, and temperature scaling to make it so."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import softmax


def score_bins(scores: np.ndarray, bins: int = 10) -> np.ndarray:
    """Each score's bin among `bins` equal-width bins over 0..1."""
    edges = np.linspace(0, 1, bins + 1)
    return np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)


def expected_calibration_error(scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |confidence - accuracy| over equal-width score bins, weighted by their share of listings."""
    which = score_bins(scores, bins)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(scores[mask].mean() - correct[mask].mean())
    return float(error)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises validation NLL (Guo et al., 2017)."""
    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t), axis=1)
        return float(-np.log(p[np.arange(len(labels)), labels] + 1e-12).mean())
    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))
