"""`enrich eval`: hold listings out of a catalog as if they were new, enrich them, score them beside baselines.

One run gives the category, neighbour and prior metrics with every baseline computed on the same split, as a
Markdown table, a JSON file and three plots (calibration, prior against truth, the long-tail curve).
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from enrich.catalog import CatalogError, Columns, listing_texts, read_raw
from enrich.catalog.inspect import catalog_warnings
from enrich.catalog.load import read_catalog
from enrich.category.calibration import expected_calibration_error
from enrich.category.tagger import Tagger
from enrich.settings import EnrichConfig, EvalConfig
from enrich.embed import Encoder
from enrich.evaluation.metrics import (acceptance_scores, bucket_scores, exposure_shares, hierarchical_scores, rank_metrics,
                                       same_leaf_precision, sparse_top_k, tag_metrics, weighted_knn)
from enrich.evaluation.report import Evaluation
from enrich.index.build import build_index_from_frame
from enrich.search.neighbors import exact_search, recall_at_k
from enrich.index.store import ReferenceIndex
from enrich.run.score import enrich_frame

BUCKETS = ("head", "torso", "tail")


def split_catalog(frame: pl.DataFrame, config: EvalConfig, dates: pl.Series | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Reference and held-out parts of the usable rows: at random, or the latest by date."""
    usable = frame.filter(pl.col("status") == "ok")
    n_out = max(1, int(round(config.holdout * usable.height)))
    if dates is not None:
        order = usable.with_columns(dates.filter(frame["status"] == "ok").alias("_date")).with_row_index("_i") \
            .sort("_date", nulls_last=False)["_i"].to_numpy()
    else:
        order = np.random.default_rng(config.seed).permutation(usable.height)
    return usable[np.sort(order[:-n_out])], usable[np.sort(order[-n_out:])]


def _dates(path: Path, column: str, columns: Columns) -> pl.Series:
    raw, _, _ = read_raw(path, columns.encoding, columns.delimiter)
    if column not in raw.columns:
        raise CatalogError(f"{path}: no column '{column}' for the date (columns are: {', '.join(raw.columns)})")
    parsed = raw[column].str.to_datetime(strict=False)
    if parsed.null_count() == parsed.len():
        raise CatalogError(f"{path}: column '{column}' holds no dates that can be read")
    return parsed


def evaluate(catalog: str | Path, columns: Columns, config: EvalConfig = EvalConfig(),
             enrich_config: EnrichConfig = EnrichConfig(), progress: bool = True, encoder: Encoder | None = None,
             tagger: Tagger | None = None) -> Evaluation:
    """Split, index the reference part, enrich the held-out part, score it.

    A `tagger` must have been trained on this split's reference part only (as `make bench` does), or its
    figures are inflated by listings it has seen.
    """
    started = time.perf_counter()
    catalog = Path(catalog)
    read = read_catalog(catalog, columns, enrich_config.cleaning, reference=True)
    frame, columns = read.frame, read.details.columns
    dates = _dates(catalog, config.date_column, columns) if config.date_column else None
    reference, held_out = split_catalog(frame, config, dates)
    if reference.height < 2:
        raise CatalogError(f"{catalog}: too few usable listings to hold some out ({frame.height} rows)")
    encoder = encoder or Encoder(enrich_config.encoder)
    with tempfile.TemporaryDirectory(prefix="enrich-eval-") as tmp:
        # With the tagger recorded, the acceptance policy is calibrated on the mix that scores the held-out listings.
        build_index_from_frame(reference, Path(tmp) / "index", str(catalog), columns, enrich_config, progress, encoder,
                               tagger_dir=tagger.folder if tagger is not None else None)
        index = ReferenceIndex.load(Path(tmp) / "index", encoder)
        new = held_out.with_columns(pl.lit(None, dtype=pl.String).alias("category"), pl.lit(None, dtype=pl.Float64).alias("engagement"))
        output = enrich_frame(new, index, encoder, enrich_config, progress, tagger)
        metrics, priors = _metrics(index, reference, held_out, output, encoder, config)
    metrics["warnings"] = catalog_warnings(read)
    metrics["setup"] = {
        "tagger": None if tagger is None else tagger.info.get("source", "given"),
        "catalog": str(catalog), "rows": frame.height, "usable": reference.height + held_out.height,
        "reference": reference.height, "held_out": held_out.height,
        "split": f"time ({config.date_column}), latest {config.holdout:.0%} held out" if config.date_column
        else f"random, {config.holdout:.0%} held out, seed {config.seed}",
        "config": asdict(config), "seconds": round(time.perf_counter() - started, 1),
    }
    joined = output.join(held_out.select("id", pl.col("category").alias("true_category"),
                                         pl.col("engagement").alias("true_engagement")), on="id", how="left")
    return Evaluation(metrics, joined, reference["engagement"].fill_null(float("nan")).to_numpy(), priors)


