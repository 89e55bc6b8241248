"""Scoring new listings against a loaded index: embed, find candidates, vote a category, order the neighbours,
compute the prior, and lay it all out as the output contract's rows (one per input row, in input order)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import scipy.sparse as sp

from enrich.catalog import listing_texts, put_back
from enrich.category.tagger import Tagger
from enrich.category.vote import ClassifierScores, Votes, vote
from enrich.settings import EnrichConfig, VoteConfig
from enrich.embed import Encoder
from enrich.errors import ArtifactError
from enrich.index.store import ReferenceIndex
from enrich.prior import Evidence, gather_evidence
from enrich.run.models import Models, ModelSources

OUTPUT_SCHEMA = {
    "id": pl.String,
    "status": pl.String,
    "category": pl.String,
    "category_score": pl.Float64,
    "category_confident": pl.String,
    "review": pl.Boolean,
    "tags": pl.List(pl.String),
    "tag_scores": pl.List(pl.Float64),
    "neighbors": pl.List(pl.String),
    "neighbor_scores": pl.List(pl.Float64),
    "exposure_prior": pl.Float64,
    "exposure_prior_low": pl.Float64,
    "exposure_prior_high": pl.Float64,
    "prior_evidence": pl.Float64,
    # Filled by the LLM stage (`enrich run --describe`, `enrich attributes`); null without it.
    "attributes": pl.String,
    "taxonomy_id": pl.String,
    "taxonomy_path": pl.String,
    "taxonomy_score": pl.Float64,
    "notes": pl.String,
}
DESCRIBED = ("attributes", "taxonomy_id", "taxonomy_path", "taxonomy_score")
NO_PRIOR = "no exposure prior: the index's reference catalog has no engagement"


class OutOfRange(ArtifactError):
    """An output value outside its range: a damaged index or a bug, never a result to write."""


def check_ranges(enriched: pl.DataFrame, index: ReferenceIndex) -> None:
    """Refuse to write values that cannot be: a cosine beyond 1, a score beyond 0..1, a prior that is not a finite
    count or an interval upside down. Only a damaged index (or a bug) gives them."""
    cosines = enriched["neighbor_scores"].explode().drop_nulls()
    shares = pl.concat([enriched["category_score"], enriched["tag_scores"].explode()]).drop_nulls()
    prior = enriched.select("exposure_prior", "exposure_prior_low", "exposure_prior_high", "prior_evidence")
    checks = {
        "a neighbour's cosine outside -1..1": bool((cosines.abs() > 1.0001).any() or cosines.is_nan().any()),
        "a category or tag score outside 0..1": bool(((shares < 0) | (shares > 1.0001)).any() or shares.is_nan().any()),
        "a prior that is not a finite number >= 0": bool(prior.select(
            pl.any_horizontal((pl.all() < 0) | ~pl.all().is_finite())).to_series().any()),
        "an interval whose low end is above its high end": bool((prior["exposure_prior_low"] > prior["exposure_prior_high"]).any()),
    }
    wrong = [what for what, found in checks.items() if found]
    if wrong:
        raise OutOfRange(f"{index.folder}: enriching gave {' and '.join(wrong)}: the index is damaged (or enrich has a bug);"
                         " nothing was written. Check it with `enrich index --verify`, or rebuild it")


def as_output(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with the output contract's columns, in order and types; the LLM stage's are null where missing."""
    return frame.with_columns(pl.lit(None).alias(c) for c in OUTPUT_SCHEMA if c not in frame.columns
                              ).select(list(OUTPUT_SCHEMA)).cast(OUTPUT_SCHEMA)


@dataclass
class Found:
    """A batch of listings' candidates in the index and the evidence the prior reads."""

    texts: list[str]
    vectors: np.ndarray
    lexical_rows: sp.csr_matrix  # TF-IDF rows in the index's vocabulary
    positions: np.ndarray
    sims: np.ndarray
    evidence: Evidence


def find_evidence(listings: pl.DataFrame, index: ReferenceIndex, encoder: Encoder, k: int, progress: bool = False,
                  vectors: np.ndarray | None = None) -> Found:
    """Embed usable listings (unless their `vectors` are given), retrieve k candidates each, gather the prior's evidence."""
    texts = listing_texts(listings)
    if vectors is None:
        vectors = encoder.encode(texts, progress=progress, desc="embedding new listings")
    positions, sims = index.neighbors.search(vectors, k)
    lexical_rows = index.lexical.transform(texts)
    evidence = gather_evidence(lexical_rows, vectors, positions, sims, listings["brand"].to_list(),
                               index.lexical_matrix, index.engagement)
    return Found(texts, vectors, lexical_rows, positions, sims, evidence)


