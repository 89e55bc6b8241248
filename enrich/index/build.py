"""`enrich index`: embed a reference catalog, link it in an hnswlib graph, fit the TF-IDF vocabulary, the prior and
the category model on it, and write them as one new version of the index folder."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from tqdm.auto import tqdm

from enrich.catalog import CatalogError, Columns, listing_texts
from enrich.catalog.inspect import catalog_warnings, reading_notes
from enrich.catalog.load import read_catalog
from enrich.catalog.decisions import apply_decisions, read_decisions
from enrich.category.acceptance import AcceptancePolicy
from enrich.category.lexical_model import CategoryModel
from enrich.category.tagger import Tagger
from enrich.embed import CALIBRATION_LISTINGS, BatchEncoder, Encoder, text_hashes
from enrich.errors import ArtifactError
from enrich.files import NpyRowWriter, exclusive_lock, file_digests, write_json
from enrich.index.calibration import fit_acceptance
from enrich.index.store import (CALIBRATION, EMBEDDINGS, FORMAT, GRAPH, LEXICAL_MATRIX, MANIFEST, REFERENCE, REFUSED,
                                check_encoder, read_manifest)
from enrich.search.lexical import Lexical
from enrich.search.neighbors import NeighborIndex
from enrich.settings import EnrichConfig
from enrich.index.versions import new_version
from enrich.manifest import Summary, now, package_versions
from enrich.prior import ExposurePrior, brand_key, brand_statistics, engagement_log_cap, reference_evidence
from enrich.engine import EngineConfig
from enrich.sampling import fit_sample

MIN_REFERENCE = 10  # fewer usable reference listings cannot support neighbours, a vote or a fitted prior
BUILD_CHUNK_ROWS = 65_536  # listings hashed, embedded and TF-IDF-transformed at a time by an index build
REFERENCE_COLUMNS = ("id", "title", "brand", "category", "engagement", "text_hash", "deleted")


def text_chunks(listings: pl.DataFrame):
    """(first row, texts) a chunk at a time: an index build never holds the texts of a whole catalog."""
    for start in range(0, listings.height, BUILD_CHUNK_ROWS):
        yield start, listing_texts(listings.slice(start, BUILD_CHUNK_ROWS))


def embedding_cache_key(encoder: Encoder, recorded: dict | None = None) -> str:
    """What a listing's text hash is made with besides its text: the weights, the path (backend and precision) and
    the token limit. `recorded`: the encoder an index recorded, where its path is not this machine's (an index built
    on a GPU, or where bf16 or int8 is fast, and updated elsewhere)."""
    backend, dtype = (recorded.get("backend", "torch"), recorded["dtype"]) if recorded else (encoder.backend, encoder.dtype)
    return f"{encoder.fingerprint}:{backend}.{dtype}:{encoder.max_tokens}"


def calibration_texts(ok: pl.DataFrame, seed: int) -> list[str]:
    """Reference listings in a seeded random order, for the encoder to calibrate int8 on (`Encoder.calibrate`)."""
    return listing_texts(ok[np.random.default_rng(seed).permutation(ok.height)[:CALIBRATION_LISTINGS]])


class EmbeddingCache:
    """Vectors of an earlier build of this folder whose text and weights are unchanged, looked up a chunk at a time.
    The earlier build may have run on another path (on a GPU, in OpenVINO, in int8): its vectors serve all the same
    (each path was kept only where it agrees with torch fp32), looked up by the hashes it made."""

    def __init__(self, out_dir: Path, encoder: Encoder):
        self.dim, self.where, self.vectors = encoder.dim, {}, None
        self.key = self.build_key = embedding_cache_key(encoder)
        try:
            manifest = read_manifest(out_dir)
            check_encoder(manifest, encoder.identity(), out_dir)
            old = pl.read_parquet(out_dir / REFERENCE, columns=["text_hash"])["text_hash"].to_list()
            self.vectors = np.load(out_dir / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
            self.key = embedding_cache_key(encoder, manifest["encoder"])
        except (OSError, KeyError, ValueError, ArtifactError, pl.exceptions.PolarsError, json.JSONDecodeError):
            return  # no earlier build here to reuse: every listing is embedded
        if len(old) == len(self.vectors):
            self.where = {h: i for i, h in enumerate(old)}

    def lookup(self, texts: list[str], hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, vectors) for texts with this build's `hashes`: rows not found are zero."""
        if self.key != self.build_key:
            hashes = text_hashes(texts, self.key)
        rows = np.array([self.where.get(h, -1) for h in hashes], dtype=np.int64)
        found = rows >= 0
        vectors = np.zeros((len(hashes), self.dim), np.float32)
        if found.any():
            vectors[found] = self.vectors[rows[found]]
        return found, vectors


