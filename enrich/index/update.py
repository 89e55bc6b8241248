"""`enrich index --update`: bring an index up to date without a rebuild.

The file given is a delta: its listings that are new, or whose text changed, are embedded and added to the
hnswlib graph (`resize_index`, `add_items`), the old version of a changed one is marked deleted (`mark_deleted`),
and unchanged ones get their engagement and category refreshed. Listings the file does not name are left alone,
unless `delete_missing` says the file is the whole current catalog: then what it lacks is marked deleted too,
and a deletion of more than `max_delete_share` of the index is refused unless that share is raised on purpose.
Deleted listings stay in the id map with `deleted = true`, so labels never move. The prior, the TF-IDF
vocabulary and the category model stay as fitted at the last full build (the manifest says how much has changed
since): rebuild now and then. Every update is a new version of the folder (`index.versions`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from enrich.catalog import Columns, listing_texts, load_catalog
from enrich.catalog.decisions import apply_decisions, read_decisions, relabel
from enrich.category.acceptance import AcceptancePolicy
from enrich.category.lexical_model import CategoryModel
from enrich.embed import text_hashes
from enrich.errors import InputError
from enrich.files import NpyRowWriter, exclusive_lock, file_digests
from enrich.index.build import BUILD_CHUNK_ROWS, MIN_REFERENCE, embedding_cache_key, text_chunks
from enrich.index.store import (CALIBRATION, EMBEDDINGS, GRAPH, LEXICAL_MATRIX, MANIFEST, REFERENCE, REFUSED, IndexMismatch,
                                ReferenceIndex, encoder_for)
from enrich.index.versions import new_version
from enrich.manifest import Summary, now
from enrich.prior import ExposurePrior
from enrich.search.lexical import Lexical
from enrich.settings import EnrichConfig, UpdateConfig



def save_appended(path: Path, old: np.ndarray, new: np.ndarray) -> None:
    """Save old rows then new ones as one .npy, copying the (memory-mapped) old rows a chunk at a time."""
    writer = NpyRowWriter(path, len(old) + len(new), old.shape[1])
    for start in range(0, len(old), BUILD_CHUNK_ROWS):
        writer.write(old[start: start + BUILD_CHUNK_ROWS])
    writer.write(new)
    writer.close()


@dataclass
class Changes:
    """What an update file changes in an index's id map."""

    added: pl.DataFrame  # listings to embed and add: new ids, and new versions of changed ones
    replaced: list[int]  # labels of the old versions of changed listings
    missing: list[int]  # labels of live listings the file does not name
    unchanged: pl.DataFrame  # live listings whose id and text the file repeats: engagement and category refreshed
    current: pl.DataFrame  # the file's usable listings, as the id map holds them


def changes(index: ReferenceIndex, frame: pl.DataFrame, cache_key: str) -> Changes:
    current = frame.filter(pl.col("status") == "ok")
    current = current.with_columns(text_hash=pl.Series(
        [h for _, texts in text_chunks(current) for h in text_hashes(texts, cache_key)], dtype=pl.String))
    live = index.reference.with_row_index("label").filter(~pl.col("deleted"))
    unchanged = live.join(current.select("id", "text_hash"), on=["id", "text_hash"], how="semi")
    replaced = live.join(current.select("id"), on="id", how="semi").join(unchanged.select("label"), on="label", how="anti")
    missing = live.join(current.select("id"), on="id", how="anti")
    added = current.join(unchanged.select("id"), on="id", how="anti")
    return Changes(added, replaced["label"].to_list(), missing["label"].to_list(), unchanged,
                   current.select("id", "title", "brand", "category", "engagement", "text_hash"))


