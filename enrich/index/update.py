"""`enrich index --update`: bring an index up to date without a rebuild.

Listings that are new, or whose text changed, are embedded and added to the hnswlib graph (`resize_index`,
`add_items`); the old versions of changed ones, and delisted ones where that is asked for, are marked deleted
(`mark_deleted`) and kept in the id map with `deleted = true`, so labels never move. Unchanged listings only
get their engagement and category refreshed. The prior, the TF-IDF vocabulary and the category model stay as
fitted at the last full build (the manifest says how much has been added since): rebuild now and then.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from enrich.catalog import CatalogError, Columns, listing_texts, load_catalog
from enrich.category.lexical_model import CategoryModel
from enrich.config import EnrichConfig
from enrich.files import NpyRowWriter, exclusive_lock
from enrich.index.build import BUILD_CHUNK_ROWS, MIN_REFERENCE, embedding_cache_key, text_chunks
from enrich.index.lexical import Lexical
from enrich.index.store import (EMBEDDINGS, GRAPH, LEXICAL_MATRIX, MANIFEST, REFERENCE, REFUSED, IndexMismatch, ReferenceIndex,
                                encoder_for)
from enrich.index.versions import new_version
from enrich.manifest import Summary, now
from enrich.prior import ExposurePrior
from enrich.embed import text_hashes

REFIT_SHARE = 0.2  # `--update` says to rebuild once the listings added or deleted since the build pass this share


def save_appended(path: Path, old: np.ndarray, new: np.ndarray) -> None:
    """Save old rows then new ones as one .npy, copying the (memory-mapped) old rows a chunk at a time."""
    writer = NpyRowWriter(path, len(old) + len(new), old.shape[1])
    for start in range(0, len(old), BUILD_CHUNK_ROWS):
        writer.write(old[start: start + BUILD_CHUNK_ROWS])
    writer.write(new)
    writer.close()


def update_index(reference_path: str | Path, out_dir: str | Path, columns: Columns = Columns(),
                 config: EnrichConfig = EnrichConfig(), progress: bool = True) -> Summary:
    """Bring the index in `out_dir` up to date with the reference catalog in `reference_path`: see the module."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).exists():
        raise IndexMismatch(f"{out_dir}: no index to update; build one first with `enrich index` (without --update)")
    frame = load_catalog(reference_path, columns, config.cleaning, reference=True)
    with exclusive_lock(out_dir, "this index"):
        encoder = encoder_for(out_dir)
        index = ReferenceIndex.load(out_dir, encoder)
        current = frame.filter(pl.col("status") == "ok")
        # Hashed as the index was, whatever this machine's precision: else every listing would look changed here.
        cache_key = embedding_cache_key(encoder, index.manifest["encoder"]["dtype"])
        current = current.with_columns(text_hash=pl.Series(
            [h for _, texts in text_chunks(current) for h in text_hashes(texts, cache_key)], dtype=pl.String))
        old = index.reference
        live = old.with_row_index("label").filter(~pl.col("deleted"))
        unchanged = live.join(current.select("id", "text_hash"), on=["id", "text_hash"], how="semi")
        gone = live.join(unchanged.select("label"), on="label", how="anti")["label"].to_list()
        added = current.join(unchanged.select("id"), on="id", how="anti")
        added_texts = listing_texts(added)  # the only texts held: those of listings to embed
        current = current.select("id", "title", "brand", "category", "engagement", "text_hash")
        added = added.select(current.columns)
        if old.height - len(gone) + added.height < MIN_REFERENCE:
            raise CatalogError(f"{reference_path}: the update would leave fewer than {MIN_REFERENCE} listings in the index")
        reference = refreshed_reference(old, current, added, gone)
        vectors = encoder.encode(added_texts, progress=progress, desc="embedding new reference listings")
        graph = index.neighbors.index
        graph.resize_index(reference.height)
        if added.height:
            graph.add_items(vectors, np.arange(old.height, reference.height), num_threads=index.neighbors.config.threads)
        for label in gone:
            graph.mark_deleted(label)
        lexical_matrix = sp.vstack([index.lexical_matrix, index.lexical.transform(added_texts)]).tocsr()
        live_categories = set(reference.filter(~pl.col("deleted"))["category"].drop_nulls().to_list())
        unknown_categories = live_categories - set(index.category_model.labels if index.category_model else ())
        update = {"at": now(), "source": str(reference_path), "added": added.height, "deleted": len(gone),
                  "refreshed": unchanged.height, "categories_unknown_to_the_model": len(unknown_categories)}
        manifest, changed_share, built = updated_manifest(index.manifest, reference, update, started)
        unchanged_files = (*Lexical.FILES, *ExposurePrior.FILES, *(CategoryModel.FILES if index.category_model else ()))
        with new_version(out_dir) as folder:
            reference.write_parquet(folder / REFERENCE)
            frame.filter(pl.col("status") != "ok").select("row", "id", "status").write_parquet(folder / REFUSED)
            save_appended(folder / EMBEDDINGS, index.embeddings, vectors)
            graph.save_index(str(folder / GRAPH))
            sp.save_npz(folder / LEXICAL_MATRIX, lexical_matrix, compressed=False)  # zlib costs seconds at 100k
            for name in unchanged_files:
                shutil.copy2(index.folder / name, folder / name)
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    summary = Summary.of(frame, started)
    summary.reused_embeddings = unchanged.height
    if unknown_categories and index.category_model is not None:
        summary.warnings.append(
            f"{len(unknown_categories)} categories in the index are new since the last full build (e.g."
            f" {sorted(unknown_categories)[0]!r}): the neighbours' vote can name them, the TF-IDF category model"
            " cannot until a rebuild (`enrich index` without --update; unchanged embeddings are reused)")
    if changed_share > REFIT_SHARE:
        summary.warnings.append(
            f"{changed_share:.0%} of the {built} listings indexed at the last full build have been added or deleted since;"
            " the prior, the TF-IDF vocabulary and the category model are still those of that build: rebuild (`enrich index` without --update)")
    return summary


