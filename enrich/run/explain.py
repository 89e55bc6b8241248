"""Why one listing got its category, tags, neighbours and prior: `enrich explain ID`, and the review page's listing view.

`explain_listing` returns the parts as data (what each source said, the neighbours, the prior's terms); `explain`
loads the index and renders them as text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from enrich.catalog import CatalogError, Columns, load_catalog
from enrich.category.tagger import Tagger
from enrich.category.vote import category_shares, mixed_shares, vote
from enrich.settings import EnrichConfig
from enrich.embed import Encoder
from enrich.index.store import ReferenceIndex
from enrich.prior import FEATURES
from enrich.run.models import Models
from enrich.run.score import classifier_scores, enrich_frame, find_evidence

SOURCE_NAMES = {"neighbors": "neighbours' vote", "lexical": "TF-IDF category model", "tagger": "fine-tuned tagger"}


@dataclass
class Explanation:
    """One enriched listing, with what each source said and the prior's terms."""

    listing: dict  # the standard frame's row
    output: dict  # the output contract's row, as `enrich run` writes it
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # the mix's most probable paths, with shares
    sources: list[dict] = field(default_factory=list)  # {source, name, weight, paths: [(path, share)]}
    tag_probabilities: list[tuple[str, float]] = field(default_factory=list)  # the tagger's, where it learned tags
    tag_threshold: float | None = None
    neighbors: list[dict] = field(default_factory=list)  # in output order: id, cosine, engagement, category, title
    prior_terms: list[tuple[str, float, float, float]] = field(default_factory=list)  # (feature, value, weight, part)
    prior: dict = field(default_factory=dict)  # log_mean, intercept, global_mean, shrink


def explain_listing(row: pl.DataFrame, index: ReferenceIndex, encoder: Encoder, config: EnrichConfig,
                    tagger: Tagger | None, alternatives: int = 5) -> Explanation:
    """The explanation of the one listing in `row` (a standard frame), against a loaded index."""
    listing = row.row(0, named=True)
    found = find_evidence(row, index, encoder, index.neighbors.config.candidates)
    positions, sims = found.positions[0], found.sims[0]
    tagger_logits = tagger.logits(found.texts) if tagger is not None else None  # read once, shown three ways
    classifiers = classifier_scores(found, index, tagger, tagger_logits=tagger_logits)
    output = enrich_frame(row, index, encoder, config, tagger=tagger, found=found, tagger_logits=tagger_logits).row(0, named=True)
    shares = category_shares(index.categories[positions], sims, config.vote.temperature)
    mix = mixed_shares(index.categories[positions], sims, config.vote, classifiers, 0)
    explained = Explanation(listing, output, sorted(mix.items(), key=lambda item: -item[1])[:alternatives])
    explained.sources.append({"source": "neighbors", "name": SOURCE_NAMES["neighbors"], "weight": config.vote.neighbor_weight,
                              "paths": list(shares.items())[:alternatives]})
    for classifier in classifiers:
        probabilities = classifier.probabilities[0]
        explained.sources.append({
            "source": classifier.source, "name": SOURCE_NAMES[classifier.source], "weight": config.vote.weight(classifier.source),
            "paths": [(classifier.labels[j], float(probabilities[j])) for j in np.argsort(-probabilities)[:alternatives]]})
    if not listing["tags"] and tagger is not None and tagger.tag_labels:
        probabilities = tagger.tag_probabilities(found.texts, tagger_logits)[0]
        explained.tag_probabilities = [(tagger.tag_labels[j], float(probabilities[j])) for j in np.argsort(-probabilities)[:alternatives]]
        explained.tag_threshold = tagger.tag_threshold
    linkable = index.linkable[positions]
    order = vote(index.categories[positions][None, :], sims[None, :], config.vote, classifiers, [listing["category"]],
                 linkable[None, :]).order[0]
    for j in order[linkable[order]]:
        reference = index.reference.row(int(positions[j]), named=True)
        explained.neighbors.append({"id": reference["id"], "cosine": float(sims[j]), "engagement": reference["engagement"],
                                    "category": reference["category"], "title": reference["title"]})
    prior = index.prior
    if prior is None:
        return explained
    features = prior.features(found.evidence)[0]
    explained.prior_terms = sorted(((name, float(value), float(weight), float(weight * value))
                                    for name, value, weight in zip(FEATURES, features, prior.coef)), key=lambda t: -abs(t[3]))
    explained.prior = {"log_mean": float(prior.predict(found.evidence).log_mean[0]), "intercept": prior.intercept,
                       "global_mean": prior.global_mean, "shrink": prior.shrink}
    return explained