def update_index(reference_path: str | Path, out_dir: str | Path, columns: Columns = Columns(),
                 config: EnrichConfig = EnrichConfig(), progress: bool = True, delete_missing: bool = False,
                 update: UpdateConfig = UpdateConfig(), decisions: str | Path | None = None) -> Summary:
    """Bring the index in `out_dir` up to date with the listings in `reference_path`: see the module. `decisions`, the
    team's, relabel the listings they name (the file's or the index's) and add the reviewed ones."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).exists():
        raise IndexMismatch(f"{out_dir}: no index to update; build one first with `enrich index` (without --update)")
    frame = load_catalog(reference_path, columns, config.cleaning, reference=True)
    decided = read_decisions(decisions) if decisions is not None else None
    if decided is not None:
        frame, _ = apply_decisions(frame, decided)
    with exclusive_lock(out_dir, "this index"):
        encoder = encoder_for(out_dir)
        index = ReferenceIndex.load(out_dir, encoder)
        # Hashed as the index was, whatever this machine's precision: else every listing would look changed here.
        change = changes(index, frame, embedding_cache_key(encoder, index.manifest["encoder"]))
        gone = change.replaced + (change.missing if delete_missing else [])
        live = int((~index.reference["deleted"]).sum())
        max_delete_share = update.max_delete_share
        if delete_missing and len(change.missing) > max_delete_share * live:
            raise InputError(
                f"{reference_path}: lacks {len(change.missing)} of the index's {live} listings ({len(change.missing) / live:.0%});"
                f" --delete-missing deletes at most {max_delete_share:.0%} of them. If the file really is the whole catalog,"
                f" say so with --max-delete {len(change.missing) / live:.2f} (the previous version stays: `--rollback`)")
        if live - len(gone) + change.added.height < MIN_REFERENCE:
            raise InputError(f"{reference_path}: the update would leave fewer than {MIN_REFERENCE} listings in the index")
        reference = refreshed_reference(index.reference, change.current, change.added.select(change.current.columns), gone)
        if decided is not None:  # the index's own listings that the file does not repeat are relabelled too
            reference = relabel(reference, decided, ~pl.col("deleted"))
        summary = Summary.of(frame, started)
        summary.reused_embeddings = change.unchanged.height
        if not change.added.height and not gone and reference.equals(index.reference):
            summary.warnings.append("nothing to change: the index already holds these listings as they are (no new version)")
            return summary
        unknown, manifest = write_update(index, out_dir, frame, reference, change, gone, encoder, progress,
                                         str(reference_path), started, str(decisions) if decisions else None)
    summary.warnings += update_warnings(manifest, reference, unknown if index.category_model is not None else set(),
                                        update.refit_share)
    summary.seconds = time.perf_counter() - started
    return summary


def write_update(index: ReferenceIndex, out_dir: Path, frame: pl.DataFrame, reference: pl.DataFrame, change: Changes,
                 gone: list[int], encoder, progress: bool, source: str, started: float,
                 decisions: str | None = None) -> tuple[set[str], dict]:
    """Embed what the update adds, change the graph and write the new version; the categories the category model
    does not know, and the new manifest."""
    added_texts = listing_texts(change.added)  # the only texts held: those of listings to embed
    vectors = encoder.encode(added_texts, progress=progress, desc="embedding new reference listings")
    old_labels = index.reference.height
    graph = index.neighbors.index
    graph.resize_index(reference.height)
    if added_texts:
        graph.add_items(vectors, np.arange(old_labels, reference.height), num_threads=index.neighbors.config.threads)
    for label in gone:
        graph.mark_deleted(label)
    lexical_matrix = index.lexical_matrix
    if added_texts:
        lexical_matrix = sp.vstack([lexical_matrix, index.lexical.transform(added_texts)]).tocsr()
    live_categories = set(reference.filter(~pl.col("deleted"))["category"].drop_nulls().to_list())
    unknown = live_categories - set(index.category_model.labels if index.category_model else ())
    update = {"at": now(), "source": source, "added": change.added.height, "deleted": len(gone),
              "replaced": len(change.replaced), "refreshed": change.unchanged.height,
              "categories_unknown_to_the_model": len(unknown), "decisions": decisions, "embedded_with": encoder.path}
    manifest = updated_manifest(index.manifest, reference, update, started)
    unchanged_files = (*Lexical.FILES, *(ExposurePrior.FILES if index.prior else ()), *(CategoryModel.FILES if index.category_model else ()),
                       *((AcceptancePolicy.FILE,) if index.acceptance else ()),
                       *((CALIBRATION,) if (index.folder / CALIBRATION).exists() else ()))
    with new_version(out_dir) as folder:
        reference.write_parquet(folder / REFERENCE)
        frame.filter(pl.col("status") != "ok").select("row", "id", "status").write_parquet(folder / REFUSED)
        save_appended(folder / EMBEDDINGS, index.embeddings, vectors)
        graph.save_index(str(folder / GRAPH))
        sp.save_npz(folder / LEXICAL_MATRIX, lexical_matrix, compressed=False)  # zlib costs seconds at 100k
        for name in unchanged_files:
            shutil.copy2(index.folder / name, folder / name)
        (folder / MANIFEST).write_text(json.dumps({**manifest, "files": file_digests(folder)}, indent=1))
    return unknown, manifest


def refreshed_reference(old: pl.DataFrame, current: pl.DataFrame, added: pl.DataFrame, gone: list[int]) -> pl.DataFrame:
    """The id map after the update: unchanged listings with fresh engagement and category under the same label, the
    gone ones marked deleted, the added ones appended."""
    refreshed = old.with_row_index("label").join(
        current.select("id", "text_hash", pl.col("engagement").alias("new_engagement"), pl.col("category").alias("new_category"),
                       pl.lit(True).alias("repeated")), on=["id", "text_hash"], how="left")
    keep = pl.col("repeated").fill_null(False) & ~pl.col("deleted")
    refreshed = refreshed.with_columns(
        pl.when(keep).then(pl.col("new_engagement")).otherwise(pl.col("engagement")).alias("engagement"),
        pl.when(keep).then(pl.col("new_category")).otherwise(pl.col("category")).alias("category"),
        (pl.col("deleted") | pl.col("label").is_in(gone)).alias("deleted"),
    ).sort("label").select(old.columns)
    return pl.concat([refreshed, added.with_columns(deleted=pl.lit(False)).select(old.columns)])


def updated_manifest(manifest: dict, reference: pl.DataFrame, update: dict, started: float) -> dict:
    """The manifest with this update appended, and the share of the last full build's listings changed since."""
    manifest = dict(manifest)
    deleted = int(reference["deleted"].sum())
    manifest["counts"] = {**manifest["counts"], "indexed": reference.height - deleted, "deleted": deleted,
                          "labels": reference.height}
    manifest["updates"] = manifest["updates"] + [{**update, "seconds": round(time.perf_counter() - started, 2)}]
    built = reference.height - sum(u["added"] for u in manifest["updates"])  # labels at the last full build
    manifest["changed_since_build"] = round(sum(u["added"] + u["deleted"] for u in manifest["updates"]) / max(built, 1), 4)
    return manifest


def update_warnings(manifest: dict, reference: pl.DataFrame, unknown: set[str], refit_share: float) -> list[str]:
    warnings = []
    if unknown:
        warnings.append(
            f"{len(unknown)} categories in the index are new since the last full build (e.g. {sorted(unknown)[0]!r}): the"
            " neighbours' vote can name them, the TF-IDF category model cannot until a rebuild (`enrich index` without"
            " --update; unchanged embeddings are reused)")
    if manifest["changed_since_build"] > refit_share:
        built = reference.height - sum(u["added"] for u in manifest["updates"])
        warnings.append(
            f"{manifest['changed_since_build']:.0%} of the {built} listings indexed at the last full build have been added"
            " or deleted since; the prior, the TF-IDF vocabulary and the category model are still those of that build:"
            " rebuild (`enrich index` without --update)")
    return warnings
