"""Category and tags from a similarity-weighted vote of the neighbours, and vote-aware neighbour order.

Until the fine-tuned classifier exists, a listing's category is the path its nearest reference listings
agree on. The same vote re-orders the neighbours: among equally similar listings, those in the voted
category come first, which is what a ranker wants from "similar popular listings".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

PATH_SEPARATOR = " > "


@dataclass(frozen=True)
class VoteConfig:
    """How neighbours vote on a category and how the vote re-orders them."""

    temperature: float = 0.05  # weight exp((s - s_best) / T): a neighbour 0.05 less similar counts e^-1 as much
    rerank_weight: float = 1.0  # neighbour order key: cosine + rerank_weight * vote share of its category
    top_k: int = 10  # neighbours written per listing
    classifier_weight: float = 0.7  # with a fine-tuned tagger: its share in the fused category distribution
    classifier_top: int = 20  # the tagger's most probable paths that join the fusion (the rest carry ~0)


@dataclass
class Votes:
    """One entry per listing: the voted path, its share of the vote, tags with scores, neighbour order."""

    category: list[str | None]
    category_score: list[float | None]
    tags: list[list[str]]
    tag_scores: list[list[float]]
    order: np.ndarray  # (n, top_k) positions into each listing's candidate list


def path_levels(path: str) -> list[str]:
    return [level.strip() for level in path.split(PATH_SEPARATOR) if level.strip()]


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
    """A fine-tuned tagger's calibrated path probabilities for the same listings."""

    labels: list[str]
    probabilities: np.ndarray  # (n, labels)
    min_level_score: float = 0.0  # levels scored below this are left off the tags


def vote(candidate_categories: np.ndarray, sims: np.ndarray, config: VoteConfig = VoteConfig(),
         classifier: ClassifierScores | None = None, given: list[str | None] | None = None) -> Votes:
    """`candidate_categories[i, j]`: category path of listing i's j-th candidate (None if unknown).

    With `classifier`, the category distribution is `classifier_weight` x the tagger's probabilities plus
    the rest x the neighbours' vote, and it both names the category and re-orders the neighbours.
    `given[i]`: the category listing i came with, if any. The merchant's own word is kept, not second-guessed:
    it is the category (score 1.0), its levels are the tags, and it re-orders the neighbours.
    """
    n, k = sims.shape
    top_k = min(config.top_k, k)
    result = Votes([], [], [], [], np.zeros((n, top_k), np.int64))
    if k == 0:
        result.category, result.category_score = [None] * n, [None] * n
        result.tags, result.tag_scores = [[] for _ in range(n)], [[] for _ in range(n)]
        return result
    min_level_score = classifier.min_level_score if classifier else 0.0
    for i in range(n):
        if given is not None and given[i]:
            shares = {given[i]: 1.0}
        else:
            shares = category_shares(candidate_categories[i], sims[i], config.temperature)
            if classifier is not None:
                shares = _fuse(shares, classifier, i, config)
        share_of = np.array([shares.get(path, 0.0) if path else 0.0 for path in candidate_categories[i]])
        result.order[i] = np.argsort(-(sims[i] + config.rerank_weight * share_of), kind="stable")[:top_k]
        if not shares:
            result.category.append(None)
            result.category_score.append(None)
            result.tags.append([])
            result.tag_scores.append([])
            continue
        best = max(shares, key=shares.get)
        levels = path_levels(best)
        prefixes = [PATH_SEPARATOR.join(levels[: d + 1]) for d in range(len(levels))]
        scores = [
            sum(s for p, s in shares.items() if p == prefix or p.startswith(prefix + PATH_SEPARATOR))
            for prefix in prefixes
        ]
        keep = 1  # the top level always; deeper levels while they are confident enough
        while keep < len(scores) and scores[keep] >= min_level_score:
            keep += 1
        result.category.append(best)
        result.category_score.append(float(shares[best]))
        result.tags.append(levels[:keep])
        result.tag_scores.append([float(min(s, 1.0)) for s in scores[:keep]])
    return result


def _fuse(shares: dict[str, float], classifier: ClassifierScores, row: int, config: VoteConfig) -> dict[str, float]:
    probabilities = classifier.probabilities[row]
    fused: dict[str, float] = defaultdict(float)
    for path, share in shares.items():
        fused[path] += (1 - config.classifier_weight) * share
    for j in np.argsort(-probabilities)[: config.classifier_top]:
        fused[classifier.labels[j]] += config.classifier_weight * float(probabilities[j])
    total = sum(fused.values())  # < 1 where the neighbours have no category or the tagger's tail was cut
    return {path: value / total for path, value in fused.items()}
