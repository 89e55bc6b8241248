"""The measures `enrich eval` and the benchmarks report: category accuracy and F1 per level, neighbour precision,
prior ranking, long-tail exposure, and the LLM stage's attribute and taxonomy scores."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import f1_score, ndcg_score

from enrich.catalog.paths import path_levels, path_prefix, path_prefixes


def tag_metrics(predicted: list[str | None], truth: list[str | None]) -> dict:
    """Accuracy, weighted and macro F1 per taxonomy level and for the full path (rows with a true path)."""
    pairs = [(p or "", t) for p, t in zip(predicted, truth) if t]
    depth = max((len(path_levels(t)) for _, t in pairs), default=0)
    out = {}
    for level in range(1, depth + 1):
        rows = [(path_prefix(p, level), path_prefix(t, level)) for p, t in pairs if len(path_levels(t)) >= level]
        out[f"level {level}"] = _scores(rows)
    out["full path"] = _scores(pairs)
    return out


def _scores(rows: list[tuple[str, str]]) -> dict:
    if not rows:
        return {"n": 0, "accuracy": None, "weighted_f1": None, "macro_f1": None}
    p, t = zip(*rows)
    return {
        "n": len(rows),
        "accuracy": float(np.mean([a == b for a, b in rows])),
        "weighted_f1": float(f1_score(t, p, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(t, p, average="macro", labels=sorted(set(t)), zero_division=0)),
    }


def same_leaf_precision(neighbor_categories: list[list[str]], truth: list[str | None]) -> float:
    hits = [np.mean([c == t for c in row]) for row, t in zip(neighbor_categories, truth) if t and row]
    return float(np.mean(hits)) if hits else float("nan")


def rank_metrics(scores: np.ndarray, truth: np.ndarray, k: int) -> dict:
    gains = np.log1p(truth)[None, :]
    flat = np.ptp(scores) == 0
    return {
        "spearman": None if flat else float(spearmanr(scores, truth).statistic),
        f"ndcg@{k}": float(ndcg_score(gains, scores[None, :], k=k)),
        "ndcg@100": float(ndcg_score(gains, scores[None, :], k=100)),
    }


def weighted_knn(neighbor_engagement: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """The plain baseline: similarity-weighted mean of log engagement over the neighbours."""
    weights = np.clip(sims, 1e-6, None)
    return (weights * np.log1p(neighbor_engagement)).sum(1) / weights.sum(1)


def sparse_top_k(queries, reference, k: int) -> tuple[np.ndarray, np.ndarray]:
    top_all, sims_all = [], []
    for start in range(0, queries.shape[0], 2048):
        scores = (queries[start : start + 2048] @ reference.T).toarray()
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_all.append(top)
        sims_all.append(np.take_along_axis(scores, top, 1).astype(np.float32))
    return np.vstack(top_all), np.vstack(sims_all)


def exposure_shares(reference_engagement: np.ndarray, new_scores: dict[str, np.ndarray], new_truth: np.ndarray,
                    tail_threshold: float, slate: int) -> dict:
    """Who a simple ranker shows: reference listings by their engagement, new ones by a score.

    Exposure of a position is 1 / log2(1 + rank) over the first `slate` positions (the usual DCG
    discount). Reported: the share going to new listings and to tail listings (true engagement at or
    below the tail threshold), and the mean true engagement of the new listings that were shown.
    """
    out = {}
    discount = 1 / np.log2(np.arange(2, slate + 2))
    is_new = np.r_[np.zeros(len(reference_engagement), bool), np.ones(len(new_truth), bool)]
    truth = np.r_[reference_engagement, new_truth]
    for name, scores in new_scores.items():
        order = np.argsort(-np.r_[reference_engagement, scores], kind="stable")[:slate]
        exposure = discount[: len(order)]
        shown_new = is_new[order]
        out[name] = {
            "new_listings_share": float(exposure[shown_new].sum() / exposure.sum()),
            "tail_share": float(exposure[truth[order] <= tail_threshold].sum() / exposure.sum()),
            "new_listings_shown": int(shown_new.sum()),
            "mean_engagement_of_new_shown": float(truth[order][shown_new].mean()) if shown_new.any() else None,
        }
    out["mean_engagement_of_all_new"] = float(new_truth.mean())
    out["slate"] = slate
    return out


def bucket_scores(predicted: list, truth: list) -> dict:
    rows = [(p or "", t) for p, t in zip(predicted, truth) if t]
    if not rows:
        return {"full path": None, "top level": None}
    return {"full path": float(np.mean([p == t for p, t in rows])),
            "top level": float(np.mean([path_prefix(p, 1) == path_prefix(t, 1) for p, t in rows]))}


def attribute_scores(predicted: list[dict], labels: list[dict], fields: tuple[str, ...]) -> dict:
    """Precision (predicted values that are right) and coverage (labelled values found) per field and overall.

    A label is the list of values a reader accepts for a field (empty: the listing does not say); a value
    is right when it is one of them, compared without case.
    """
    per_field = {}
    for name in fields:
        made = right = labelled = 0
        for values, label in zip(predicted, labels):
            accepted = {v.casefold() for v in label[name]}
            labelled += bool(accepted)
            if values.get(name) is not None:
                made += 1
                right += str(values[name]).casefold() in accepted
        per_field[name] = {"predicted": made, "right": right, "labelled": labelled,
                           "precision": right / made if made else None, "coverage": right / labelled if labelled else None}

    def overall(names) -> dict:
        made = sum(per_field[n]["predicted"] for n in names)
        right = sum(per_field[n]["right"] for n in names)
        labelled = sum(per_field[n]["labelled"] for n in names)
        return {"predicted": made, "right": right, "labelled": labelled,
                "precision": right / made if made else None, "coverage": right / labelled if labelled else None}

    return {"fields": per_field, "all": overall(fields), "without brand": overall([n for n in fields if n != "brand"])}


def taxonomy_hits(predicted_paths: list[str | None], accepted_paths: list[list[str]], depth: int) -> np.ndarray:
    """Per listing: whether the first `depth` levels of its predicted path equal one accepted path's."""
    return np.array([p is not None and any(path_prefix(p, depth) == path_prefix(a, depth) for a in accepted)
                     for p, accepted in zip(predicted_paths, accepted_paths)], dtype=bool)


