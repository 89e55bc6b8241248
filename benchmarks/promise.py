"""`make bench-promise` (part of `make bench`): the acceptance promise as a team meets it, and the review it saves.

For each of 5 random 80/20 splits of the catalog (seeds 0-4), the 80% is indexed (with and without a tagger
fine-tuned on that 80% only) and the 20% enriched as new listings. Measured on the 20%: how often the paths accepted
at full depth (`review` false) are right and how many there are, how often `category_confident` is right and how
many keep a level, by the rule `enrich run` applies, and by the rule before it (per-level thresholds chosen on the
listings that fitted the calibration) in the same run. Then review effort: the share of the batch a reviewer, who
gives the true path, works through in the queue's order until the batch's categories are right 0.90 and 0.95 of the
time, against the queue's order before and a random order. Writes out/bench-promise.{md,json} and the promise
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.isotonic import IsotonicRegression

from benchmarks.common import AMAZON, DEFAULT_CATALOG, machine, missing
from benchmarks.docs import publish, update_section
from benchmarks.taggers import BENCH_TAGGER, split_tagger
from enrich.catalog import load_catalog
from enrich.catalog.paths import path_levels, path_prefix
from enrich.category.selective import precision_lower_bound
from enrich.category.vote import vote
from enrich.embed import Encoder, quiet_hugging_face
from enrich.evaluation.evaluate import split_catalog
from enrich.evaluation.metrics import acceptance_scores, review_effort
from enrich.index.build import build_index_from_frame
from enrich.index.calibration import CalibrationListings, cross_fitted_listings
from enrich.index.store import ReferenceIndex
from enrich.run.score import acceptance, classifier_scores, find_evidence
from enrich.sampling import fit_sample
from enrich.serve.store import review_priority
from enrich.settings import EnrichConfig, EvalConfig, FinetuneConfig

SEEDS = (0, 1, 2, 3, 4)
EFFORT_TARGETS = (0.9, 0.95)
RANDOM_ORDERS = 20  # random review orders averaged


class TodaysRule:
    """The acceptance rule before this benchmark's (issue 32), kept here to be measured beside it: per level, the
    lowest calibrated score whose listings' precision bound reaches the target, the isotonic map and the threshold
    both fitted on the same calibration listings (the tagger's validation split, else a random fifth, at most 2,000,
    each predicted by a category model fitted without them)."""

    def __init__(self, listings: CalibrationListings, target: float = 0.9, confidence: float = 0.9):
        self.maps, self.thresholds = [], []
        depth = max(len(s) for s in listings.level_scores)
        for d in range(1, depth + 1):
            rows = [i for i, s in enumerate(listings.level_scores) if len(s) >= d]
            raw = np.array([listings.level_scores[i][d - 1] for i in rows])
            right = np.array([path_prefix(listings.predicted[i], d) == path_prefix(listings.truth[i], d) for i in rows], float)
            if len(rows) < 20:
                self.maps.append(([0.0, 1.0], [0.0, 1.0]))
                self.thresholds.append(None)
                continue
            isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, right)
            self.maps.append((isotonic.X_thresholds_, isotonic.y_thresholds_))
            self.thresholds.append(self._lowest(isotonic.predict(raw), right, target, confidence))

    @staticmethod
    def _lowest(calibrated: np.ndarray, right: np.ndarray, target: float, confidence: float) -> float | None:
        order = np.argsort(-calibrated, kind="stable")
        hits, seen = np.cumsum(right[order]), np.arange(1, len(order) + 1)
        bound = np.array([precision_lower_bound(int(h), int(s), confidence) for h, s in zip(hits, seen)])
        ends = np.r_[calibrated[order][1:] < calibrated[order][:-1], True]  # only where a score ends
        passing = np.flatnonzero((bound >= target) & ends)
        return float(calibrated[order[passing.max()]]) if len(passing) else None

    def decide(self, path: str | None, level_scores: list[float]) -> tuple[str | None, bool]:
        depth = 0
        for d, score in enumerate(level_scores):
            threshold = self.thresholds[d] if d < len(self.thresholds) else None
            if threshold is None or np.interp(score, *self.maps[d]) < threshold:
                break
            depth = d + 1
        return (path_prefix(path, depth) or None) if path else None, not path or depth < len(path_levels(path))


def todays_listings(reference: pl.DataFrame, index: ReferenceIndex, tagger, config: EnrichConfig) -> CalibrationListings:
    """Today's calibration listings, scored as its index build scored them (one category model without them all)."""
    labelled = np.flatnonzero(reference["category"].is_not_null().to_numpy())
    if tagger is not None:
        rows = labelled[np.isin(reference["id"].to_numpy()[labelled], list(tagger.info["validation_ids"]))]
    else:
        rows = labelled[fit_sample(len(labelled), min(2000, int(0.2 * len(labelled))), 0)]
    return cross_fitted_listings(reference, index.neighbors, index.lexical_matrix, config.vote, config.category_model,
                                 config.index.candidates, tagger, rows, folds=1)