def render(e: Explanation) -> list[str]:
    """The explanation as the lines `enrich explain` prints."""
    out, listing = e.output, e.listing
    given = " (given with the listing, kept)" if listing["category"] else ""
    lines = ["", f"category: {out['category']} (score {out['category_score'] or 0:.2f}){given}; what each source says,"
             " mixed in proportion to its weight:"]
    for source in e.sources:
        lines.append(f"  {source['name']} (weight {source['weight']:g}):")
        lines += [f"    {share:6.1%}  {path}" for path, share in source["paths"]]
    lines += ["", "tags, as `enrich run` writes them (the path's levels, then the listing's own tags): "
              + ", ".join(f"{tag} ({score:.2f})" for tag, score in zip(out["tags"], out["tag_scores"]))]
    if listing["tags"]:
        lines.append(f"  its own tags came with the listing and are kept: {', '.join(listing['tags'])}")
    elif e.tag_probabilities:
        lines.append(f"  the tagger's probabilities for the catalog's tags (written from {e.tag_threshold:.2f}):")
        lines += [f"    {p:6.1%}  {tag}" for tag, p in e.tag_probabilities]
    lines += ["", "neighbours (in output order): cosine, engagement, category, title"]
    lines += [f"  {n['cosine']:.3f}  {n['engagement'] if n['engagement'] is not None else '-':>8}  {n['category'] or '-'}"
              f"  |  {n['title']}" for n in e.neighbors]
    p = e.prior
    if not p:
        return lines + ["", "exposure prior: none (the index's reference catalog has no engagement)"]
    lines += ["", f"exposure prior: {out['exposure_prior']:.2f} (80% interval {out['exposure_prior_low']:.2f} to "
              f"{out['exposure_prior_high']:.2f}), evidence {out['prior_evidence']:.2f} reference listings' worth",
              f"  on the log scale, log1p(engagement): {p['log_mean']:.3f} = intercept {p['intercept']:.3f}"
              " + the sum of weight x value:"]
    lines += [f"  {part:+.3f}  {name:<16} value {value:8.3f}  x weight {weight:+.3f}" for name, value, weight, part in e.prior_terms]
    lines.append(f"  the reference catalog's mean is {p['global_mean']:.3f} (engagement {np.expm1(p['global_mean']):.2f});"
                 f" neighbours are shrunk toward it with a pseudo-count of {p['shrink']:g}")
    return lines


def explain(listing_id: str, new_path: str | Path, models: Models, columns: Columns = Columns()) -> str:
    """The explanation as text, with the models `enrich run` would use (`Models`)."""
    frame = load_catalog(new_path, columns, models.sources.config.cleaning, reference=False)
    rows = frame.filter(pl.col("id") == listing_id)
    if rows.height == 0:
        raise CatalogError(f"{new_path}: no listing with id '{listing_id}'")
    listing = rows.row(0, named=True)
    lines = [f"listing {listing['id']} (row {listing['row']}): {listing['title']}" + (f" | {listing['brand']}" if listing["brand"] else "")]
    if listing["status"] != "ok":
        return "\n".join(lines + [f"not enriched: {listing['status']}"])
    return "\n".join(lines + render(explain_listing(rows.head(1), models.index, models.encoder, models.config, models.tagger)))