@dataclass
class Split:
    """One split's truth and the neighbours and baselines computed on it, shared by every measure."""

    index: ReferenceIndex
    held_out: pl.DataFrame
    output: pl.DataFrame
    bucket: np.ndarray  # per held-out listing: head, torso or tail by its true engagement; "" where it is unknown
    lr_predicted: list[str]  # the TF-IDF + logistic regression baseline's categories
    emb_positions: np.ndarray
    emb_sims: np.ndarray
    lex_positions: np.ndarray
    lex_sims: np.ndarray
    exact_positions: np.ndarray

    @property
    def truth_category(self) -> list[str | None]:
        return self.held_out["category"].to_list()

    @property
    def truth_engagement(self) -> np.ndarray:
        """NaN where a listing's engagement is unknown."""
        return self.held_out["engagement"].fill_null(float("nan")).to_numpy().astype(np.float64)

    @property
    def known(self) -> np.ndarray:
        """The held-out listings whose engagement is known: the prior's measures read only them."""
        return ~np.isnan(self.truth_engagement)


def _split(index: ReferenceIndex, reference: pl.DataFrame, held_out: pl.DataFrame, output: pl.DataFrame, encoder: Encoder,
           config: EvalConfig) -> tuple[Split, float, float]:
    """The split with its baselines on the same listings; the head and tail thresholds."""
    k, ref_engagement = config.k, index.engagement[~np.isnan(index.engagement)]
    truth_engagement = held_out["engagement"].fill_null(float("nan")).to_numpy().astype(np.float64)
    head_threshold = float(np.quantile(ref_engagement, 1 - config.head_share)) if len(ref_engagement) else float("nan")
    tail_threshold = float(np.quantile(ref_engagement, config.tail_share)) if len(ref_engagement) else float("nan")
    bucket = np.where(np.isnan(truth_engagement), "",
                      np.where(truth_engagement >= head_threshold, "head", np.where(truth_engagement <= tail_threshold, "tail", "torso")))
    ref_texts = listing_texts(reference)  # the index's rows, in the same order
    new_texts = listing_texts(held_out)
    tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), dtype=np.float32).fit(ref_texts)
    ref_tfidf, new_tfidf = tfidf.transform(ref_texts), tfidf.transform(new_texts)
    known = index.reference["category"].is_not_null().to_numpy()
    classifier = LogisticRegression(max_iter=300, C=10.0)
    classifier.fit(ref_tfidf[known], np.array(index.reference["category"].to_list(), dtype=object)[known])
    lr_predicted = classifier.predict(new_tfidf).tolist()
    vectors = encoder.encode(new_texts)
    emb_positions, emb_sims = index.neighbors.search(vectors, k)
    lex_positions, lex_sims = sparse_top_k(new_tfidf, ref_tfidf, k)
    exact_positions, _ = exact_search(vectors, np.asarray(index.embeddings), k)
    split = Split(index, held_out, output, bucket, lr_predicted, emb_positions, emb_sims, lex_positions, lex_sims,
                  exact_positions)
    return split, head_threshold, tail_threshold


def _category_metrics(s: Split) -> tuple[dict, dict]:
    """Category accuracy and F1 per level against the baseline, overall and by popularity bucket; the ECE."""
    predicted, truth = s.output["category"].to_list(), s.truth_category
    tags = {"enrich": tag_metrics(predicted, truth), "TF-IDF + logistic regression": tag_metrics(s.lr_predicted, truth)}
    by_bucket = {}
    for name in BUCKETS:
        mask = s.bucket == name
        by_bucket[name] = {
            "n": int(mask.sum()),
            "enrich": bucket_scores([p for p, m in zip(predicted, mask) if m], [t for t, m in zip(truth, mask) if m]),
            "TF-IDF + logistic regression": bucket_scores([p for p, m in zip(s.lr_predicted, mask) if m],
                                                          [t for t, m in zip(truth, mask) if m]),
        }
    scores = s.output["category_score"].fill_null(0).to_numpy()
    correct = np.array([bool(t) and p == t for p, t in zip(predicted, truth)])
    has_truth = np.array([bool(t) for t in truth])
    tags["calibration_error_of_category_score"] = expected_calibration_error(scores[has_truth], correct[has_truth])
    return tags, by_bucket


def _neighbor_metrics(s: Split, k: int) -> dict:
    index = s.index
    id_position = {i: n for n, i in enumerate(index.ids)}
    as_categories = lambda rows: [[index.categories[p] or "" for p in row] for row in rows]
    ours = [[id_position[i] for i in row] for row in s.output["neighbors"].fill_null([]).to_list()]
    return {
        f"precision@{k}": {
            "enrich": same_leaf_precision(as_categories([row[:k] for row in ours]), s.truth_category),
            "TF-IDF nearest neighbours": same_leaf_precision(as_categories(s.lex_positions), s.truth_category),
            "MiniLM nearest neighbours": same_leaf_precision(as_categories(s.emb_positions), s.truth_category),
        },
        f"index_recall@{k}": recall_at_k(s.emb_positions, s.exact_positions),
    }


