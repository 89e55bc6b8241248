"""Seeded samples of a large catalog: what the fits that need no more than a sample are fitted on."""

from __future__ import annotations

import numpy as np


def fit_sample(rows: int, limit: int, seed: int) -> np.ndarray:
    """Sorted positions of at most `limit` of `rows` listings, drawn at random: all of them when they fit."""
    if rows <= limit:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