def build_index(reference_path: str | Path, out_dir: str | Path, columns: Columns = Columns(),
                config: EnrichConfig = EnrichConfig(), progress: bool = True, encoder: Encoder | None = None,
                tagger_dir: str | Path | None = None, engine: EngineConfig = EngineConfig(),
                decisions: str | Path | None = None) -> Summary:
    """Embed the reference catalog, build the hnswlib index and fit the prior; write them to `out_dir`.

    `tagger_dir`, a fine-tuned tagger, is recorded in the manifest: `enrich run` then uses it by default.
    With `engine` Ray, the embedding runs on Ray Data actors; the rest in this process. `decisions`, the team's
    (`enrich review export`), relabel the listings they name and add the reviewed ones (see `catalog.decisions`).
    """
    started = time.perf_counter()
    catalog = read_catalog(reference_path, columns, config.cleaning, reference=True)
    frame, learned = catalog.frame, None
    if decisions is not None:
        frame, learned = apply_decisions(frame, read_decisions(decisions))
        learned["source"] = str(decisions)
    summary = build_index_from_frame(frame, out_dir, source=str(reference_path), columns=catalog.details.columns,
                                     config=config, progress=progress, encoder=encoder, started=started,
                                     tagger_dir=tagger_dir, engine=engine, decisions=learned)
    summary.notes = reading_notes(catalog.details) + summary.notes
    summary.warnings = catalog_warnings(catalog) + summary.warnings
    return summary