def classifier_scores(found: Found, index: ReferenceIndex, tagger: Tagger | None,
                      rows: np.ndarray | None = None, tagger_logits: np.ndarray | None = None) -> list[ClassifierScores]:
    """The classifiers' probabilities for `rows` of `found` (default all), zero rows for the rest: a listing that
    came with a category is not read by them. `tagger_logits`: the tagger's for all of `found`, when computed."""
    rows = np.arange(len(found.texts)) if rows is None else rows

    def for_rows(labels: list[str], predict) -> np.ndarray:
        probabilities = np.zeros((len(found.texts), len(labels)), np.float32)
        if len(rows):
            probabilities[rows] = predict(rows)
        return probabilities

    out = []
    model = index.category_model
    if model is not None:
        out.append(ClassifierScores(model.labels, for_rows(model.labels, lambda rows: model.probabilities(found.lexical_rows[rows])),
                                    source="lexical"))
    if tagger is not None:
        out.append(ClassifierScores(tagger.labels, for_rows(tagger.labels, lambda rows: tagger.probabilities(
            [found.texts[i] for i in rows], None if tagger_logits is None else tagger_logits[rows])), source="tagger"))
    return out


def predict_categories(found: Found, index: ReferenceIndex, tagger: Tagger | None, config: VoteConfig,
                       rows: np.ndarray, tagger_logits: np.ndarray | None = None) -> list[str | None]:
    """The category the vote and the classifiers name for `rows` of `found`, whatever the listings came with."""
    classifiers = [replace(c, probabilities=c.probabilities[rows]) for c in classifier_scores(found, index, tagger, rows, tagger_logits)]
    return vote(index.categories[found.positions[rows]], found.sims[rows], config, classifiers).category


def catalog_tags(ok: pl.DataFrame, found: Found, tagger: Tagger | None, tagger_logits: np.ndarray | None
                 ) -> list[list[tuple[str, float]]]:
    """Each listing's own tags: as given (score 1), like a given category, or else the tagger's prediction of the
    catalog's tags where it learned some."""
    predicted = tagger.catalog_tags(found.texts, tagger_logits) if tagger is not None and tagger.tag_labels else [[]] * ok.height
    return [[(t, 1.0) for t in mine] if mine else guess for mine, guess in zip(ok["tags"].to_list(), predicted)]


def acceptance(votes: Votes, given: list[str | None], index: ReferenceIndex) -> tuple[list[str | None], list[bool]]:
    """Each listing's `category_confident` and `review`: a category it came with is the merchant's, confident as it is;
    a predicted one as deep as the index's acceptance policy allows (with no policy, every listing is reviewed)."""
    confident, review = [], []
    for came_with, path, scores in zip(given, votes.category, votes.level_scores):
        if came_with:
            decided = (came_with, False)
        elif index.acceptance is None:
            decided = (None, True)
        else:
            decided = index.acceptance.decide(path, scores)
        confident.append(decided[0])
        review.append(decided[1])
    return confident, review


def enrich_frame(frame: pl.DataFrame, index: ReferenceIndex, encoder: Encoder, config: EnrichConfig = EnrichConfig(),
                 progress: bool = False, tagger: Tagger | None = None, found: Found | None = None,
                 tagger_logits: np.ndarray | None = None) -> pl.DataFrame:
    """The output table for a standard catalog frame: one row per input row, in input order.

    The category mixes the neighbours' vote, the index's TF-IDF category model and, when given, a fine-tuned
    `tagger` (see `vote`). A listing that comes with a category keeps it, and no classifier reads it.
    `found`: the usable rows' evidence (`find_evidence`), and `tagger_logits` the tagger's for all of them, when
    the caller already has them.
    """
    ok_mask = (frame["status"] == "ok").to_numpy()
    ok = frame.filter(pl.Series(ok_mask))
    if ok.height == 0:  # nothing to enrich: every row is written with its reason
        return as_output(frame.select("id", "status", "notes"))
    if found is None:
        found = find_evidence(ok, index, encoder, config.index.candidates, progress)
    positions, sims = found.positions, found.sims
    given = ok["category"].to_list()
    # A tagger with the catalog's own tags reads every listing (for its tags), so its logits are computed once.
    if tagger_logits is None and tagger is not None and tagger.tag_labels:
        tagger_logits = tagger.logits(found.texts)
    classifiers = classifier_scores(found, index, tagger, rows=np.flatnonzero([not c for c in given]), tagger_logits=tagger_logits)
    linkable = index.linkable[positions]  # listings without engagement vote, but are not popular listings to link to
    votes = vote(index.categories[positions], sims, config.vote, classifiers, given, linkable)
    own = catalog_tags(ok, found, tagger, tagger_logits)
    confident, review = acceptance(votes, given, index)
    prior = _prior_columns(index, found.evidence)
    chosen = np.take_along_axis(positions, votes.order, 1)
    chosen_sims = np.take_along_axis(sims, votes.order, 1)
    enriched = pl.DataFrame({
        "category": votes.category,
        "category_score": votes.category_score,
        "category_confident": confident,
        "review": review,
        "tags": [path + [t for t, _ in extra] for path, extra in zip(votes.tags, own)],
        "tag_scores": [path + [p for _, p in extra] for path, extra in zip(votes.tag_scores, own)],
        "neighbors": [index.ids[row][index.linkable[row]].tolist() for row in chosen],
        "neighbor_scores": [np.round(s[index.linkable[row]].astype(np.float64), 5).tolist()
                            for row, s in zip(chosen, chosen_sims)],
        **prior,
    }, schema={k: v for k, v in OUTPUT_SCHEMA.items() if k not in ("id", "status", "notes", *DESCRIBED)})
    check_ranges(enriched, index)
    output = put_back(frame, ok_mask, enriched, ["id", "status", "notes"])
    if index.prior is None:
        note = pl.lit(NO_PRIOR)
        output = output.with_columns(pl.when(pl.col("status") == "ok").then(
            pl.when(pl.col("notes") == "").then(note).otherwise(pl.col("notes") + "; " + note)).otherwise(pl.col("notes"))
            .alias("notes"))
    return as_output(output)


