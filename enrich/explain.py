"""`enrich explain ID`: why one listing got its category, neighbours and prior."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from enrich.catalog import CatalogError, Columns, load_catalog
from enrich.pipeline import (
    EnrichConfig, ReferenceIndex, classifier_scores, encoder_for, enrich_frame, find_evidence, recorded_tagger,
)
from enrich.prior import FEATURES
from enrich.tagger import Tagger
from enrich.tags import category_shares, vote


def explain(listing_id: str, new_path: str | Path, index_dir: str | Path, columns: Columns = Columns(),
            config: EnrichConfig = EnrichConfig(), alternatives: int = 5, tagger_dir: str | Path | None = None) -> str:
    """The explanation as text; `tagger_dir` as `enrich run --model` (default: the one the index names)."""
    frame = load_catalog(new_path, columns, config.cleaning, reference=False)
    rows = frame.filter(pl.col("id") == listing_id)
    if rows.height == 0:
        raise CatalogError(f"{new_path}: no listing with id '{listing_id}'")
    listing = rows.row(0, named=True)
    lines = [f"listing {listing['id']} (row {listing['row']}): {listing['title']}" + (f" | {listing['brand']}" if listing["brand"] else "")]
    if listing["status"] != "ok":
        return "\n".join(lines + [f"not enriched: {listing['status']}"])
    encoder = encoder_for(index_dir)
    index = ReferenceIndex.load(index_dir, encoder)
    found = find_evidence(rows.head(1), index, encoder, index.neighbors.config.candidates)
    positions, sims = found.positions[0], found.sims[0]
    tagger_dir = tagger_dir or recorded_tagger(index)
    tagger = Tagger.load(tagger_dir) if tagger_dir else None
    tagger_logits = tagger.logits(found.texts) if tagger is not None else None  # read once, shown three ways
    classifiers = classifier_scores(found, index, tagger, tagger_logits=tagger_logits)
    votes = vote(index.categories[positions][None, :], sims[None, :], config.vote, classifiers, [listing["category"]])
    shares = category_shares(index.categories[positions], sims, config.vote.temperature)

    given = " (given with the listing, kept)" if listing["category"] else ""
    lines += ["", f"category: {votes.category[0]} (score {votes.category_score[0] or 0:.2f}){given}; what each source says,"
              " mixed in proportion to its weight:"]
    lines += [f"  neighbours' vote (weight {config.vote.neighbour_weight:g}):"]
    lines += [f"    {share:6.1%}  {path}" for path, share in list(shares.items())[:alternatives]]
    for classifier in classifiers:
        name = "TF-IDF category model" if classifier.source == "lexical" else "fine-tuned tagger"
        lines += [f"  {name} (weight {config.vote.weight(classifier.source):g}):"]
        probabilities = classifier.probabilities[0]
        lines += [f"    {probabilities[j]:6.1%}  {classifier.labels[j]}" for j in np.argsort(-probabilities)[:alternatives]]

    written = enrich_frame(rows.head(1), index, encoder, config, tagger=tagger, found=found,
                           tagger_logits=tagger_logits).row(0, named=True)
    lines += ["", "tags, as `enrich run` writes them (the path's levels, then the listing's own tags): "
              + ", ".join(f"{tag} ({score:.2f})" for tag, score in zip(written["tags"], written["tag_scores"]))]
    if listing["tags"]:
        lines.append(f"  its own tags came with the listing and are kept: {', '.join(listing['tags'])}")
    elif tagger is not None and tagger.tag_labels:
        probabilities = tagger.tag_probabilities(found.texts, tagger_logits)[0]
        lines.append(f"  the tagger's probabilities for the catalog's tags (written from {tagger.tag_threshold:.2f}):")
        lines += [f"    {probabilities[j]:6.1%}  {tagger.tag_labels[j]}" for j in np.argsort(-probabilities)[:alternatives]]

    reference = index.reference
    lines += ["", "neighbours (in output order): cosine, engagement, category, title"]
    for j in votes.order[0]:
        ref = reference.row(int(positions[j]), named=True)
        lines.append(f"  {sims[j]:.3f}  {ref['engagement']:>8g}  {ref['category'] or '-'}  |  {ref['title']}")

    prior = index.prior
    estimate = prior.predict(found.evidence)
    features = prior.features(found.evidence)[0]
    contributions = np.array(prior.coef) * features
    lines += ["", f"exposure prior: {estimate.expected[0]:.2f} (80% interval {estimate.low[0]:.2f} to {estimate.high[0]:.2f}),"
              f" evidence {estimate.evidence[0]:.2f} reference listings' worth",
              f"  on the log scale, log1p(engagement): {estimate.log_mean[0]:.3f} = intercept {prior.intercept:.3f}"
              " + the sum of weight x value:"]
    for name, value, weight, part in sorted(zip(FEATURES, features, prior.coef, contributions), key=lambda r: -abs(r[3])):
        lines.append(f"  {part:+.3f}  {name:<16} value {value:8.3f}  x weight {weight:+.3f}")
    lines.append(f"  the reference catalog's mean is {prior.global_mean:.3f} (engagement {np.expm1(prior.global_mean):.2f});"
                 f" neighbours are shrunk toward it with a pseudo-count of {prior.shrink:g}")
    return "\n".join(lines)
