"""`enrich eval`: hold listings out of a catalog as if they were new, enrich them, score them beside baselines.

One run gives the tag, neighbour and prior metrics with every baseline computed on the same split, as a
Markdown table, a JSON file and three plots (calibration, prior against truth, the long-tail curve).
"""

from __future__ import annotations

import json
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
from sklearn.metrics import f1_score, ndcg_score

from enrich.catalog import CatalogError, Columns, read_raw, listing_texts, load_catalog, write_table, write_text_atomically
from enrich.embed import Encoder
from enrich.neighbors import exact_search, recall_at_k
from enrich.pipeline import EnrichConfig, ReferenceIndex, build_index_from_frame, enrich_frame
from enrich.tagger import Tagger, expected_calibration_error
from enrich.tags import PATH_SEPARATOR, path_levels

BUCKETS = ("head", "torso", "tail")


@dataclass(frozen=True)
class EvalConfig:
    """How listings are held out and scored."""

    holdout: float = 0.2  # share of the catalog enriched as new listings
    seed: int = 0  # random split seed
    date_column: str | None = None  # when set, a time split: the latest listings are held out
    k: int = 10  # precision@k, recall@k, NDCG@k
    head_share: float = 0.1  # the most-engaged 10% of the reference catalog sets the head's threshold
    tail_share: float = 0.5  # the least-engaged half sets the tail's threshold
    slate_share: float = 0.1  # the simple ranker fills positions for this share of all listings


@dataclass
class Evaluation:
    metrics: dict  # everything, JSON-ready
    held_out: pl.DataFrame  # the enriched held-out listings joined with their truth
    reference_engagement: np.ndarray  # engagement of the reference part, for the long-tail curve

    def markdown(self) -> str:
        return to_markdown(self.metrics)


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


# -- metrics ---------------------------------------------------------------------------------------
def truncate(path: str | None, depth: int) -> str:
    return PATH_SEPARATOR.join(path_levels(path or "")[:depth])


def tag_metrics(predicted: list[str | None], truth: list[str | None]) -> dict:
    """Accuracy, weighted and macro F1 per taxonomy level and for the full path (rows with a true path)."""
    pairs = [(p or "", t) for p, t in zip(predicted, truth) if t]
    depth = max((len(path_levels(t)) for _, t in pairs), default=0)
    out = {}
    for level in range(1, depth + 1):
        rows = [(truncate(p, level), truncate(t, level)) for p, t in pairs if len(path_levels(t)) >= level]
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


# -- the run -----------------------------------------------------------------------------------------
def evaluate(catalog: str | Path, columns: Columns, config: EvalConfig = EvalConfig(),
             enrich_config: EnrichConfig = EnrichConfig(), progress: bool = True, encoder: Encoder | None = None,
             tagger: Tagger | None = None) -> Evaluation:
    """Split, index the reference part, enrich the held-out part, score it.

    A `tagger` must have been trained on this split's reference part only (as `make bench` does), or its
    figures are inflated by listings it has seen.
    """
    started = time.perf_counter()
    catalog = Path(catalog)
    frame = load_catalog(catalog, columns, enrich_config.cleaning, reference=True)
    dates = _dates(catalog, config.date_column, columns) if config.date_column else None
    reference, held_out = split_catalog(frame, config, dates)
    if reference.height < 2:
        raise CatalogError(f"{catalog}: too few usable listings to hold some out ({frame.height} rows)")
    encoder = encoder or Encoder(enrich_config.encoder)
    with tempfile.TemporaryDirectory(prefix="enrich-eval-") as tmp:
        build_index_from_frame(reference, Path(tmp) / "index", str(catalog), columns, enrich_config, progress, encoder)
        index = ReferenceIndex.load(Path(tmp) / "index", encoder)
        new = held_out.with_columns(pl.lit(None, dtype=pl.String).alias("category"), pl.lit(None, dtype=pl.Float64).alias("engagement"))
        output = enrich_frame(new, index, encoder, enrich_config, progress, tagger)
        metrics = _metrics(index, reference, held_out, output, encoder, config)
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
    return Evaluation(metrics, joined, reference["engagement"].to_numpy())