def taxonomy_scores(predicted_paths: list[str | None], accepted_paths: list[list[str]], depths=(1, 2, 3)) -> dict:
    """Accuracy at Shopify depth d (the first d levels equal one accepted path's) and at full depth."""
    scores = {f"depth {depth}": float(taxonomy_hits(predicted_paths, accepted_paths, depth).mean()) for depth in depths}
    scores["full depth"] = float(np.mean([p in accepted for p, accepted in zip(predicted_paths, accepted_paths)]))
    return scores


def hierarchical_scores(predicted: list[str | None], truth: list[str | None]) -> dict:
    """Hierarchical precision, recall and F1 (Kiritchenko et al.): each path counted with its ancestors, micro-averaged
    over the listings with a true path, so a right department with a wrong leaf earns part of the credit."""
    shared = in_predicted = in_truth = 0
    for p, t in zip(predicted, truth):
        if not t:
            continue
        mine, theirs = set(path_prefixes(p)), set(path_prefixes(t))
        shared, in_predicted, in_truth = shared + len(mine & theirs), in_predicted + len(mine), in_truth + len(theirs)
    precision = shared / in_predicted if in_predicted else 0.0
    recall = shared / in_truth if in_truth else 0.0
    return {"precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}


def acceptance_scores(predicted: list[str | None], confident: list[str | None], review: list[bool],
                      truth: list[str | None]) -> dict:
    """What the team gets from the acceptance policy, over the listings with a true path: the share accepted at full
    depth and how often those are right; with backoff, how often the confident level is right (a prefix of the
    truth), the share that keeps a level, and the share of the true path's depth kept."""
    rows = [(p, c, r, t) for p, c, r, t in zip(predicted, confident, review, truth) if t]
    if not rows:
        return {}
    accepted = [(p, t) for p, c, r, t in rows if not r and p]
    kept = [(c, t) for p, c, r, t in rows if c]
    right_level = [path_prefix(t, len(path_levels(c))) == c for c, t in kept]
    return {"listings": len(rows),
            "accepted_share": len(accepted) / len(rows),
            "accepted_precision": float(np.mean([p == t for p, t in accepted])) if accepted else None,
            "backoff_precision": float(np.mean(right_level)) if kept else None,
            "backoff_kept_share": len(kept) / len(rows),
            "depth_kept_share": float(np.mean([len(path_levels(c)) / len(path_levels(t)) if c and ok else 0.0
                                               for (c, t), ok in zip(kept, right_level)] + [0.0] * (len(rows) - len(kept))))}


def review_effort(right: np.ndarray, order: np.ndarray, targets: tuple[float, ...] = (0.9, 0.95)) -> dict[float, float]:
    """The share of a batch a reviewer works through in `order` (a permutation of its listings) before the batch's
    categories are right at least each target share of the time: each reviewed listing ends up right (the reviewer
    gives the true path), the others stay as predicted (`right`)."""
    right = np.asarray(right, bool)
    after = (right.sum() + np.cumsum(~right[order])) / len(right)  # the share right after reviewing 1, 2, ... listings
    return {target: 0.0 if right.mean() >= target else float((np.argmax(after >= target) + 1) / len(right))
            for target in targets}
