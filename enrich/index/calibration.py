"""The index's calibration listings: labelled reference listings predicted as new listings are, to fit the acceptance
policy on (when a category is accepted without review, and how deep).

Every labelled listing (up to `calibration_rows`) is scored by cross-fitting: the listings are cut into `folds`, and
each fold is predicted by its neighbours without itself and by a TF-IDF category model fitted without the fold, so
no listing is scored by a model that learned its category. A tagger learned from every listing but its own
validation split: only those are scored as new listings would be. Half of the listings (with a tagger: the rest of
the reference, which the tagger saw) fit the calibration maps; the others, which did not, test the promise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.preprocessing import normalize

from enrich.catalog import listing_texts
from enrich.category.acceptance import AcceptancePolicy, Predictions
from enrich.category.lexical_model import CategoryModel
from enrich.category.tagger import Tagger
from enrich.category.vote import ClassifierScores, vote
from enrich.sampling import fit_sample
from enrich.search.neighbors import NeighborIndex
from enrich.settings import AcceptanceConfig, CategoryModelConfig, VoteConfig

MIN_ROWS = 50  # fewer calibration listings cannot support a promised precision


@dataclass
class CalibrationListings:
    """Labelled reference listings predicted as new ones: positions in the reference, the voted paths and their level
    scores, the true paths, and whether the tagger (if any) never learned from them."""

    rows: np.ndarray
    level_scores: list[list[float]]
    predicted: list[str | None]
    truth: list[str]
    unseen: np.ndarray  # bool per listing: no model learned its category

    @property
    def predictions(self) -> Predictions:
        return Predictions(self.level_scores, self.predicted, self.truth)

    def subset(self, keep: np.ndarray) -> "CalibrationListings":
        take = np.flatnonzero(keep) if keep.dtype == bool else keep
        return CalibrationListings(self.rows[take], [self.level_scores[i] for i in take], [self.predicted[i] for i in take],
                                   [self.truth[i] for i in take], self.unseen[take])


def cross_fitted_listings(ok: pl.DataFrame, neighbors: NeighborIndex, lexical_matrix: sp.csr_matrix,
                          vote_config: VoteConfig, model_config: CategoryModelConfig, candidates: int,
                          tagger: Tagger | None, rows: np.ndarray, folds: int, seed: int = 0) -> CalibrationListings:
    """`rows` of the reference predicted as new listings: each fold by a category model fitted without it, each
    listing by its neighbours without itself (and by the tagger, which only its validation split is unseen by)."""
    categories = np.array(ok["category"].to_list(), dtype=object)
    fold_of = np.random.default_rng(seed).permutation(len(rows)) % folds
    positions, sims = neighbors.search_excluding_self(neighbors.vectors(rows), min(candidates, len(ok) - 1), labels=rows)
    tagged = tagger.probabilities(listing_texts(ok[rows])) if tagger is not None else None
    level_scores: list[list[float]] = [[] for _ in rows]
    predicted: list[str | None] = [None] * len(rows)
    labelled = sum(1 for c in categories if c)
    listings_with = np.bincount(lexical_matrix.indices, minlength=lexical_matrix.shape[1])
    for fold in range(folds):
        members = np.flatnonzero(fold_of == fold)
        hidden = categories.copy()
        hidden[rows[members]] = None
        classifiers = []
        model = CategoryModel.fit(lexical_matrix, hidden.tolist(), _as_if_fitted_on_all(model_config, labelled, len(members)))
        if model is not None:
            as_new = _as_new(lexical_matrix[rows[members]], model, listings_with)
            classifiers.append(ClassifierScores(model.labels, model.probabilities(as_new), "lexical"))
        if tagged is not None:
            classifiers.append(ClassifierScores(tagger.labels, tagged[members], "tagger"))
        votes = vote(categories[positions[members]], sims[members], vote_config, classifiers)
        for i, path, scores in zip(members, votes.category, votes.level_scores):
            predicted[i], level_scores[i] = path, scores
    unseen = np.ones(len(rows), bool)
    if tagger is not None:
        unseen = np.isin(ok["id"].to_numpy()[rows], list(tagger.info["validation_ids"]))
    return CalibrationListings(rows, level_scores, predicted, categories[rows].tolist(), unseen)


def _as_if_fitted_on_all(config: CategoryModelConfig, labelled: int, held: int) -> CategoryModelConfig:
    """The fold's model as regularised as the index's, which learns from `held` more listings: sklearn's penalty
    weighs against the sum of the listings' losses, so fewer listings would make a less confident model."""
    fitted = min(labelled - held, config.fit_rows)
    return replace(config, inverse_regularisation=config.inverse_regularisation * min(labelled, config.fit_rows) / max(fitted, 1))


