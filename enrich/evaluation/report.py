"""`enrich eval`'s report: the Markdown tables, and the files written beside them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from enrich.evaluation import plots
from enrich.files import write_json, write_table, write_text


@dataclass
class Evaluation:
    metrics: dict  # everything, JSON-ready
    held_out: pl.DataFrame  # the enriched held-out listings joined with their truth
    reference_engagement: np.ndarray  # engagement of the reference part, for the long-tail curve
    priors: dict = field(default_factory=dict)  # name -> each held-out listing's estimated engagement, for `simulate`

    def markdown(self) -> str:
        return to_markdown(self.metrics)


def _f(value) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def to_markdown(m: dict) -> str:
    k = m["setup"]["config"]["k"]
    s = m["setup"]
    lines = [f"Catalog `{s['catalog']}`: {s['reference']} reference listings, {s['held_out']} held out ({s['split']}), "
             f"{s['seconds']} s."]
    lines += [""] + [f"Warning: {warning}" for warning in m.get("warnings", [])] if m.get("warnings") else []
    lines += ["", "**Tags** (rows with a known category)", "",
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
    team = m["team"]
    h, a = team["hierarchical"], team["acceptance"]
    lines += ["", "**The team's view** (the acceptance policy the index chose on its own reference listings, applied to the"
              " held-out listings)", "",
              f"Hierarchical precision / recall / F1: {_f(h['precision'])} / {_f(h['recall'])} / {_f(h['f1'])}."]
    if a and team["policy"]:
        lines.append(f"Accepted at full depth: {_f(a['accepted_share'])} of listings, right {_f(a['accepted_precision'])}; "
                     f"with backoff a level is kept for {_f(a['backoff_kept_share'])}, right {_f(a['backoff_precision'])}, "
                     f"keeping {_f(a['depth_kept_share'])} of the true depth (target precision "
                     f"{team['policy']['target_precision']:g}"
                     f"{' with {:.0%} confidence'.format(team['policy']['confidence']) if team['policy'].get('confidence') else ''}).")
    buckets = m["buckets"]
    lines += ["", f"Buckets by true engagement: head >= {buckets['head_at_least']:g}, tail <= {buckets['tail_at_most']:g}.", "",
              "**Neighbours**", "", f"| | same-leaf precision@{k} |", "|---|---|"]
    for name, value in m["neighbors"][f"precision@{k}"].items():
        lines.append(f"| {name} | {_f(value)} |")
    lines += ["", f"hnswlib recall@{k} against exact search: {_f(m['neighbors'][f'index_recall@{k}'])}"]
    if m["priors"] is None:
        lines += ["", "**Exposure priors**: not measured: no held-out listing has engagement (or the index has no prior)."]
        return "\n".join(lines)
    return "\n".join(lines + _prior_markdown(m, k))


def _prior_markdown(m: dict, k: int) -> list[str]:
    lines = ["", f"**Exposure priors** ({m['priors']['listings']} held-out listings with engagement, ranked by prior "
             "against their true engagement)", "",
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
    return lines


def write_report(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """eval.md, eval.json, held_out.parquet and the three plots, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_text(out_dir / "eval.md", evaluation.markdown() + "\n"),
               write_json(out_dir / "eval.json", evaluation.metrics)]
    written.append(write_table(evaluation.held_out, out_dir / "held_out.parquet"))
    written += plots.write_all(evaluation, out_dir)
    return written