def _prior_columns(index: ReferenceIndex, evidence: Evidence) -> dict[str, np.ndarray | list]:
    """The prior's columns: its estimate, or nulls where the index has no prior (a reference without engagement)."""
    if index.prior is None:
        nulls = [None] * len(evidence.sims)
        return {name: nulls for name in ("exposure_prior", "exposure_prior_low", "exposure_prior_high", "prior_evidence")}
    estimate = index.prior.predict(evidence)
    return {"exposure_prior": estimate.expected, "exposure_prior_low": estimate.low, "exposure_prior_high": estimate.high,
            "prior_evidence": estimate.evidence}


def add_description(enriched: pl.DataFrame, described: pl.DataFrame) -> pl.DataFrame:
    """The LLM stage's columns into the output: attribute tags after the category's; a row whose LLM fields were
    answered badly is marked `partial: ...` in its status (everything else in it is filled as for `ok`)."""
    from enrich.llm.describe import partial_status

    joined = pl.concat([enriched.drop(*DESCRIBED), described.drop("id")], how="horizontal")
    return as_output(joined.with_columns(
        pl.concat_list(pl.col("tags").fill_null([]), pl.col("attribute_tags").fill_null([])).alias("tags"),
        pl.concat_list(pl.col("tag_scores").fill_null([]), pl.col("attribute_tag_scores").fill_null([])).alias("tag_scores"),
    ).with_columns(
        pl.when(pl.col("status") == "ok").then(pl.col("tags")).otherwise(None).alias("tags"),
        pl.when(pl.col("status") == "ok").then(pl.col("tag_scores")).otherwise(None).alias("tag_scores"),
    ).with_columns(partial_status()))


def enrich_part(chunk: pl.DataFrame, models: Models) -> pl.DataFrame:
    """One part of a run's output: `enrich_frame`, then the LLM stage's columns when the models have a describer."""
    index, encoder, config, tagger, describer = models.index, models.encoder, models.config, models.tagger, models.describer
    if describer is None:
        return enrich_frame(chunk, index, encoder, config, False, tagger)
    from enrich.llm.describe import describe_frame

    usable = chunk["status"] == "ok"
    ok = chunk.filter(usable)
    vectors = encoder.encode(listing_texts(ok))  # one embedding serves the neighbours and the taxonomy
    found = find_evidence(ok, index, encoder, config.index.candidates, vectors=vectors) if ok.height else None
    # The taxonomy query reads each listing's category: the one predicted, even for a listing that came with one,
    # or the one it came with where the describer's `bridge` says "given" (see TaxonomyConfig.bridge).
    came_with = np.flatnonzero(ok["category"].is_not_null().to_numpy())
    bridge_predicted = describer.config.taxonomy.bridge == "predicted" and len(came_with) > 0
    # Then the tagger reads the listings without a category (in enrich_frame) and those with one (for the bridge):
    # all of them, once. Otherwise enrich_frame reads what it needs.
    tagger_logits = tagger.logits(found.texts) if bridge_predicted and tagger is not None else None
    enriched = enrich_frame(chunk, index, encoder, config, False, tagger, found, tagger_logits)
    categories = enriched["category"].filter(usable).to_list()
    if bridge_predicted:
        for row, predicted in zip(came_with, predict_categories(found, index, tagger, config.vote, came_with, tagger_logits)):
            categories[row] = predicted
    return add_description(enriched, describe_frame(chunk, describer, vectors=vectors, categories=categories))


class PartEnricher:
    """A callable an engine runs on its workers: the models loaded once per worker (`Models`), parts of new listings
    in, the output contract's rows out. The part's number rides along in `part_column`."""

    def __init__(self, sources: ModelSources, part_column: str):
        self.models, self.part_column = Models(sources), part_column

    def __call__(self, batch):
        frame = pl.from_arrow(batch)
        parts = frame[self.part_column]
        return enrich_part(frame.drop(self.part_column), self.models).with_columns(parts).to_arrow()
