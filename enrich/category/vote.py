"""Category and tags from the neighbours' vote and the classifiers, and category-aware neighbour order.

A listing's category distribution mixes up to three sources: the similarity-weighted vote of its nearest
reference listings, the index's TF-IDF classifier (`category_model`), and a fine-tuned tagger when there
is one. The same distribution re-orders the neighbours: among equally similar listings, those in the likely
category come first, which is what a ranker wants from "similar popular listings".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from enrich.catalog.paths import PATH_SEPARATOR, path_levels, path_prefixes
from enrich.settings import VoteConfig


@dataclass
class Votes:
    """One entry per listing: the voted path, its share of the vote, tags with scores, neighbour order."""

    category: list[str | None]
    category_score: list[float | None]
    tags: list[list[str]]
    tag_scores: list[list[float]]
    order: np.ndarray  # (n, top_k) positions into each listing's candidate list
    level_scores: list[list[float]] = field(default_factory=list)  # every level of the voted path, uncut


def category_shares(categories: np.ndarray, sims: np.ndarray, temperature: float) -> dict[str, float]:
    """Each path's share of one listing's similarity-weighted vote, largest first."""
    weights = np.exp((sims - sims[:1]) / temperature)
    shares: dict[str, float] = defaultdict(float)
    for path, weight in zip(categories, weights):
        if path:
            shares[path] += float(weight)
    total = sum(shares.values())
    return {path: w / total for path, w in sorted(shares.items(), key=lambda item: -item[1])}


@dataclass
class ClassifierScores:
    """A classifier's path probabilities for the same listings: the index's TF-IDF one or a fine-tuned tagger."""

    labels: list[str]
    probabilities: np.ndarray  # (n, labels)
    source: str  # "tagger" or "lexical": names its weight in VoteConfig


def vote(candidate_categories: np.ndarray, sims: np.ndarray, config: VoteConfig = VoteConfig(),
         classifiers: list[ClassifierScores] = (), given: list[str | None] | None = None,
         linkable: np.ndarray | None = None) -> Votes:
    """`candidate_categories[i, j]`: category path of listing i's j-th candidate (None if unknown).

    With `classifiers`, the category distribution mixes their probabilities with the neighbours' vote (the
    weights in `config`), and it both names the category and re-orders the neighbours.
    `given[i]`: the category listing i came with, if any. The merchant's own word is kept, not second-guessed:
    it is the category (score 1.0), its levels are the tags, and it re-orders the neighbours.
    `linkable[i, j]`: whether candidate j may be written as a neighbour (a listing without engagement votes, but is
    not a popular listing to link to): the others are ordered last.
    """
    n, k = sims.shape
    top_k = min(config.top_k, k)
    result = Votes([], [], [], [], np.zeros((n, top_k), np.int64))
    if k == 0:
        result.category, result.category_score = [None] * n, [None] * n
        result.tags, result.tag_scores = [[] for _ in range(n)], [[] for _ in range(n)]
        result.level_scores = [[] for _ in range(n)]
        return result
    for i in range(n):
        if given is not None and given[i]:
            shares = {given[i]: 1.0}
        else:
            shares = mixed_shares(candidate_categories[i], sims[i], config, classifiers, i)
        share_of = np.array([shares.get(path, 0.0) if path else 0.0 for path in candidate_categories[i]])
        key = sims[i] + config.rerank_weight * share_of
        if linkable is not None:
            key = np.where(linkable[i], key, -np.inf)
        result.order[i] = np.argsort(-key, kind="stable")[:top_k]
        if not shares:
            result.category.append(None)
            result.category_score.append(None)
            result.tags.append([])
            result.tag_scores.append([])
            result.level_scores.append([])
            continue
        best = max(shares, key=shares.get)
        scores = level_scores(shares, best)
        keep = 1  # the top level always; deeper levels while they are confident enough
        while keep < len(scores) and scores[keep] >= config.min_level_score:
            keep += 1
        result.category.append(best)
        result.category_score.append(float(shares[best]))
        result.tags.append(path_levels(best)[:keep])
        result.tag_scores.append([float(min(s, 1.0)) for s in scores[:keep]])
        result.level_scores.append([float(min(s, 1.0)) for s in scores])
    return result


def mixed_shares(candidate_categories: np.ndarray, sims: np.ndarray, config: VoteConfig,
                 classifiers: list[ClassifierScores], row: int) -> dict[str, float]:
    """One listing's category distribution: its neighbours' vote (`candidate_categories`, `sims`: its own row),
    mixed with row `row` of the classifiers' probabilities."""
    shares = category_shares(candidate_categories, sims, config.temperature)
    return _fuse(shares, classifiers, row, config) if classifiers else shares


def level_scores(shares: dict[str, float], path: str) -> list[float]:
    """Each prefix of `path`: the summed share of the paths under it."""
    return [sum(s for p, s in shares.items() if p == prefix or p.startswith(prefix + PATH_SEPARATOR)) for prefix in path_prefixes(path)]


def _fuse(shares: dict[str, float], classifiers: list[ClassifierScores], row: int, config: VoteConfig) -> dict[str, float]:
    fused: dict[str, float] = defaultdict(float)
    for path, share in shares.items():
        fused[path] += config.neighbor_weight * share
    for classifier in classifiers:
        probabilities, weight = classifier.probabilities[row], config.weight(classifier.source)
        for j in np.argsort(-probabilities)[: config.classifier_top]:
            fused[classifier.labels[j]] += weight * float(probabilities[j])
    total = sum(fused.values())  # renormalised: a source may be missing (no neighbour category) or cut (the top paths)
    return {path: value / total for path, value in fused.items()}