def embed_on_actors(texts: list[str], encoder_config, engine: EngineConfig, max_batch_rows: int = 4096) -> np.ndarray:
    """The encoder over texts on the engine's actors (`BatchEncoder`); vectors in the order of texts."""
    import pyarrow as pa

    from enrich.engine import actor_count, map_on_actors

    # At least four batches per actor, so that every actor has work and a slow one holds nothing up.
    batch_rows = int(min(max_batch_rows, max(64, -(-len(texts) // (4 * actor_count(engine))))))
    blocks = [pa.table({"row": np.arange(start, min(start + batch_rows, len(texts))),
                        "text": texts[start: start + batch_rows]}) for start in range(0, len(texts), batch_rows)]
    out = np.zeros((len(texts), 0), np.float32)
    for batch in map_on_actors(blocks, BatchEncoder, (encoder_config,), engine):
        vectors = np.stack(batch.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
        if out.shape[1] == 0:
            out = np.zeros((len(texts), vectors.shape[1]), np.float32)
        out[batch.column("row").to_numpy()] = vectors
    return out


@dataclass
class Embedded:
    """The usable reference listings, embedded into the new version's .npy file and the hnswlib graph, and
    TF-IDF-transformed."""

    neighbors: NeighborIndex
    lexical_matrix: sp.csr_matrix
    hashes: list[str]
    reused: int


def embed_reference(ok: pl.DataFrame, out_dir: Path, folder: Path, encoder: Encoder, lexical: Lexical,
                    config: EnrichConfig, engine: EngineConfig, progress: bool) -> Embedded:
    """A chunk at a time: embed (or find in the earlier build of `out_dir`), append to `folder`'s embeddings file and
    to the hnswlib graph, TF-IDF-transform. The graph then holds the only in-memory copy of the vectors."""
    cache = EmbeddingCache(out_dir, encoder)
    embeddings = NpyRowWriter(folder / EMBEDDINGS, ok.height, encoder.dim)
    neighbors = NeighborIndex.empty(encoder.dim, ok.height, config.index)
    hashes, lexical_parts, reused = [], [], 0
    with tqdm(total=ok.height, desc="embedding and indexing reference", unit="listing", disable=not progress,
              leave=False) as bar:
        for start, texts in text_chunks(ok):
            chunk_hashes = text_hashes(texts, cache.build_key)
            found, vectors = cache.lookup(texts, chunk_hashes)
            missing = np.flatnonzero(~found)
            if len(missing) and engine.is_ray:
                vectors[missing] = embed_on_actors([texts[i] for i in missing], encoder.config, engine)
            elif len(missing):
                vectors[missing] = encoder.encode([texts[i] for i in missing])
            embeddings.write(vectors)
            neighbors.add(vectors, np.arange(start, start + len(texts)))
            lexical_parts.append(lexical.transform(texts))
            hashes += chunk_hashes
            reused += int(found.sum())
            bar.update(len(texts))
    embeddings.close()
    return Embedded(neighbors, sp.vstack(lexical_parts, format="csr"), hashes, reused)


def fit_prior(ok: pl.DataFrame, embedded: Embedded, config: EnrichConfig) -> ExposurePrior | None:
    """The prior, fitted on a sample of the reference listings that have engagement, each left out of its own
    neighbours (listings without engagement, such as those the team labelled, are neighbours whose engagement is
    unknown). None where too few listings have engagement to fit one."""
    engagement = ok["engagement"].fill_null(float("nan")).to_numpy().astype(np.float64)
    known = np.flatnonzero(~np.isnan(engagement))
    if len(known) < MIN_REFERENCE:
        return None
    brands = ok["brand"].to_list()
    fitted_on = known[fit_sample(len(known), config.prior.fit_rows, config.prior.seed)]
    evidence = reference_evidence(None, embedded.neighbors, embedded.lexical_matrix, engagement, brands,
                                  min(config.index.candidates, ok.height - 1), rows=fitted_on)
    log_cap = engagement_log_cap(engagement[known])
    return ExposurePrior.fit(engagement[fitted_on], evidence, config.prior, log_cap=log_cap,
                             brand_stats=brand_statistics([brand_key(brands[i]) for i in known], engagement[known], log_cap))


def build_index_from_frame(frame: pl.DataFrame, out_dir: str | Path, source: str, columns: Columns = Columns(),
                           config: EnrichConfig = EnrichConfig(), progress: bool = True, encoder: Encoder | None = None,
                           started: float | None = None, tagger_dir: str | Path | None = None,
                           engine: EngineConfig = EngineConfig(), decisions: dict | None = None) -> Summary:
    """`build_index` for a catalog already loaded with `load_catalog(..., reference=True)`; `decisions`: what the
    team's decisions changed in it, for the manifest."""
    started = started or time.perf_counter()
    out_dir = Path(out_dir)
    if tagger_dir is not None:
        Tagger.check(tagger_dir)
    ok = frame.filter(pl.col("status") == "ok")
    if ok.height < MIN_REFERENCE:
        raise CatalogError(f"{source}: {ok.height} usable reference listings (of {frame.height} rows); an index needs at"
                           f" least {MIN_REFERENCE}")
    encoder = encoder or Encoder(config.encoder)
    encoder.calibrate(calibration_texts(ok, config.prior.seed))
    with exclusive_lock(out_dir, "this index"), new_version(out_dir) as folder:
        lexical = Lexical.fit(listing_texts(ok[fit_sample(ok.height, config.lexical.fit_rows, config.prior.seed)]),
                              config.lexical)
        embedded = embed_reference(ok, out_dir, folder, encoder, lexical, config, engine, progress)
        prior = fit_prior(ok, embedded, config)
        category_model = CategoryModel.fit(embedded.lexical_matrix, ok["category"].to_list(), config.category_model)
        acceptance = fit_acceptance(ok, embedded.neighbors, embedded.lexical_matrix, config.vote, config.category_model,
                                    config.index.candidates, Tagger.load(tagger_dir) if tagger_dir else None,
                                    config.acceptance)
        summary = Summary.of(frame, started)
        summary.reused_embeddings = embedded.reused
        known_engagement = int(ok["engagement"].count())
        if prior is None:
            summary.warnings.append(f"no exposure prior: {known_engagement} reference listings have engagement, fewer than"
                                    f" {MIN_REFERENCE}; `enrich run` writes the prior's columns as null")
        manifest = {
            "format": FORMAT, "built_at": now(), "source": source, "columns": asdict(columns), "config": asdict(config),
            "encoder": encoder.identity(),
            "tagger": str(Path(tagger_dir).resolve()) if tagger_dir else None,
            # Also relative to the folder that holds the index, so that the two can be moved together.
            "tagger_relative": os.path.relpath(Path(tagger_dir).resolve(), out_dir.resolve().parent) if tagger_dir else None,
            "packages": package_versions(),
            "counts": {"rows": frame.height, "indexed": ok.height, "refused": frame.height - ok.height - summary.merged,
                       "merged": summary.merged, "with_engagement": known_engagement,
                       "reused_embeddings": embedded.reused, "lexical_vocabulary": lexical.vocabulary_size},
            "prior_fit": prior.fit_metrics if prior is not None else None,
            "category_model": category_model.info if category_model else None,
            "acceptance": acceptance.summary() if acceptance else None,
            "decisions": decisions,
            "updates": [],
            "seconds": round(time.perf_counter() - started, 2),
        }
        ok.select(REFERENCE_COLUMNS[:5]).with_columns(
            text_hash=pl.Series(embedded.hashes, dtype=pl.String), deleted=pl.lit(False)).write_parquet(folder / REFERENCE)
        frame.filter(pl.col("status") != "ok").select("row", "id", "status").write_parquet(folder / REFUSED)
        save_models(folder, embedded, lexical, prior, category_model, acceptance, encoder)
        (folder / MANIFEST).write_text(json.dumps({**manifest, "files": file_digests(folder)}, indent=1))
    summary.seconds = time.perf_counter() - started
    return summary


def save_models(folder: Path, embedded: Embedded, lexical: Lexical, prior: ExposurePrior | None,
                category_model: CategoryModel | None, acceptance: AcceptancePolicy | None, encoder: Encoder) -> None:
    """The index's parts beside its reference table: the graph, the vocabulary and its matrix, and each model it has."""
    embedded.neighbors.save(str(folder / GRAPH))
    lexical.save(folder)
    sp.save_npz(folder / LEXICAL_MATRIX, embedded.lexical_matrix, compressed=False)  # zlib costs seconds at 100k
    for model in (prior, category_model, acceptance):
        if model is not None:
            model.save(folder)
    if encoder.calibration is not None:  # a run or an update makes the same int8 model from them
        write_json(folder / CALIBRATION, {"texts": list(encoder.calibration.texts)})