def _metrics(index: ReferenceIndex, reference: pl.DataFrame, held_out: pl.DataFrame, output: pl.DataFrame, encoder: Encoder,
             config: EvalConfig) -> dict:
    k = config.k
    truth_category = held_out["category"].to_list()
    truth_engagement = held_out["engagement"].to_numpy()
    ref_engagement = index.engagement
    head_threshold = float(np.quantile(ref_engagement, 1 - config.head_share))
    tail_threshold = float(np.quantile(ref_engagement, config.tail_share))
    bucket = np.where(truth_engagement >= head_threshold, "head", np.where(truth_engagement <= tail_threshold, "tail", "torso"))

    # Baselines on the same split.
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

    predicted = output["category"].to_list()
    tags = {"enrich": tag_metrics(predicted, truth_category), "TF-IDF + logistic regression": tag_metrics(lr_predicted, truth_category)}
    by_bucket = {}
    for name in BUCKETS:
        mask = bucket == name
        by_bucket[name] = {
            "n": int(mask.sum()),
            "enrich": _bucket_scores([p for p, m in zip(predicted, mask) if m], [t for t, m in zip(truth_category, mask) if m]),
            "TF-IDF + logistic regression": _bucket_scores([p for p, m in zip(lr_predicted, mask) if m],
                                                           [t for t, m in zip(truth_category, mask) if m]),
        }
    scores = output["category_score"].fill_null(0).to_numpy()
    correct = np.array([bool(t) and p == t for p, t in zip(predicted, truth_category)])
    has_truth = np.array([bool(t) for t in truth_category])
    tags["calibration_error_of_category_score"] = expected_calibration_error(scores[has_truth], correct[has_truth])

    id_position = {i: n for n, i in enumerate(index.ids)}
    as_categories = lambda rows: [[index.categories[p] or "" for p in row] for row in rows]
    ours_neighbors = [[id_position[i] for i in row] for row in output["neighbors"].fill_null([]).to_list()]
    neighbors = {
        f"precision@{k}": {
            "enrich": same_leaf_precision(as_categories([row[:k] for row in ours_neighbors]), truth_category),
            "TF-IDF nearest neighbours": same_leaf_precision(as_categories(lex_positions), truth_category),
            "MiniLM nearest neighbours": same_leaf_precision(as_categories(emb_positions), truth_category),
        },
        f"index_recall@{k}": recall_at_k(emb_positions, exact_positions),
    }

    category_logs = defaultdict(list)
    for c, e in zip(index.reference["category"].to_list(), ref_engagement):
        category_logs[c or ""].append(np.log1p(e))
    global_log = float(np.mean(np.log1p(ref_engagement)))
    prior_scores = {
        "enrich": output["exposure_prior"].to_numpy(),
        "TF-IDF nearest neighbours": weighted_knn(ref_engagement[lex_positions], lex_sims),
        "MiniLM nearest neighbours": weighted_knn(ref_engagement[emb_positions], emb_sims),
        "true category's mean": np.array([np.mean(category_logs[c or ""]) if c in category_logs else global_log for c in truth_category]),
        "popularity only (global mean)": np.full(len(truth_engagement), global_log),
        "random": np.random.default_rng(config.seed).random(len(truth_engagement)),
    }
    low, high = output["exposure_prior_low"].to_numpy(), output["exposure_prior_high"].to_numpy()
    global_low, global_high = np.quantile(ref_engagement, [0.1, 0.9])
    priors = {
        "ranking": {name: rank_metrics(s, truth_engagement, k) for name, s in prior_scores.items()},
        "interval_coverage": {
            "enrich": float(np.mean((truth_engagement >= low) & (truth_engagement <= high))),
            "popularity only (global 10%-90%)": float(np.mean((truth_engagement >= global_low) & (truth_engagement <= global_high))),
        },
        "interval_median_width": float(np.median(high - low)),
        "spearman_by_bucket": {b: float(spearmanr(prior_scores["enrich"][bucket == b], truth_engagement[bucket == b]).statistic)
                               if (bucket == b).sum() > 2 else None for b in BUCKETS},
    }
    exposure = exposure_shares(ref_engagement, {
        "popularity only (new listings unseen)": np.zeros(len(truth_engagement)),
        "prior mean (exposure_prior)": prior_scores["enrich"],
        "optimistic prior (exposure_prior_high)": high,
    }, truth_engagement, tail_threshold, max(1, int(config.slate_share * (len(ref_engagement) + len(truth_engagement)))))
    return {
        "tags": tags, "tags_by_bucket": by_bucket, "neighbors": neighbors, "priors": priors, "long_tail_exposure": exposure,
        "buckets": {"head_at_least": head_threshold, "tail_at_most": tail_threshold,
                    "counts": {b: int((bucket == b).sum()) for b in BUCKETS}},
    }


def _bucket_scores(predicted: list, truth: list) -> dict:
    rows = [(p or "", t) for p, t in zip(predicted, truth) if t]
    if not rows:
        return {"full path": None, "top level": None}
    return {"full path": float(np.mean([p == t for p, t in rows])),
            "top level": float(np.mean([truncate(p, 1) == truncate(t, 1) for p, t in rows]))}


