"""`make bench`: the pipeline's figures on the Amazon UK toy catalog, beside the baselines, in one run.

The catalog is split 80/20 at random (fixed seed). The 80% becomes the reference index; the 20% is
enriched as new listings with engagement *and* category hidden, then scored against the truth.
Prints a Markdown table and writes it, with every number, to out/bench.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, RidgeCV

from enrich.catalog import Columns, listing_texts, load_catalog
from enrich.embed import Encoder, EncoderConfig, packaged_model_path
from enrich.neighbors import exact_search, recall_at_k
from enrich.pipeline import EnrichConfig, ReferenceIndex, build_index, enrich_frame
from enrich.prior import FEATURES, Evidence, brand_key
from enrich.lexical import pairwise_cosine
from enrich.sample import AMAZON_COLUMNS

AMAZON = Columns(id="uniq_id", title="product_name", brand="manufacturer", text=(),
                 category="amazon_category_and_sub_category", engagement="number_of_reviews")
DEFAULT_CATALOG = Path("../shared/data/amazon_uk_toys/catalog.csv")


def split(catalog: Path, folder: Path, seed: int) -> tuple[Path, Path, pl.DataFrame]:
    """80% reference (all columns), 20% new (engagement and category removed), and the 20%'s truth."""
    frame = pl.read_csv(catalog, infer_schema=False).select(AMAZON_COLUMNS)
    order = np.random.default_rng(seed).permutation(frame.height)
    cut = int(0.8 * frame.height)
    reference, new = frame[order[:cut]], frame[order[cut:]]
    reference.write_csv(folder / "reference.csv")
    new.drop("number_of_reviews", "amazon_category_and_sub_category").write_csv(folder / "new.csv")
    truth = new.select(
        pl.col("uniq_id").alias("id"),
        pl.col("amazon_category_and_sub_category").alias("category"),
        pl.col("number_of_reviews").str.replace_all(",", "").cast(pl.Float64).alias("engagement"),
    )
    return folder / "reference.csv", folder / "new.csv", truth