def refreshed_reference(old: pl.DataFrame, current: pl.DataFrame, added: pl.DataFrame, gone: list[int]) -> pl.DataFrame:
    """The id map after the update: unchanged listings with fresh engagement and category under the same label, the
    gone ones marked deleted, the added ones appended."""
    refreshed = old.with_row_index("label").join(
        current.select("id", "text_hash", pl.col("engagement").alias("new_engagement"), pl.col("category").alias("new_category")),
        on=["id", "text_hash"], how="left")
    keep = pl.col("new_engagement").is_not_null() & ~pl.col("deleted")
    refreshed = refreshed.with_columns(
        pl.when(keep).then(pl.col("new_engagement")).otherwise(pl.col("engagement")).alias("engagement"),
        pl.when(keep).then(pl.col("new_category")).otherwise(pl.col("category")).alias("category"),
        (pl.col("deleted") | pl.col("label").is_in(gone)).alias("deleted"),
    ).sort("label").select(old.columns)
    return pl.concat([refreshed, added.with_columns(deleted=pl.lit(False)).select(old.columns)])


def updated_manifest(manifest: dict, reference: pl.DataFrame, update: dict, started: float) -> tuple[dict, float, int]:
    """The manifest with this update appended; the share of the last full build's listings changed since, and their count."""
    manifest = dict(manifest)
    deleted = int(reference["deleted"].sum())
    manifest["counts"] = {**manifest["counts"], "indexed": reference.height - deleted, "deleted": deleted,
                          "labels": reference.height}
    manifest["updates"] = manifest["updates"] + [{**update, "seconds": round(time.perf_counter() - started, 2)}]
    built = reference.height - sum(u["added"] for u in manifest["updates"])  # labels at the last full build
    changed_share = sum(u["added"] + u["deleted"] for u in manifest["updates"]) / max(built, 1)
    manifest["changed_since_build"] = round(changed_share, 4)
    return manifest, changed_share, built
