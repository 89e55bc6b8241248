"""The index's calibration split: reference listings no model learned from, predicted as new listings are, to fit
the acceptance policy (when a category is accepted without review, and how deep)."""

from __future__ import annotations


import numpy as np
import polars as pl
import scipy.sparse as sp

from enrich.catalog import listing_texts
from enrich.category.acceptance import AcceptancePolicy
from enrich.category.lexical_model import CategoryModel
from enrich.settings import AcceptanceConfig, CategoryModelConfig, VoteConfig
from enrich.category.tagger import Tagger
from enrich.category.vote import ClassifierScores, vote
from enrich.search.neighbors import NeighborIndex
from enrich.sampling import fit_sample

MIN_ROWS = 50  # fewer calibration listings cannot support a promised precision


def calibration_rows(ok: pl.DataFrame, tagger: Tagger | None, config: AcceptanceConfig) -> tuple[np.ndarray, str]:
    """Positions of labelled reference listings to calibrate on, and where they come from: the tagger's own validation
    split where the index holds it (the tagger never trained on those), else a random sample."""
    labelled = np.flatnonzero(ok["category"].is_not_null().to_numpy())
    limit = min(config.calibration_rows, int(config.calibration_share * len(labelled)))
    if tagger is not None:
        validation = set(tagger.info["validation_ids"])
        held = labelled[np.isin(ok["id"].to_numpy()[labelled], list(validation))]
        if len(held) >= MIN_ROWS:
            return held[fit_sample(len(held), limit, config.seed)], "the tagger's validation split"
    source = "random" if tagger is None else "random (the tagger may have trained on some of them)"
    return labelled[fit_sample(len(labelled), limit, config.seed)], source


def fit_acceptance(ok: pl.DataFrame, neighbors: NeighborIndex, lexical_matrix: sp.csr_matrix, vote_config: VoteConfig,
                   model_config: CategoryModelConfig, candidates: int, tagger: Tagger | None,
                   config: AcceptanceConfig) -> AcceptancePolicy | None:
    """The policy fitted on the calibration split, each listing predicted as a new one would be: by its neighbours
    without itself, a category model fitted without the split, and the tagger. None where there are too few."""
    rows, source = calibration_rows(ok, tagger, config)
    if len(rows) < MIN_ROWS:
        return None
    categories = np.array(ok["category"].to_list(), dtype=object)
    held_out = categories.copy()
    held_out[rows] = None
    classifiers = []
    model = CategoryModel.fit(lexical_matrix, held_out.tolist(), model_config)
    if model is not None:
        classifiers.append(ClassifierScores(model.labels, model.probabilities(lexical_matrix[rows]), source="lexical"))
    if tagger is not None:
        classifiers.append(ClassifierScores(tagger.labels, tagger.probabilities(listing_texts(ok[rows])), source="tagger"))
    positions, sims = neighbors.search_excluding_self(neighbors.vectors(rows), min(candidates, len(ok) - 1), labels=rows)
    votes = vote(categories[positions], sims, vote_config, classifiers)
    policy = AcceptancePolicy.fit(votes.level_scores, votes.category, categories[rows].tolist(), config.target_precision,
                                  config.confidence)
    policy.metrics["calibration"] = {"listings": int(len(rows)), "source": source}
    return policy