def weighted_knn(neighbor_engagement: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """The plain baseline: similarity-weighted mean of log engagement over the neighbours."""
    weights = np.clip(sims, 1e-6, None)
    return (weights * np.log1p(neighbor_engagement)).sum(1) / weights.sum(1)


def same_leaf_precision(neighbor_categories: np.ndarray, truth: np.ndarray) -> float:
    known = np.array([bool(c) for c in truth])
    return float((neighbor_categories[known] == truth[known][:, None]).mean())


def top_level(path: str | None) -> str:
    return (path or "").split(" > ")[0]


def accuracy(predicted: list, truth: list, level=lambda p: p) -> float:
    pairs = [(level(p), level(t)) for p, t in zip(predicted, truth) if t]
    return float(np.mean([p == t for p, t in pairs]))


def rho(x: np.ndarray, y: np.ndarray) -> float:
    return float(spearmanr(x, y).statistic)


def encoder_speed(texts: list[str], reference_texts: list[str], repeats: int = 3) -> dict:
    """Our encoder against sentence-transformers' encode on the same texts; agreement of vectors and neighbours."""
    from sentence_transformers import SentenceTransformer

    baseline = SentenceTransformer(packaged_model_path(), device="cpu")
    ours = Encoder(EncoderConfig())
    # A first full pass of each builds its kernels for every shape; then the best of `repeats`, interleaved.
    started = time.perf_counter()
    expected = baseline.encode(texts, batch_size=32, normalize_embeddings=True)
    baseline_cold = time.perf_counter() - started
    started = time.perf_counter()
    got = ours.encode(texts)
    ours_cold = time.perf_counter() - started
    baseline_s, ours_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        baseline.encode(texts, batch_size=32, normalize_embeddings=True)
        baseline_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        ours.encode(texts)
        ours_s.append(time.perf_counter() - started)
    cosine = (expected * got).sum(1)
    corpus_expected = baseline.encode(reference_texts, batch_size=64, normalize_embeddings=True)
    corpus_got = ours.encode(reference_texts)
    top_expected, _ = exact_search(expected, corpus_expected, 10)
    top_got, _ = exact_search(got, corpus_got, 10)
    return {
        "texts": len(texts),
        "dtype": str(ours.dtype).removeprefix("torch."),
        "baseline_per_s": len(texts) / min(baseline_s),
        "ours_per_s": len(texts) / min(ours_s),
        "speedup": min(baseline_s) / min(ours_s),
        "speedup_first_pass": baseline_cold / ours_cold,
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "top10_agreement": recall_at_k(top_got, top_expected),
    }


def prior_ablation(index: ReferenceIndex, evidence_new: Evidence, truth_y: np.ndarray) -> dict[str, float]:
    """Spearman of the prior as evidence is added step by step (the stacker refitted on each subset)."""
    prior = index.prior
    embeddings = np.asarray(index.embeddings)
    k = index.neighbors.config.candidates
    positions, sims = index.neighbors.search_excluding_self(embeddings, k)
    y = np.log1p(index.engagement)
    brands = [brand_key(b) for b in index.reference["brand"].to_list()]
    import scipy.sparse as sp
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.linear_model import Ridge

    text_features = sp.hstack([index.lexical_matrix, sp.csr_matrix(embeddings)]).tocsr()
    folds = KFold(n_splits=prior.config.folds, shuffle=True, random_state=prior.config.seed)
    text_oof = cross_val_predict(Ridge(alpha=prior.config.text_alpha), text_features, y, cv=folds)
    evidence_ref = Evidence(index.engagement[positions], sims, pairwise_cosine(index.lexical_matrix, index.lexical_matrix, positions),
                            brands, text_features)
    train = prior.features(evidence_ref, leave_out=y, text_prediction=text_oof)
    test = prior.features(evidence_new)
    steps = {
        "kNN, empirical-Bayes shrinkage": ["neighbors_eb"],
        "+ relative weights and neighbour spread": ["neighbors_eb", "neighbors_mean", "evidence", "top_similarity", "neighbor_spread", "wide_mean"],
        "+ lexical (TF-IDF) evidence": ["neighbors_eb", "neighbors_mean", "evidence", "top_similarity", "neighbor_spread", "wide_mean", "lexical_mean"],
        "+ brand": ["neighbors_eb", "neighbors_mean", "evidence", "top_similarity", "neighbor_spread", "wide_mean", "lexical_mean", "brand_eb"],
        "+ text model (all features, learned weights)": list(FEATURES),
    }
    out = {}
    for name, chosen in steps.items():
        cols = [FEATURES.index(c) for c in chosen]
        if len(cols) == 1:
            out[name] = rho(test[:, cols[0]], truth_y)
            continue
        model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(train[:, cols], y)
        out[name] = rho(model.predict(test[:, cols]), truth_y)
    return out


def run_timing(catalog: Path, folder: Path, n_new: int = 2000) -> dict:
    """`enrich run` of n_new listings against an index of the whole catalog, as a user runs it (model load included)."""
    build_index(catalog, folder / "full-index", AMAZON, progress=False)
    new = pl.read_csv(catalog, infer_schema=False).select(AMAZON_COLUMNS).head(n_new).drop("number_of_reviews")
    new.write_csv(folder / "new2000.csv")
    command = [sys.executable, "-m", "enrich", "run", str(folder / "new2000.csv"), "--index", str(folder / "full-index"),
               "--out", str(folder / "run2000.parquet"), "--quiet", "--id-col", "uniq_id", "--title-col", "product_name",
               "--brand-col", "manufacturer", "--text-cols", ""]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    rows = pl.read_parquet(folder / "run2000.parquet").height
    return {"listings": n_new, "index_size": pl.read_csv(catalog, infer_schema=False).height, "seconds": seconds, "rows_out": rows}


def benchmark(catalog: Path, seed: int = 0) -> dict:
    results: dict = {"catalog": str(catalog), "seed": seed, "machine": f"{platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} cores", "cpu_bf16": None}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reference_path, new_path, truth = split(catalog, folder, seed)
        started = time.perf_counter()
        build_index(reference_path, folder / "index", AMAZON, progress=True)
        results["index_seconds"] = time.perf_counter() - started
        config = EnrichConfig()
        encoder = Encoder(config.encoder)
        results["cpu_bf16"] = str(encoder.dtype) == "torch.bfloat16"
        index = ReferenceIndex.load(folder / "index", encoder)
        frame = load_catalog(new_path, AMAZON, reference=False)
        started = time.perf_counter()
        output = enrich_frame(frame, index, encoder, config, progress=True)
        results["enrich_seconds"] = time.perf_counter() - started
        output = output.join(truth, on="id", how="left", suffix="_true")
        y_true = output["engagement"].to_numpy()
        true_categories = np.array([c or "" for c in output["category_true"].to_list()], dtype=object)

        # Baselines, computed on the same split.
        ref = index.reference
        ref_texts = listing_texts(load_catalog(reference_path, AMAZON, reference=True).filter(pl.col("status") == "ok"))
        new_texts = listing_texts(frame)
        vectors = encoder.encode(new_texts)
        emb_positions, emb_sims = index.neighbors.search(vectors, 10)
        tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)).fit(ref_texts)
        ref_tfidf, new_tfidf = tfidf.transform(ref_texts), tfidf.transform(new_texts)
        lex_positions, lex_sims = exact_search_sparse(new_tfidf, ref_tfidf, 10)
        categories = index.categories
        known = ref["category"].is_not_null().to_numpy()
        category_mean = defaultdict(list)
        for c, e in zip(ref["category"].to_list(), index.engagement):
            category_mean[c or ""].append(np.log1p(e))
        global_mean = float(np.mean(np.log1p(index.engagement)))
        true_category_mean = np.array([np.mean(category_mean[c]) if c in category_mean else global_mean for c in true_categories])

        results["prior_spearman"] = {
            "enrich exposure_prior": rho(output["exposure_prior"].to_numpy(), y_true),
            "TF-IDF nearest neighbours (10, weighted)": rho(weighted_knn(index.engagement[lex_positions], lex_sims), y_true),
            "MiniLM nearest neighbours (10, weighted)": rho(weighted_knn(index.engagement[emb_positions], emb_sims), y_true),
            "true category's mean": rho(true_category_mean, y_true),
        }
        positions, sims = index.neighbors.search(vectors, index.neighbors.config.candidates)
        new_lexical = index.lexical.transform(new_texts)
        import scipy.sparse as sp
        evidence_new = Evidence(index.engagement[positions], sims, pairwise_cosine(new_lexical, index.lexical_matrix, positions),
                                [brand_key(b) for b in frame["brand"].to_list()],
                                sp.hstack([new_lexical, sp.csr_matrix(vectors)]).tocsr())
        results["prior_steps"] = prior_ablation(index, evidence_new, y_true)
        low, high = output["exposure_prior_low"].to_numpy(), output["exposure_prior_high"].to_numpy()
        results["interval_coverage"] = float(np.mean((y_true >= low) & (y_true <= high)))

        id_to_position = {i: p for p, i in enumerate(index.ids)}
        ours = np.array([[categories[id_to_position[i]] or "" for i in row] for row in output["neighbors"].to_list()], dtype=object)
        as_cat = lambda pos: np.array([[c or "" for c in row] for row in categories[pos]], dtype=object)
        results["neighbor_precision_at_10"] = {
            "enrich neighbors (vote-aware order)": same_leaf_precision(ours, true_categories),
            "TF-IDF nearest neighbours": same_leaf_precision(as_cat(lex_positions), true_categories),
            "MiniLM nearest neighbours": same_leaf_precision(as_cat(emb_positions), true_categories),
        }
        exact_positions, _ = exact_search(vectors, np.asarray(index.embeddings), 10)
        results["index_recall_at_10"] = recall_at_k(emb_positions, exact_positions)

        classifier = LogisticRegression(max_iter=300, C=10.0)
        classifier.fit(ref_tfidf[known], np.array(ref["category"].to_list(), dtype=object)[known])
        lr_predicted = classifier.predict(new_tfidf).tolist()
        predicted = output["category"].to_list()
        truth_list = [c or None for c in true_categories]
        results["category_accuracy"] = {
            "enrich (neighbour vote)": {"full path": accuracy(predicted, truth_list),
                                        "top level": accuracy(predicted, truth_list, top_level)},
            "TF-IDF + logistic regression": {"full path": accuracy(lr_predicted, truth_list),
                                             "top level": accuracy(lr_predicted, truth_list, top_level)},
        }
        results["encoder"] = encoder_speed(new_texts[:2000], ref_texts)
        results["run_2000"] = run_timing(catalog, folder)
    return results