def _prior_scores(s: Split, seed: int) -> dict[str, np.ndarray]:
    """Each way of ranking the held-out listings whose engagement is known by expected engagement: enrich's prior and
    the baselines (which read only reference listings with engagement)."""
    ref_engagement, known, truth = s.index.engagement, s.known, s.truth_engagement[s.known]
    category_logs = defaultdict(list)
    for c, e in zip(s.index.reference["category"].to_list(), ref_engagement):
        if not np.isnan(e):
            category_logs[c or ""].append(np.log1p(e))
    global_log = float(np.nanmean(np.log1p(ref_engagement)))
    return {
        "enrich": s.output["exposure_prior"].to_numpy()[known],
        "TF-IDF nearest neighbours": _knn_of_known(ref_engagement[s.lex_positions], s.lex_sims)[known],
        "MiniLM nearest neighbours": _knn_of_known(ref_engagement[s.emb_positions], s.emb_sims)[known],
        "true category's mean": np.array([np.mean(category_logs[c or ""]) if c in category_logs else global_log
                                          for c, k in zip(s.truth_category, known) if k]),
        "popularity only (global mean)": np.full(len(truth), global_log),
        "random": np.random.default_rng(seed).random(len(truth)),
    }


def _knn_of_known(neighbor_engagement: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """The plain kNN baseline over the neighbours whose engagement is known (all of them in most catalogs)."""
    known = ~np.isnan(neighbor_engagement)
    if known.all():
        return weighted_knn(neighbor_engagement, sims)
    return weighted_knn(np.where(known, neighbor_engagement, 0.0), np.where(known, sims, 0.0))


def _prior_metrics(s: Split, prior_scores: dict[str, np.ndarray], k: int) -> dict:
    known = s.known
    truth, ref_engagement, bucket = s.truth_engagement[known], s.index.engagement, s.bucket[known]
    low, high = s.output["exposure_prior_low"].to_numpy()[known], s.output["exposure_prior_high"].to_numpy()[known]
    global_low, global_high = np.nanquantile(ref_engagement, [0.1, 0.9])
    return {
        "ranking": {name: rank_metrics(scores, truth, k) for name, scores in prior_scores.items()},
        "interval_coverage": {
            "enrich": float(np.mean((truth >= low) & (truth <= high))),
            "popularity only (global 10%-90%)": float(np.mean((truth >= global_low) & (truth <= global_high))),
        },
        "interval_median_width": float(np.median(high - low)),
        "listings": int(known.sum()),
        "spearman_by_bucket": {b: float(spearmanr(prior_scores["enrich"][bucket == b], truth[bucket == b]).statistic)
                               if (bucket == b).sum() > 2 else None for b in BUCKETS},
    }


def _metrics(index: ReferenceIndex, reference: pl.DataFrame, held_out: pl.DataFrame, output: pl.DataFrame, encoder: Encoder,
             config: EvalConfig) -> tuple[dict, dict[str, np.ndarray]]:
    """Every measure, JSON-ready; and the priors' estimates of the held-out listings' engagement, for `simulate`.
    Categories are scored on every labelled held-out listing; priors only where engagement is known (and not at all
    where the index has no prior)."""
    s, head_threshold, tail_threshold = _split(index, reference, held_out, output, encoder, config)
    tags, by_bucket = _category_metrics(s)
    predicted, truth = output["category"].to_list(), s.truth_category
    team = {"hierarchical": hierarchical_scores(predicted, truth),
            "acceptance": acceptance_scores(predicted, output["category_confident"].to_list(), output["review"].to_list(), truth),
            "policy": index.manifest["acceptance"]}
    metrics = {
        "tags": tags, "tags_by_bucket": by_bucket, "team": team, "neighbors": _neighbor_metrics(s, config.k),
        "priors": None, "long_tail_exposure": None,
        "buckets": {"head_at_least": head_threshold, "tail_at_most": tail_threshold,
                    "counts": {b: int((s.bucket == b).sum()) for b in BUCKETS}},
    }
    if index.prior is None or s.known.sum() < 3:
        return metrics, {}
    prior_scores = _prior_scores(s, config.seed)
    ref_engagement = index.engagement[~np.isnan(index.engagement)]
    metrics["priors"] = _prior_metrics(s, prior_scores, config.k)
    metrics["long_tail_exposure"] = exposure_shares(ref_engagement, {
        "popularity only (new listings unseen)": np.zeros(int(s.known.sum())),
        "prior mean (exposure_prior)": prior_scores["enrich"],
        "optimistic prior (exposure_prior_high)": output["exposure_prior_high"].to_numpy()[s.known],
    }, s.truth_engagement[s.known], tail_threshold, max(1, int(config.slate_share * (len(ref_engagement) + int(s.known.sum())))))
    estimates = {"enrich": prior_scores["enrich"],  # the baselines' means are of log engagement
                 "TF-IDF nearest neighbours": np.expm1(prior_scores["TF-IDF nearest neighbours"]),
                 "true category's mean": np.expm1(prior_scores["true category's mean"])}
    return metrics, estimates
