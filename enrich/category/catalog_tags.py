"""A catalog's own tags ("metal; ages 3+"), as the tagger learns them: which are learned, the threshold they are
predicted from, and how well."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.special import expit
from sklearn.metrics import precision_recall_curve, precision_recall_fscore_support


def tag_counts(tags: pl.Series, min_count: int) -> dict[str, int]:
    """Listings per tag, for the tags at least `min_count` listings carry, most frequent first. Tags are told apart
    without regard to case, as Shopify's are: "Metal" and "metal" are one tag, named by its most common spelling."""
    spellings = (pl.DataFrame({"tag": tags.explode().drop_nulls()}).with_columns(key=pl.col("tag").str.to_lowercase())
                 .group_by("key", "tag").len().sort("key", "len", "tag", descending=[False, True, False]))
    merged = spellings.group_by("key", maintain_order=True).agg(pl.col("tag").first(), pl.col("len").sum())
    merged = merged.filter(pl.col("len") >= min_count).sort("len", "tag", descending=[True, False])
    return {tag: int(n) for tag, n in zip(merged["tag"].to_list(), merged["len"].to_list())}


def micro_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Micro precision, recall and F1 of (listings, tags) yes/no predictions against the truth (0 where undefined)."""
    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average="micro", zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def best_tag_threshold(probabilities: np.ndarray, targets: np.ndarray, fallback: float = 0.5) -> float:
    """The probability threshold with the best micro F1 over every (listing, tag) pair; `fallback` when no pair is
    a yes. One threshold for all tags: a validation split holds too few listings per rare tag to set one each."""
    truth = targets.ravel() > 0
    if not truth.any():
        return fallback
    precision, recall, thresholds = precision_recall_curve(truth, probabilities.ravel())
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def tag_metrics(tag_logits: np.ndarray, targets: np.ndarray, threshold: float) -> dict:
    """Micro precision, recall and F1 of the tags predicted at `threshold`, and how many listings carry any."""
    return {**micro_scores(expit(tag_logits) >= threshold, targets > 0),
            "listings_with_tags": int((targets > 0).any(1).sum()), "tags": int(targets.shape[1])}
