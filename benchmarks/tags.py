"""`make bench-tags`: a catalog's own tags. Tag lists are made from the listings' Amazon 'Technical Details' (age
band, batteries, assembly); the tagger is fine-tuned on 80% and scored on 20% beside TF-IDF + one-vs-rest logistic
regression. Writes out/bench-tags.{md,json} and the tags section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.multiclass import OneVsRestClassifier

from benchmarks.common import DESCRIPTIONS, machine, missing
from benchmarks.docs import publish, update_section
from enrich.catalog import Columns, listing_texts, load_catalog
from enrich.category.catalog_tags import best_tag_threshold, micro_scores
from enrich.category.finetune import finetune, training_data
from enrich.settings import FinetuneConfig
from enrich.category.tagger import Tagger
from enrich.embed import Encoder, quiet_hugging_face

DESCRIPTION_COLUMNS = Columns(id="product_id", title="product_name", brand="manufacturer", text=("product_description",),
                              category=("category", "subcategory_1", "subcategory_2", "subcategory_3", "subcategory_4"),
                              engagement=None, tags="tags")
_AGE = re.compile(r"recommended age:\s*(\d+)\s*(years|months)", re.IGNORECASE)
_FLAGS = {"batteries required": r"Batteries Required\?\s*Yes", "batteries included": r"Batteries Included\?\s*Yes",
          "assembly required": r"Assembly Required\s*Yes"}


def product_information_tags(information: str | None) -> list[str]:
    """Tags from Amazon's 'Technical Details' text: the recommended minimum age's band and yes/no facts."""
    information = information or ""
    tags = []
    if age := _AGE.search(information):
        years = int(age.group(1)) // (12 if age.group(2).lower() == "months" else 1)
        tags.append(next(band for limit, band in ((3, "ages 0-2"), (5, "ages 3-4"), (8, "ages 5-7"), (12, "ages 8-11"),
                                                   (200, "ages 12+")) if years < limit))
    return tags + [tag for tag, pattern in _FLAGS.items() if re.search(pattern, information)]


def tags_benchmark(descriptions: Path = DESCRIPTIONS, seed: int = 0, config: FinetuneConfig = FinetuneConfig()) -> dict:
    """A catalog's own tags: tag lists made from the listings' Amazon 'Technical Details' (age band, batteries,
    assembly), the tagger fine-tuned on 80% and scored on 20% beside TF-IDF + one-vs-rest logistic regression.
    Both learn from the same rows (the tagger's training split) and pick their threshold on the tagger's
    validation split; both are also scored at 0.5."""
    frame = pl.read_csv(descriptions, infer_schema=False).with_columns(
        pl.col("product_information").map_elements(lambda s: "; ".join(product_information_tags(s)), return_dtype=pl.String)
        .alias("tags"))
    order = np.random.default_rng(seed).permutation(frame.height)
    n_test = frame.height // 5
    with tempfile.TemporaryDirectory(prefix="enrich-tags-") as tmp:
        train_path, test_path = Path(tmp) / "train.csv", Path(tmp) / "test.csv"
        frame[np.sort(order[n_test:])].write_csv(train_path)
        frame[np.sort(order[:n_test])].write_csv(test_path)
        started = time.perf_counter()
        finetune(train_path, Path(tmp) / "tagger", DESCRIPTION_COLUMNS, config, progress=False)
        seconds = time.perf_counter() - started
        tagger = Tagger.load(Path(tmp) / "tagger")
        fit_rows, validation = training_data(train_path, DESCRIPTION_COLUMNS, config)  # the tagger's own split
        test = load_catalog(test_path, DESCRIPTION_COLUMNS).filter(pl.col("status") == "ok")
    vocabulary = tagger.tag_labels
    as_matrix = lambda tag_lists: np.array([[tag in tags for tag in vocabulary] for tags in tag_lists], dtype=bool)
    truth = as_matrix(test["tags"].to_list())
    tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)).fit(listing_texts(fit_rows))
    baseline = OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=1000)).fit(
        tfidf.transform(listing_texts(fit_rows)), as_matrix(fit_rows["tags"].to_list()))
    baseline_probabilities = lambda texts: baseline.predict_proba(tfidf.transform(texts))
    models = {"enrich tagger": tagger.tag_probabilities, "TF-IDF + one-vs-rest LR": baseline_probabilities}
    # The tagger chose its threshold on this validation split while fine-tuning; the baseline chooses its own here.
    thresholds = {"enrich tagger": tagger.tag_threshold, "TF-IDF + one-vs-rest LR": best_tag_threshold(
        baseline_probabilities(listing_texts(validation)), as_matrix(validation["tags"].to_list()))}
    test_probabilities = {name: probabilities(listing_texts(test)) for name, probabilities in models.items()}
    predicted = {name: test_probabilities[name] >= thresholds[name] for name in models}
    return {
        "listings": {"train": fit_rows.height, "validation": validation.height, "test": test.height}, "tags": vocabulary,
        "tag_counts_test": {tag: int(n) for tag, n in zip(vocabulary, truth.sum(0))},
        "fine_tune_seconds": round(seconds, 1), "settings": asdict(config), "thresholds": thresholds,
        "micro": {name: micro_scores(guess, truth) for name, guess in predicted.items()},
        "micro_at_0.5": {name: micro_scores(p >= 0.5, truth) for name, p in test_probabilities.items()},
        "per_tag_f1": {name: dict(zip(vocabulary, f1_score(truth, guess, average=None, zero_division=0).tolist()))
                       for name, guess in predicted.items()},
    }


def tags_markdown(r: dict) -> str:
    f = lambda x: f"{x:.3f}"
    ours, base = "enrich tagger", "TF-IDF + one-vs-rest LR"
    prf = lambda m: f"{f(m['precision'])} / {f(m['recall'])} / {f(m['f1'])}"
    n = r["listings"]
    lines = [f"| catalog tags ({n['test']} held-out listings, {len(r['tags'])} tags) | enrich tagger | "
             "TF-IDF + one-vs-rest LR (same rows) |", "|---|---|---|",
             f"| micro precision / recall / F1, threshold chosen on the {n['validation']} validation listings | "
             f"{prf(r['micro'][ours])} (threshold {r['thresholds'][ours]:.2f}) | "
             f"{prf(r['micro'][base])} (threshold {r['thresholds'][base]:.2f}) |",
             f"| micro precision / recall / F1 at threshold 0.5 | {prf(r['micro_at_0.5'][ours])} | {prf(r['micro_at_0.5'][base])} |"]
    for tag in r["tags"]:
        lines.append(f"| &nbsp;&nbsp;F1 `{tag}` ({r['tag_counts_test'][tag]} held out; chosen thresholds) | "
                     f"{f(r['per_tag_f1'][ours][tag])} | {f(r['per_tag_f1'][base][tag])} |")
    lines.append(f"| fine-tuning ({n['train']} training and {n['validation']} validation listings, paths and tags) | "
                 f"{r['fine_tune_seconds']:.0f} s | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tags", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--no-docs", action="store_true", help="do not write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    quiet_hugging_face()
    if missing(DESCRIPTIONS):
        return 2
    results = tags_benchmark(seed=args.seed)
    table = tags_markdown(results)
    publish(args.out, "bench-tags", results, table)
    if not args.no_docs:
        update_section("tags", table, "make bench-tags", machine(Encoder()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