# -- the report ----------------------------------------------------------------------------------------
def _f(value) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def to_markdown(m: dict) -> str:
    k = m["setup"]["config"]["k"]
    s = m["setup"]
    lines = [f"Catalog `{s['catalog']}`: {s['reference']} reference listings, {s['held_out']} held out ({s['split']}), "
             f"{s['seconds']} s.", "", "**Tags** (rows with a known category)", "",
             "| level | enrich acc | weighted F1 | macro F1 | TF-IDF + LR acc | weighted F1 | macro F1 |", "|---|---|---|---|---|---|---|"]
    ours, base = m["tags"]["enrich"], m["tags"]["TF-IDF + logistic regression"]
    for level in ours:
        a, b = ours[level], base[level]
        lines.append(f"| {level} (n={a['n']}) | {_f(a['accuracy'])} | {_f(a['weighted_f1'])} | {_f(a['macro_f1'])} | "
                     f"{_f(b['accuracy'])} | {_f(b['weighted_f1'])} | {_f(b['macro_f1'])} |")
    lines += ["", f"Calibration error (ECE) of `category_score`: {_f(m['tags']['calibration_error_of_category_score'])}", "",
              "| popularity bucket | n | enrich full path | top level | TF-IDF + LR full path | top level |", "|---|---|---|---|---|---|"]
    for bucket, row in m["tags_by_bucket"].items():
        a, b = row["enrich"], row["TF-IDF + logistic regression"]
        lines.append(f"| {bucket} | {row['n']} | {_f(a['full path'])} | {_f(a['top level'])} | {_f(b['full path'])} | {_f(b['top level'])} |")
    buckets = m["buckets"]
    lines += ["", f"Buckets by true engagement: head >= {buckets['head_at_least']:g}, tail <= {buckets['tail_at_most']:g}.", "",
              "**Neighbours**", "", f"| | same-leaf precision@{k} |", "|---|---|"]
    for name, value in m["neighbors"][f"precision@{k}"].items():
        lines.append(f"| {name} | {_f(value)} |")
    lines += ["", f"hnswlib recall@{k} against exact search: {_f(m['neighbors'][f'index_recall@{k}'])}", "",
              "**Exposure priors** (held-out listings ranked by prior against their true engagement)", "",
              f"| | Spearman | NDCG@{k} | NDCG@100 |", "|---|---|---|---|"]
    for name, row in m["priors"]["ranking"].items():
        lines.append(f"| {name} | {_f(row['spearman'])} | {_f(row[f'ndcg@{k}'])} | {_f(row['ndcg@100'])} |")
    coverage = m["priors"]["interval_coverage"]
    by_bucket = m["priors"]["spearman_by_bucket"]
    lines += ["", f"80% interval coverage: enrich {_f(coverage['enrich'])}, popularity only (global 10%-90%) "
              f"{_f(coverage['popularity only (global 10%-90%)'])}; median width {m['priors']['interval_median_width']:.1f}.",
              "Spearman within buckets: " + ", ".join(f"{b} {_f(v)}" for b, v in by_bucket.items()) + ".", "",
              f"**Long-tail exposure** (a ranker filling {m['long_tail_exposure']['slate']} positions, DCG-discounted)", "",
              "| new listings scored by | exposure to new listings | to tail listings | new listings shown | their mean true engagement |",
              "|---|---|---|---|---|"]
    for name, row in m["long_tail_exposure"].items():
        if isinstance(row, dict):
            lines.append(f"| {name} | {_f(row['new_listings_share'])} | {_f(row['tail_share'])} | {row['new_listings_shown']} | "
                         f"{_f(row['mean_engagement_of_new_shown'])} |")
    lines.append(f"\nMean true engagement of all held-out listings: {m['long_tail_exposure']['mean_engagement_of_all_new']:.2f}.")
    return "\n".join(lines)


def write_report(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """eval.md, eval.json, held_out.parquet and the three plots, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_text_atomically(out_dir / "eval.md", evaluation.markdown() + "\n"),
               write_text_atomically(out_dir / "eval.json", json.dumps(evaluation.metrics, indent=1))]
    written.append(write_table(evaluation.held_out, out_dir / "held_out.parquet"))
    from enrich import plots

    written += plots.write_all(evaluation, out_dir)
    return written


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
    from enrich.taxonomy import path_prefix

    return np.array([p is not None and any(path_prefix(p, depth) == path_prefix(a, depth) for a in accepted)
                     for p, accepted in zip(predicted_paths, accepted_paths)], dtype=bool)


def taxonomy_scores(predicted_paths: list[str | None], accepted_paths: list[list[str]], depths=(1, 2, 3)) -> dict:
    """Accuracy at Shopify depth d (the first d levels equal one accepted path's) and at full depth."""
    scores = {f"depth {depth}": float(taxonomy_hits(predicted_paths, accepted_paths, depth).mean()) for depth in depths}
    scores["full depth"] = float(np.mean([p in accepted for p, accepted in zip(predicted_paths, accepted_paths)]))
    return scores