def exact_search_sparse(queries, reference, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = (queries @ reference.T).toarray()
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(scores, top, 1).astype(np.float32)


def to_markdown(r: dict) -> str:
    f = lambda x: f"{x:.3f}"
    lines = ["| measure | enrich | baselines (same run) | bar |", "|---|---|---|---|"]
    p = r["prior_spearman"]
    lines.append(f"| Spearman, exposure_prior vs true reviews | **{f(p['enrich exposure_prior'])}** | "
                 + "; ".join(f"{k} {f(v)}" for k, v in p.items() if not k.startswith("enrich")) + " | >= 0.45 |")
    for step, value in r["prior_steps"].items():
        lines.append(f"| &nbsp;&nbsp;prior step: {step} | {f(value)} | | |")
    lines.append(f"| 80% interval coverage | {f(r['interval_coverage'])} | | near 0.80 |")
    n = r["neighbor_precision_at_10"]
    lines.append(f"| same-leaf precision@10 of neighbors | **{f(n['enrich neighbors (vote-aware order)'])}** | "
                 f"TF-IDF {f(n['TF-IDF nearest neighbours'])}; MiniLM {f(n['MiniLM nearest neighbours'])} | >= 0.62 |")
    c = r["category_accuracy"]
    ours, lr = c["enrich (neighbour vote)"], c["TF-IDF + logistic regression"]
    lines.append(f"| category accuracy, full path | {f(ours['full path'])} | TF-IDF + LR {f(lr['full path'])} | report |")
    lines.append(f"| category accuracy, top level | {f(ours['top level'])} | TF-IDF + LR {f(lr['top level'])} | report |")
    e = r["encoder"]
    lines.append(f"| embedding throughput, {e['texts']} texts ({e['dtype']}), warm; first pass {e['speedup_first_pass']:.2f}x | {e['ours_per_s']:.0f}/s, **{e['speedup']:.2f}x** | "
                 f"sentence-transformers encode (fp32) {e['baseline_per_s']:.0f}/s | >= 3x |")
    lines.append(f"| embedding agreement: min cosine; top-10 neighbours kept | {e['cosine_min']:.4f}; {f(e['top10_agreement'])} | | >= 0.99; >= 0.95 |")
    lines.append(f"| hnswlib recall@10 vs exact search | {f(r['index_recall_at_10'])} | | >= 0.98 |")
    t = r["run_2000"]
    lines.append(f"| `enrich run`, {t['listings']} new vs {t['index_size']}-listing index, model load included | {t['seconds']:.1f} s | | < 30 s |")
    lines.append(f"| `enrich index` of the 80% reference ({r['index_seconds']:.1f} s); enrich of the 20% ({r['enrich_seconds']:.1f} s) | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enrich.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args(argv)
    if not args.catalog.exists():
        print(f"bench: {args.catalog} not found (the shared data folder is needed for the benchmark)", file=sys.stderr)
        return 2
    results = benchmark(args.catalog, args.seed)
    table = to_markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=1))
    (args.out / "bench.md").write_text(table + "\n")
    print(f"\nmachine: {results['machine']}; catalog {results['catalog']}, 80/20 split, seed {results['seed']}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
