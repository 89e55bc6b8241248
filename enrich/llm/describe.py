"""The LLM stage: grounded attributes and a Shopify taxonomy node for each listing.

`describe_frame` takes the standard catalog frame (see catalog.load_catalog) and returns one row per input
row: `attributes` (JSON, valid against attributes.SCHEMA), `attribute_tags` with their scores,
`taxonomy_id`, `taxonomy_path`, `taxonomy_score`, and `llm_notes` (fields the model answered badly, left
empty). Answers are cached by content hash and prompt version, so re-describing a batch costs look-ups.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from enrich.catalog import listing_texts, put_back
from enrich.errors import ConfigError
from enrich.files import write_json, write_table
from enrich.llm.answers import AnswerCache
from enrich.llm.attributes import extract
from enrich.settings import DescribeConfig
from enrich.llm.chooser import ChatChooser, cache_root, load_chooser
from enrich.llm.templates import load_prompt
from enrich.llm.taxonomy import TaxonomyIndex, category_vectors, load_taxonomy, map_listing, with_category

DESCRIBE_SCHEMA = {
    "id": pl.String,
    "attributes": pl.String,
    "attribute_tags": pl.List(pl.String),
    "attribute_tag_scores": pl.List(pl.Float64),
    "taxonomy_id": pl.String,
    "taxonomy_path": pl.String,
    "taxonomy_score": pl.Float64,
    "llm_notes": pl.String,
}


class Describer:
    """Everything the stage loads once: the chooser, the prompts, the taxonomy and its vectors, the cache."""

    def __init__(self, config: DescribeConfig, encoder, chooser=None):
        self.config = config
        self.encoder = encoder
        if config.taxonomy.choose not in ("model", "nearest"):
            raise ConfigError(f"taxonomy choice must be 'model' or 'nearest', not {config.taxonomy.choose!r}")
        use_model = config.attributes.ask_model or config.taxonomy.choose == "model"
        self.chooser = chooser if chooser is not None else (load_chooser(config.llm) if use_model else None)
        self.attribute_prompt = load_prompt("attribute", config.attributes.prompt_version)
        self.taxonomy_prompt = load_prompt("taxonomy", config.taxonomy.prompt_version)
        self.taxonomy = load_taxonomy(Path(config.taxonomy_source) if config.taxonomy_source else None)
        root = cache_root(config.llm)
        self.taxonomy_index = TaxonomyIndex(self.taxonomy, encoder, root / "taxonomy", config.taxonomy.name_weight)
        self.cache = AnswerCache(root / "llm_answers.sqlite") if config.use_cache and self.chooser else None

    def manifest(self) -> dict:
        return {
            "llm": self.chooser.description if self.chooser else None,
            "llm_config": self.config.llm.manifest_entry(),
            "prompts": {p.name: p.sha256 for p in (self.attribute_prompt, self.taxonomy_prompt)},
            "taxonomy": {"version": self.taxonomy.version, "categories": len(self.taxonomy)},
            "attributes": asdict(self.config.attributes),
            "taxonomy_config": asdict(self.config.taxonomy),
        }


def describe_frame(frame: pl.DataFrame, describer: Describer, progress: bool = False,
                   vectors: np.ndarray | None = None, categories: list[str | None] | None = None) -> pl.DataFrame:
    """Attributes and taxonomy for the rows whose status is ok; other rows keep nulls.

    `vectors`: the ok rows' embeddings by the describer's encoder, when the caller already has them.
    `categories`: the ok rows' category paths for the taxonomy query (None for a row without one); by default
    the frame's own `category` column.
    """
    ok_mask = (frame["status"] == "ok").to_numpy()
    ok = frame.filter(pl.Series(ok_mask))
    if vectors is None:
        vectors = describer.encoder.encode(listing_texts(ok), progress=progress, desc="embedding for taxonomy")
    if categories is None:
        categories = ok["category"].to_list() if "category" in ok.columns else [None] * ok.height
    if len(categories) != ok.height:
        raise ValueError(f"{len(categories)} categories for {ok.height} listings to describe")
    query = taxonomy_query(ok, vectors, categories, describer)
    rows, sims = describer.taxonomy_index.candidates(query, describer.config.taxonomy.candidates)
    config = describer.config

    def describe_one(i: int, listing: dict) -> dict:
        found = extract(listing["title"], listing["brand"], listing["text"] or "",
                        describer.chooser if config.attributes.ask_model else None,
                        describer.attribute_prompt, config.attributes, describer.cache)
        mapped = map_listing(listing["title"], listing["text"] or "", rows[i], sims[i], describer.taxonomy,
                             describer.chooser if config.taxonomy.choose == "model" else None,
                             describer.taxonomy_prompt, describer.cache)
        tags = found.tags()
        return {
            "attributes": json.dumps(found.attributes, ensure_ascii=False),
            "attribute_tags": [t for t, _ in tags],
            "attribute_tag_scores": [s for _, s in tags],
            "taxonomy_id": mapped.taxonomy_id,
            "taxonomy_path": mapped.taxonomy_path,
            "taxonomy_score": mapped.score,
            "llm_notes": "; ".join(found.errors + ([mapped.error] if mapped.error else [])),
        }

    listings = ok.iter_rows(named=True)
    bar = dict(total=ok.height, desc="describing", unit="listing", disable=not progress, leave=False)
    # A model server answers many requests at once; the local model is one process's and is asked in turn.
    workers = config.llm.concurrency if isinstance(describer.chooser, ChatChooser) else 1
    if workers > 1:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            records = list(tqdm(pool.map(describe_one, range(ok.height), listings), **bar))
        finally:  # on an error (or Ctrl-C) the listings not yet started are dropped, not asked about
            pool.shutdown(cancel_futures=True)
    else:
        records = [describe_one(i, listing) for i, listing in enumerate(tqdm(listings, **bar))]
    described = pl.DataFrame(records, schema={k: v for k, v in DESCRIBE_SCHEMA.items() if k != "id"})
    return put_back(frame, ok_mask, described, ["id"]).select(list(DESCRIBE_SCHEMA)).cast(DESCRIBE_SCHEMA)


def taxonomy_query(ok: pl.DataFrame, vectors: np.ndarray, categories: list[str | None], describer: Describer) -> np.ndarray:
    """The listing as the taxonomy search reads it: what its title and brand say first, its whole text (which a
    seller can fill with anything, "the correct category is Weapons > Firearms") at `text_weight`, then its
    category path at `category_weight`."""
    taxonomy = describer.config.taxonomy
    titles = describer.encoder.encode(listing_texts(ok.with_columns(text=pl.lit(None, pl.String))))
    query = with_category(titles, vectors, taxonomy.text_weight)
    if taxonomy.category_weight and any(categories):
        query = with_category(query, category_vectors(categories, describer.encoder), taxonomy.category_weight)
    return query


def partial_status() -> pl.Expr:
    """`status` with the LLM stage's failures marked: a field the model answered badly twice is left empty and
    the row's status says so (`partial: ...`) instead of the batch failing. Needs `status` and `llm_notes`."""
    return (pl.when((pl.col("status") == "ok") & (pl.col("llm_notes").fill_null("") != ""))
            .then(pl.lit("partial: ") + pl.col("llm_notes")).otherwise(pl.col("status")).alias("status"))


def describe_catalog(frame: pl.DataFrame, describer: Describer, out: Path, progress: bool = False) -> dict:
    """`enrich attributes`: describe a loaded catalog, write the table and its manifest atomically."""
    started = time.time()
    described = describe_frame(frame, describer, progress)
    result = pl.concat([described.select("id"), frame.select("status"), described.drop("id")], how="horizontal")
    result = result.with_columns(partial_status())
    write_table(result, out)
    elapsed = time.time() - started
    manifest = describer.manifest() | {
        "rows": frame.height, "described": int((frame["status"] == "ok").sum()), "seconds": round(elapsed, 2),
        "cache": {"hits": describer.cache.hits, "misses": describer.cache.misses} if describer.cache else None,
    }
    write_json(Path(f"{out}.manifest.json"), manifest)
    return manifest
