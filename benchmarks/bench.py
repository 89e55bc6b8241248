"""`make bench`: the catalog benchmark on the Amazon UK toy catalog, beside baselines, in one run.

The catalog is split 80/20 at random (fixed seed). The 80% becomes the reference index; the 20% is enriched as
new listings with engagement *and* category hidden, then scored against the truth by `enrich.evaluation`. Added
here: the tagger's fine-tuning, each category source alone and mixed, the prior's steps, how far the catalog
agrees with itself, the encoder's speed against sentence-transformers, and the time of a user's `enrich run`.
Writes out/bench.{md,json} and the catalog section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.linear_model import RidgeCV

from benchmarks.agreement import engagement_agreement, label_agreement
from benchmarks.common import AMAZON, AMAZON_COLUMNS, DEFAULT_CATALOG, gpu_name, machine, missing, rho
from benchmarks.docs import publish, update_section
from benchmarks.paths import encoder_paths, markdown_rows as paths_rows, quality_against_torch_fp32
from benchmarks.team import markdown_rows, team_view
from enrich.catalog import listing_texts, load_catalog
from enrich.category.finetune import finetune, training_data
from enrich.category.tagger import Tagger
from enrich.category.vote import ClassifierScores, vote
from enrich.embed import Encoder, quiet_hugging_face
from enrich.evaluation.evaluate import evaluate, split_catalog
from enrich.evaluation.metrics import tag_metrics
from enrich.evaluation.simulate import markdown as simulation_markdown
from enrich.index.build import build_index, build_index_from_frame, calibration_texts
from enrich.index.store import ReferenceIndex
from enrich.prior import FEATURES, Evidence, cross_fitted_text_model, reference_evidence
from enrich.run.score import classifier_scores, find_evidence
from enrich.settings import EncoderConfig, EnrichConfig, EvalConfig, FinetuneConfig, VoteConfig


def prior_ablation(index: ReferenceIndex, evidence_new: Evidence, truth_y: np.ndarray) -> dict[str, float]:
    """Spearman of the prior as evidence is added step by step (the stacker refitted on each subset)."""
    prior = index.prior
    y = np.log1p(index.engagement)
    evidence_ref = reference_evidence(np.asarray(index.embeddings), index.neighbors, index.lexical_matrix, index.engagement,
                                      index.reference["brand"].to_list(), index.neighbors.config.candidates)
    text_oof, _ = cross_fitted_text_model(evidence_ref.text_features, y, prior.config)
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


def train_tagger(catalog: Path, reference: pl.DataFrame, folder: Path) -> tuple[Tagger, dict]:
    """Fine-tune on the split's reference part only (the held-out listings stay unseen), with the defaults."""
    rows = pl.read_csv(catalog, infer_schema=False).filter(pl.col(AMAZON.id).is_in(reference["id"].implode()))
    rows.write_csv(folder / "reference.csv")
    config = FinetuneConfig()
    metrics = finetune(folder / "reference.csv", folder / "tagger", AMAZON, config, progress=True)
    figures = {k: v for k, v in metrics.items() if k != "history"}
    figures["history"] = metrics["history"]
    figures["listings_per_s"] = metrics["train_rows"] * metrics["epochs_run"] / metrics["seconds"]
    tagger = Tagger.load(folder / "tagger")
    figures["settings"] = (f"all-MiniLM-L6-v2, {config.epochs} epochs max (patience {config.patience}), batch {config.batch_size},"
                           f" lr {config.learning_rate:g} body / {config.head_learning_rate:g} head, linear warm-up/decay,"
                           f" max {config.max_length} tokens, mixed precision {tagger.info['mixed_precision']}")
    figures["device"] = gpu_name() or "this CPU"
    return tagger, figures


def _mix_categories(index: ReferenceIndex, found, classifiers: list[ClassifierScores], config: VoteConfig) -> list[str | None]:
    return vote(index.categories[found.positions], found.sims, config, classifiers).category


def _category_scores(predicted: list[str | None], truth: list) -> dict:
    metrics = tag_metrics(predicted, truth)
    return {"full path": metrics["full path"], "top level": metrics["level 1"]}


def _mix_scores(index: ReferenceIndex, found, classifiers: list[ClassifierScores], truth: list, config: VoteConfig) -> dict:
    return _category_scores(_mix_categories(index, found, classifiers, config), truth)


def _sources(index: ReferenceIndex, found, tagger: Tagger | None) -> tuple[dict[str, ClassifierScores], float | None]:
    """The classifiers' scores for `found` by source, as `enrich run` computes them, and the tagger's prediction
    throughput (timed with the TF-IDF model's, which takes milliseconds of it)."""
    started = time.perf_counter()
    sources = {c.source: c for c in classifier_scores(found, index, tagger)}
    per_s = len(found.texts) / (time.perf_counter() - started) if tagger is not None else None
    return sources, per_s