def _as_new(rows: sp.csr_matrix, model: CategoryModel, listings_with: np.ndarray) -> sp.csr_matrix:
    """TF-IDF rows of reference listings as they would be were the listings new: a new listing's words that the
    vocabulary lacks (too rare in the reference) or that the model never read are dropped before its row is
    normalised, where a reference listing's count itself toward the vocabulary. Without this, held-out listings
    read as less sure than new ones do. `listings_with`: each term's number of reference listings."""
    rarest = listings_with[listings_with > 0].min() if listings_with.any() else 1  # the vocabulary's least shared
    known = np.zeros(rows.shape[1], np.float32)
    known[model.columns] = 1.0
    known[listings_with - 1 < rarest] = 0.0  # left out, the listing would leave these terms too rare to keep
    return normalize(rows @ sp.diags(known), copy=False).tocsr()


def split_for_policy(listings: CalibrationListings, map_share: float, seed: int = 0
                     ) -> tuple[CalibrationListings, CalibrationListings, str]:
    """(listings that fit the calibration maps, listings that test the promise, where the latter come from). The
    testing listings must be ones no model learned from; with a tagger, those are its validation split, and the
    maps are fitted on the rest (the tagger's scores of them are optimistic: the maps then order listings less
    well, but the promise, tested apart, still holds)."""
    if MIN_ROWS <= listings.unseen.sum() < len(listings.rows):
        return listings.subset(~listings.unseen), listings.subset(listings.unseen), "the tagger's validation split"
    mapped = np.random.default_rng(seed).random(len(listings.rows)) < map_share
    source = "cross-fitted reference listings"
    if not listings.unseen.all():  # a tagger trained elsewhere: it may have learned some of them
        source += " (the tagger's validation split is not in this reference: it may have learned some of them)"
    return listings.subset(mapped), listings.subset(~mapped), source


def calibration_positions(ok: pl.DataFrame, tagger: Tagger | None, config: AcceptanceConfig) -> np.ndarray:
    """Positions of the labelled reference listings to score, at most `calibration_rows`: with a tagger, its whole
    validation split and a sample of the rest."""
    labelled = np.flatnonzero(ok["category"].is_not_null().to_numpy())
    unseen = labelled[:0]
    if tagger is not None:
        unseen = labelled[np.isin(ok["id"].to_numpy()[labelled], list(tagger.info["validation_ids"]))]
    others = np.setdiff1d(labelled, unseen)
    sampled = others[fit_sample(len(others), max(config.calibration_rows - len(unseen), 0), config.seed)]
    return np.sort(np.concatenate([unseen, sampled]))


def fit_acceptance(ok: pl.DataFrame, neighbors: NeighborIndex, lexical_matrix: sp.csr_matrix, vote_config: VoteConfig,
                   model_config: CategoryModelConfig, candidates: int, tagger: Tagger | None,
                   config: AcceptanceConfig) -> AcceptancePolicy | None:
    """The policy fitted on cross-fitted reference listings; None where there are too few to test a promise on."""
    started = time.perf_counter()
    rows = calibration_positions(ok, tagger, config)
    if len(rows) < 2 * MIN_ROWS:
        return None
    # A catalog large enough that the category model, left without every calibration listing at once, still learns
    # from as many listings as the index's does (`fit_rows`) needs one fold, one extra fit.
    labelled = int(ok["category"].is_not_null().sum())
    folds = 1 if labelled - len(rows) >= model_config.fit_rows else config.folds
    listings = cross_fitted_listings(ok, neighbors, lexical_matrix, vote_config, model_config, candidates, tagger, rows,
                                     folds, config.seed)
    mapped, tested, source = split_for_policy(listings, config.map_share, config.seed)
    if len(tested.rows) < MIN_ROWS or len(mapped.rows) < MIN_ROWS:
        return None
    policy = AcceptancePolicy.fit(mapped.predictions, tested.predictions, config.target_precision, config.confidence)
    policy.metrics["calibration"] = {"listings": int(len(tested.rows)), "source": source, "map_listings": int(len(mapped.rows)),
                                     "folds": folds, "seconds": round(time.perf_counter() - started, 2)}
    return policy