def todays_priority(category_score: float | None, exposure: float) -> float:
    """The queue's order before: one minus the mix's share, times the log of the exposure expected."""
    return -1.0 if category_score is None else (1.0 - category_score) * np.log1p(max(exposure, 0.0) + 1.0)


def effort(right: np.ndarray, priority: np.ndarray, seed: int) -> dict:
    """Review effort in the queue's order (highest priority first) and, averaged, in random orders."""
    rng = np.random.default_rng(seed)
    queue = review_effort(right, np.argsort(-priority, kind="stable"), EFFORT_TARGETS)
    randoms = [review_effort(right, rng.permutation(len(right)), EFFORT_TARGETS) for _ in range(RANDOM_ORDERS)]
    return {"queue": queue, "random": {t: float(np.mean([r[t] for r in randoms])) for t in EFFORT_TARGETS}}


def split_figures(reference: pl.DataFrame, held: pl.DataFrame, tagger, encoder: Encoder, folder: Path, seed: int) -> dict:
    """Both rules and the review effort on one split's held-out listings, for one index (with `tagger` or not)."""
    config = EnrichConfig()
    started = time.perf_counter()
    build_index_from_frame(reference, folder, "promise benchmark", AMAZON, config, progress=False, encoder=encoder,
                           tagger_dir=tagger.folder if tagger is not None else None)
    build_seconds = time.perf_counter() - started
    index = ReferenceIndex.load(folder, encoder)
    found = find_evidence(held, index, encoder, config.index.candidates)
    votes = vote(index.categories[found.positions], found.sims, config.vote, classifier_scores(found, index, tagger))
    truth = held["category"].to_list()
    confident, review = acceptance(votes, [None] * held.height, index)  # what `enrich run` writes
    started = time.perf_counter()
    today = TodaysRule(todays_listings(reference, index, tagger, config))
    todays_seconds = time.perf_counter() - started
    decided = [today.decide(p, s) for p, s in zip(votes.category, votes.level_scores)]
    labelled = np.flatnonzero([bool(t) for t in truth])
    right = np.array([votes.category[i] == truth[i] for i in labelled])
    exposure = index.prior.predict(found.evidence).expected[labelled]
    priority = np.array([review_priority("ok", votes.category_score[i], e, False) for i, e in zip(labelled, exposure)])
    old_priority = np.array([todays_priority(votes.category_score[i], e) for i, e in zip(labelled, exposure)])
    return {
        "rule": acceptance_scores(votes.category, confident, review, truth),
        "todays_rule": acceptance_scores(votes.category, [d[0] for d in decided], [d[1] for d in decided], truth),
        "policy": index.manifest["acceptance"],
        "effort": effort(right, priority, seed), "todays_effort": effort(right, old_priority, seed)["queue"],
        "accuracy": float(right.mean()), "index_seconds": build_seconds,
        "calibration_seconds": index.manifest["acceptance"]["metrics"]["calibration"]["seconds"],
        "todays_calibration_seconds": todays_seconds,
    }


def seed_figures(catalog: Path, frame: pl.DataFrame, seed: int, tagger_config: FinetuneConfig, with_tagger: bool,
                 encoder: Encoder, folder: Path) -> dict:
    """One split: without a tagger, and with one fine-tuned on its reference part (cached, see `taggers`)."""
    reference, held = split_catalog(frame, EvalConfig(seed=seed))
    figures = {"seed": seed, "held_out": held.height, "without tagger": split_figures(reference, held, None, encoder,
                                                                                      folder / "index", seed)}
    if with_tagger:
        tagger, trained = split_tagger(catalog, reference, seed, tagger_config)
        figures["with tagger"] = split_figures(reference, held, tagger, encoder, folder / "index", seed)
        figures["with tagger"]["finetune"] = {k: trained[k] for k in ("seconds", "settings", "validation_rows", "cached")}
    return figures