def tagger_fp32_speed(tagger: Tagger, texts: list[str]) -> float:
    """The same tagger's predictions in fp32: what its measured precision must not be slower than."""
    fp32 = Tagger.load(tagger.folder, precision="fp32")
    fp32.logits(texts[:64])
    started = time.perf_counter()
    fp32.logits(texts)
    return len(texts) / (time.perf_counter() - started)


def category_sources(index: ReferenceIndex, found, tagger: Tagger | None, truth: list) -> dict:
    """Category quality from each source alone and mixed: the neighbours' vote, the TF-IDF category model, the tagger."""
    sources, per_s = _sources(index, found, tagger)
    lexical, tagged = sources["lexical"], sources.get("tagger")
    only = VoteConfig(neighbor_weight=0.0)
    every_source = "vote + TF-IDF category model (default weights)"  # what `enrich run` writes without a tagger
    mixes = {"neighbours' vote only": (VoteConfig(), []),
             "TF-IDF category model only": (only, [lexical]),
             every_source: (VoteConfig(), [lexical])}
    if tagged is not None:
        every_source = "all three (default weights)"
        mixes |= {"tagger only": (only, [tagged]),
                  "vote + tagger (0.3 / 0.7, the mix before the TF-IDF model)": (VoteConfig(neighbor_weight=0.3, tagger_weight=0.7), [tagged]),
                  every_source: (VoteConfig(), [lexical, tagged])}
    predicted = {name: _mix_categories(index, found, classifiers, config) for name, (config, classifiers) in mixes.items()}
    return {"mixes": {name: _category_scores(categories, truth) for name, categories in predicted.items()},
            "prediction_listings_per_s": per_s,
            "label_agreement": label_agreement(index.categories[found.positions], found.sims, truth, predicted[every_source])}


def weights_on_validation(reference: pl.DataFrame, tagger: Tagger, encoder: Encoder, folder: Path, step: float = 0.05) -> dict:
    """The sources' weights as they were chosen: on the tagger's own validation split (listings it did not train
    on), with the index and the TF-IDF model built from its training rows only. The held-out 20% plays no part."""
    _, tagger_validation = training_data(folder / "reference.csv", AMAZON, FinetuneConfig())  # as train_tagger split it
    is_validation = reference["id"].is_in(tagger_validation["id"].implode())
    train, validation = reference.filter(~is_validation), reference.filter(is_validation)
    build_index_from_frame(train, folder / "validation-index", "tagger's training rows", AMAZON, progress=False, encoder=encoder)
    index = ReferenceIndex.load(folder / "validation-index", encoder)
    found = find_evidence(validation, index, encoder, index.neighbors.config.candidates)
    sources, _ = _sources(index, found, tagger)
    truth = validation["category"].to_list()
    grid = []
    for lexical in np.arange(0, 1 + 1e-9, step):
        for tagged in np.arange(0, 1 - lexical + 1e-9, step):
            config = VoteConfig(neighbor_weight=round(1 - lexical - tagged, 2), lexical_weight=round(lexical, 2),
                                tagger_weight=round(tagged, 2))
            accuracy = _mix_scores(index, found, list(sources.values()), truth, config)["full path"]["accuracy"]
            grid.append((round(accuracy, 4), config.neighbor_weight, config.lexical_weight, config.tagger_weight))
    grid.sort(key=lambda row: -row[0])
    default = VoteConfig()
    at_default = _mix_scores(index, found, list(sources.values()), truth, default)["full path"]["accuracy"]
    return {"rows": validation.height, "best": grid[:5], "default": (round(at_default, 4), default.neighbor_weight,
                                                                       default.lexical_weight, default.tagger_weight)}


