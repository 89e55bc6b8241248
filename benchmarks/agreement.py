"""How far the catalog agrees with itself: held-out listings against their nearest reference listing, beside
enrich, by how similar that listing is. Near copies labelled apart bound what any classifier can score; a near
copy's engagement bounds what any prior built from neighbours can do."""

from __future__ import annotations

import numpy as np

from benchmarks.common import rho


NEAR_COPY_COSINES = (0.98, 0.95, 0.90)  # the nearest reference listing is the same product or a variant of it


def similarity_buckets(nearest_sim: np.ndarray, usable: np.ndarray, thresholds=NEAR_COPY_COSINES):
    """(threshold, mask) of the usable listings whose nearest reference listing is at least that similar, then
    (None, mask) of the rest."""
    for threshold in thresholds:
        yield threshold, usable & (nearest_sim >= threshold)
    yield None, usable & (nearest_sim < thresholds[-1])


def label_agreement(candidate_categories: np.ndarray, sims: np.ndarray, truth: list, predicted: list,
                    thresholds: tuple[float, ...] = NEAR_COPY_COSINES) -> list[dict]:
    """How far the catalog's labels agree with themselves, beside enrich's accuracy on the same listings.

    For the held-out listings whose most similar reference listing with a category is at least this similar, the
    share labelled as that listing is, and the share enrich got right. Near copies labelled apart bound what any
    classifier can score; the last row is the rest of the held-out listings.
    """
    labelled = np.vectorize(bool, otypes=[bool])(candidate_categories)
    first = labelled.argmax(axis=1)
    rows = np.arange(len(truth))
    nearest_category, nearest_sim = candidate_categories[rows, first], sims[rows, first]
    usable = np.array([bool(t) for t in truth]) & labelled.any(axis=1)
    same = np.array([a == b for a, b in zip(nearest_category, truth)])
    right = np.array([a == b for a, b in zip(predicted, truth)])
    share = lambda hits, chosen: float(hits[chosen].mean()) if chosen.any() else None
    return [{"min_cosine": threshold, "listings": int(chosen.sum()), "labelled_as_nearest": share(same, chosen),
             "enrich_accuracy": share(right, chosen)} for threshold, chosen in similarity_buckets(nearest_sim, usable, thresholds)]


def engagement_agreement(nearest_engagement: np.ndarray, nearest_sim: np.ndarray, truth: np.ndarray, prior: np.ndarray,
                         thresholds: tuple[float, ...] = NEAR_COPY_COSINES) -> list[dict]:
    """The same for engagement: Spearman of the held-out listings' true engagement with their nearest reference
    listing's, and with enrich's prior, by how similar that listing is. How well a near copy's engagement predicts a
    listing's bounds what any prior built from neighbours can do."""
    usable = ~np.isnan(truth)
    spearman = lambda x, chosen: rho(x[chosen], truth[chosen]) if chosen.sum() > 2 else None
    return [{"min_cosine": threshold, "listings": int(chosen.sum()), "nearest_spearman": spearman(nearest_engagement, chosen),
             "enrich_spearman": spearman(prior, chosen)} for threshold, chosen in similarity_buckets(nearest_sim, usable, thresholds)]