def summary(seeds: list[dict], setting: str) -> dict:
    """Mean and lowest over the seeds of each figure, for one setting (with or without the tagger)."""
    rows = [s[setting] for s in seeds if setting in s]
    pick = {
        "full path precision": lambda r, rule: r[rule]["accepted_precision"],
        "full path share": lambda r, rule: r[rule]["accepted_share"],
        "category_confident precision": lambda r, rule: r[rule]["backoff_precision"],
        "category_confident share": lambda r, rule: r[rule]["backoff_kept_share"],
    }
    out = {}
    for name, get in pick.items():
        for rule in ("rule", "todays_rule"):
            values = [get(r, rule) or 0.0 for r in rows]
            out[f"{rule}: {name}"] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "values": values}
    for target in EFFORT_TARGETS:
        orders = {"queue": [r["effort"]["queue"][target] for r in rows], "todays queue": [r["todays_effort"][target] for r in rows],
                  "random": [r["effort"]["random"][target] for r in rows]}
        for name, values in orders.items():
            out[f"effort {target:.2f}: {name}"] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "values": values}
    return out


def to_markdown(results: dict) -> str:
    f = lambda x: "—" if x is None else f"{x:.3f}"
    lines = [("| setting (seeds), rule | full path: right; share accepted | `category_confident`: right; share keeping a "
              "level | per seed: full path right | per seed: `category_confident` right |"), "|---|---|---|---|---|"]
    for setting in ("without tagger", "with tagger"):
        if setting not in results["summary"]:
            continue
        s = results["summary"][setting]
        seeds = ", ".join(str(r["seed"]) for r in results["seeds"] if setting in r)
        for rule, name in (("rule", "enrich's rule"), ("todays_rule", "the rule before (per-level thresholds)")):
            full, kept = s[f"{rule}: full path precision"], s[f"{rule}: category_confident precision"]
            lines.append(f"| {setting} ({seeds}), {name} | **{f(full['mean'])}** (lowest {f(full['min'])}); "
                         f"{f(s[f'{rule}: full path share']['mean'])} | **{f(kept['mean'])}** (lowest {f(kept['min'])}); "
                         f"{f(s[f'{rule}: category_confident share']['mean'])} | "
                         f"{' '.join(f(v) for v in full['values'])} | {' '.join(f(v) for v in kept['values'])} |")
    lines += ["", "| setting | share of the batch reviewed to reach 0.90 right: queue; queue before; random | to reach 0.95 "
              "| full-path accuracy before review | index build (s): enrich's calibration; the rule before's |",
              "|---|---|---|---|---|"]
    for setting in ("without tagger", "with tagger"):
        if setting not in results["summary"]:
            continue
        s, rows = results["summary"][setting], [r[setting] for r in results["seeds"] if setting in r]
        effort_cells = [f"**{f(s[f'effort {t:.2f}: queue']['mean'])}**; {f(s[f'effort {t:.2f}: todays queue']['mean'])}; "
                        f"{f(s[f'effort {t:.2f}: random']['mean'])}" for t in EFFORT_TARGETS]
        lines.append(f"| {setting} | {effort_cells[0]} | {effort_cells[1]} | {f(np.mean([r['accuracy'] for r in rows]))} | "
                     f"{np.mean([r['index_seconds'] for r in rows]):.0f}: {np.mean([r['calibration_seconds'] for r in rows]):.0f}; "
                     f"{np.mean([r['todays_calibration_seconds'] for r in rows]):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.promise", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--no-tagger", action="store_true", help="without the taggers (each a fine-tune, cached in out/)")
    parser.add_argument("--tagger-seeds", type=int, nargs="+", help="the seeds measured with a tagger too (default: all)")
    parser.add_argument("--no-docs", action="store_true", help="do not write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    quiet_hugging_face()
    if missing(args.catalog):
        return 2
    encoder = Encoder()
    frame = load_catalog(args.catalog, AMAZON, reference=True)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = [seed_figures(args.catalog, frame, seed, BENCH_TAGGER, with_tagger(args, seed), encoder, Path(tmp))
                 for seed in args.seeds]
    results = {"catalog": str(args.catalog), "machine": machine(encoder), "seeds": seeds,
               "summary": {s: summary(seeds, s) for s in ("without tagger", "with tagger") if any(s in r for r in seeds)}}
    table = to_markdown(results)
    publish(args.out, "bench-promise", results, table)
    if not args.no_docs:
        update_section("promise", table, "make bench-promise" + (f" ARGS=\"{' '.join(argv)}\"" if argv else ""),
                       results["machine"])
    return 0


def with_tagger(args: argparse.Namespace, seed: int) -> bool:
    return not args.no_tagger and (args.tagger_seeds is None or seed in args.tagger_seeds)


if __name__ == "__main__":
    sys.exit(main())