def benchmark(catalog: Path, seed: int = 0, with_tagger: bool = True) -> dict:
    """Fine-tuning, the evaluation (tags, neighbours, priors with baselines), the prior's steps, speed."""
    encoder = Encoder(EncoderConfig())
    results: dict = {"catalog": str(catalog), "seed": seed, "machine": machine(encoder)}
    frame = load_catalog(catalog, AMAZON, reference=True)
    reference, held_out = split_catalog(frame, EvalConfig(seed=seed))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tagger = None
        if with_tagger:
            tagger, results["finetune"] = train_tagger(catalog, reference, folder)
        started = time.perf_counter()
        evaluation = evaluate(catalog, AMAZON, EvalConfig(seed=seed), progress=True, encoder=encoder, tagger=tagger)
        results["eval_seconds"] = time.perf_counter() - started
        results["eval"] = evaluation.metrics
        started = time.perf_counter()
        build_index_from_frame(reference, folder / "index", str(catalog), AMAZON, progress=False, encoder=encoder,
                               tagger_dir=tagger.folder if tagger is not None else None)
        results["index_seconds"] = time.perf_counter() - started
        index = ReferenceIndex.load(folder / "index", encoder)
        found = find_evidence(held_out, index, encoder, index.neighbors.config.candidates)
        truth_engagement = held_out["engagement"].to_numpy().astype(np.float64)
        results["prior_steps"] = prior_ablation(index, found.evidence, truth_engagement)
        results["engagement_agreement"] = engagement_agreement(
            index.engagement[found.positions[:, 0]], found.sims[:, 0], truth_engagement,
            index.prior.predict(found.evidence).expected)
        results["category_sources"] = category_sources(index, found, tagger, held_out["category"].to_list())
        if tagger is not None:
            results["weights_on_validation"] = weights_on_validation(reference, tagger, encoder, folder)
            results["tagger_precision"] = {**asdict(tagger.precision), "fp32_per_s": tagger_fp32_speed(tagger, found.texts)}
        results["team"] = team_view(evaluation, index, found, tagger, reference, held_out, encoder, folder)
        results["encoder"] = encoder_paths(listing_texts(held_out), calibration_texts(reference, EnrichConfig().prior.seed), encoder)
        results["paths_quality"] = quality_against_torch_fp32(catalog, seed, evaluation.metrics, tagger)
        results["run_2000"] = run_timing(catalog, folder)
    return results


def _agreement_lines(rows: list[dict], measure: str, shown: str, keys: tuple[str, str]) -> list[str]:
    """One table row per similarity bucket of `label_agreement` or `engagement_agreement`, those with a figure."""
    lines, lowest = [], None
    for row in rows:
        which = f"at cosine >= {row['min_cosine']:.2f}" if row["min_cosine"] is not None else f"below cosine {lowest:.2f}"
        lowest = row["min_cosine"]
        if row[keys[0]] is not None:
            lines.append(f"| &nbsp;&nbsp;{measure}, held-out listings whose nearest reference listing is {which} "
                         f"({row['listings']}): {shown} | {row[keys[0]]:.3f}; {row[keys[1]]:.3f} | | report |")
    return lines


def to_markdown(r: dict) -> str:
    f = lambda x: f"{x:.3f}"
    m = r["eval"]
    ranking = m["priors"]["ranking"]
    lines = ["| measure | enrich | baselines (same run) | bar |", "|---|---|---|---|"]
    lines.append(f"| Spearman, exposure_prior vs true reviews | **{f(ranking['enrich']['spearman'])}** | " + "; ".join(
        f"{name} {f(row['spearman'])}" for name, row in ranking.items()
        if name in ("TF-IDF nearest neighbours", "MiniLM nearest neighbours", "true category's mean")) + " | >= 0.45 |")
    for step, value in r["prior_steps"].items():
        lines.append(f"| &nbsp;&nbsp;prior step: {step} | {f(value)} | | |")
    lines += _agreement_lines(r.get("engagement_agreement", []), "engagement agreement", "Spearman of its engagement; of enrich's prior",
                              ("nearest_spearman", "enrich_spearman"))
    lines.append(f"| 80% interval coverage | {f(m['priors']['interval_coverage']['enrich'])} | | 0.70 to 0.90 |")
    precision = m["neighbors"]["precision@10"]
    lines.append(f"| same-leaf precision@10 of neighbors | **{f(precision['enrich'])}** | "
                 f"TF-IDF {f(precision['TF-IDF nearest neighbours'])}; MiniLM {f(precision['MiniLM nearest neighbours'])} | >= 0.62 |")
    ours, lr = m["tags"]["enrich"], m["tags"]["TF-IDF + logistic regression"]
    source = "vote, TF-IDF model and tagger" if "finetune" in r else "vote and TF-IDF model"
    bars = (">= 0.80", ">= 0.90", ">= 0.80; macro reported") if "finetune" in r else ("report",) * 3
    for (level, label), bar in zip((("full path", "full path"), ("level 1", "top level")), bars):
        lines.append(f"| category accuracy, {label} ({source}) | {f(ours[level]['accuracy'])} | "
                     f"TF-IDF + LR {f(lr[level]['accuracy'])} | {bar} |")
    lines.append(f"| weighted / macro F1, full path | {f(ours['full path']['weighted_f1'])} / {f(ours['full path']['macro_f1'])} | "
                 f"TF-IDF + LR {f(lr['full path']['weighted_f1'])} / {f(lr['full path']['macro_f1'])} | {bars[2]} |")
    lines.append(f"| category calibration error (ECE of category_score, held out) | {f(m['tags']['calibration_error_of_category_score'])} | | report |")
    for name, row in r["category_sources"]["mixes"].items():
        lines.append(f"| &nbsp;&nbsp;{name}: full-path acc / weighted F1 / macro F1; top level | "
                     f"{f(row['full path']['accuracy'])} / {f(row['full path']['weighted_f1'])} / "
                     f"{f(row['full path']['macro_f1'])}; {f(row['top level']['accuracy'])} | | |")
    lines += markdown_rows(m, r["team"])
    lines += _agreement_lines(r["category_sources"].get("label_agreement", []), "label agreement",
                              "labelled as it; enrich's accuracy on them", ("labelled_as_nearest", "enrich_accuracy"))
    if "finetune" in r:
        ft, chosen = r["finetune"], r["weights_on_validation"]
        show = lambda row: f"{row[1]:g} / {row[2]:g} / {row[3]:g}: {f(row[0])}"
        lines.append(f"| &nbsp;&nbsp;weights vote / TF-IDF / tagger on the tagger's validation split ({chosen['rows']} listings): "
                     f"best; the defaults | {show(chosen['best'][0])}; {show(chosen['default'])} | | |")
        lines.append(f"| tagger validation ECE before / after temperature scaling | {f(ft['calibration_error_before'])} / "
                     f"{f(ft['calibration_error_after'])} (T = {ft['temperature']:.2f}) | | report |")
        mp, tp = ft["mixed_precision"], r["tagger_precision"]
        lines.append(f"| fine-tuning on {r['finetune'].get('device', 'this CPU')} ({ft['settings']}) | {ft['seconds']:.0f} s, {ft['epochs_run']} epochs "
                     f"(best {ft['best_epoch']}), {ft['listings_per_s']:.0f} listings/s | | report |")
        lines.append(f"| &nbsp;&nbsp;fine-tuning's mixed precision: {mp['chosen']} ({mp['reason']}); a training step on the fixed "
                     f"workload, listings/s | {', '.join(f'{k} {v:.0f}' for k, v in mp['per_s'].items()) or '—'} | | never slower than no |")
        lines.append(f"| tagger prediction throughput ({tp['chosen']}, {tp['reason']}; at first use, listings/s: "
                     f"{', '.join(f'{k} {v:.0f}' for k, v in tp['per_s'].items()) or '—'}) | "
                     f"{r['category_sources']['prediction_listings_per_s']:.0f} listings/s | its torch fp32 path {tp['fp32_per_s']:.0f}/s | "
                     "never slower than fp32 |")
    lines += paths_rows(r["encoder"], r["paths_quality"])
    e = r["encoder"]["chosen_against_sentence_transformers"]
    lines.append(f"| embedding agreement with sentence-transformers: min cosine; top-10 neighbours kept | {e['min_cosine']:.4f}; "
                 f"{f(e['top10_kept'])} | | >= 0.99; >= 0.95 |")
    lines.append(f"| hnswlib recall@10 vs exact search | {f(m['neighbors']['index_recall@10'])} | | >= 0.98 |")
    t = r["run_2000"]
    lines.append(f"| `enrich run`, {t['listings']} new vs {t['index_size']}-listing index, model load included | {t['seconds']:.1f} s | | < 30 s |")
    lines.append(f"| `enrich index` of the 80% reference | {r['index_seconds']:.1f} s | | |")
    lines.append(f"| `enrich eval` (the whole evaluation, baselines included) | {r['eval_seconds']:.1f} s | | < 10 min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--no-tagger", action="store_true", help="skip fine-tuning (about 8 minutes on 2 cores)")
    parser.add_argument("--skip-llm", action="store_true", help="leave out the LLM stage's benchmark (about 5 minutes)")
    parser.add_argument("--no-docs", action="store_true", help="do not write the tables into docs/benchmarks.md")
    args = parser.parse_args(argv)
    quiet_hugging_face()  # its load and save bars, once per model, would bury the benchmark's own progress
    if missing(args.catalog):
        return 2
    if not args.skip_llm:
        from benchmarks import llm

        llm.main(["--catalog", str(args.catalog), "--out", str(args.out)] + (["--no-docs"] if args.no_docs else []))
    results = benchmark(args.catalog, args.seed, with_tagger=not args.no_tagger)
    table = to_markdown(results)
    print(f"\nmachine: {results['machine']}; catalog {results['catalog']}, 80/20 split, seed {results['seed']}\n")
    publish(args.out, "bench", results, table)
    simulation = simulation_markdown(results["team"]["simulation"])
    (args.out / "simulate.md").write_text(simulation + "\n")
    if not args.no_docs:
        command = "make bench" + (" ARGS=--skip-llm" if args.skip_llm else "")
        update_section("catalog", table, command, results["machine"])
        update_section("simulation", simulation, command, results["machine"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
