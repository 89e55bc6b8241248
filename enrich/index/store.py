"""An index folder on disk and loaded: the reference listings, their vectors, the hnswlib graph, the TF-IDF
vocabulary and matrix, the prior and the TF-IDF category model, with a manifest that says what made them.

Every file's name is declared here (or by the class that writes it); `enrich index` writes them through
`index.build` and `index.update`, and `enrich run` reads them through `ReferenceIndex.load`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from enrich.catalog import CatalogError
from enrich.category.lexical_model import CategoryModel
from enrich.config import EnrichConfig
from enrich.embed import Encoder, EncoderConfig
from enrich.index.lexical import Lexical, LexicalConfig
from enrich.index.neighbors import IndexConfig, NeighborIndex
from enrich.prior import ExposurePrior

FORMAT = 3  # 3: one copy of the encoder's settings, the vote's level cut in its own config
MANIFEST = "manifest.json"
REFERENCE = "reference.parquet"  # the id map: row i is hnswlib label i
EMBEDDINGS = "embeddings.npy"
GRAPH = "hnsw.bin"
LEXICAL_MATRIX = "lexical_matrix.npz"
REFUSED = "refused.parquet"  # reference rows that could not be indexed, with why
REQUIRED = (MANIFEST, REFERENCE, EMBEDDINGS, GRAPH, LEXICAL_MATRIX, *Lexical.FILES, *ExposurePrior.FILES)


class IndexMismatch(CatalogError):
    """An index folder that this encoder or this version of enrich cannot use."""


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise IndexMismatch(f"{folder}: not an enrich index (no {MANIFEST}); build one with `enrich index`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise IndexMismatch(f"{folder}: index format {manifest.get('format')}, this enrich reads {FORMAT}; rebuild it")
    return manifest


class ReferenceIndex:
    """A loaded index folder: the reference listings, their vectors, the hnswlib graph, the prior, and the
    TF-IDF category model (None where the reference catalog gave fewer than two categories)."""

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
        missing = [name for name in REQUIRED if not (folder / name).exists()]
        if missing:
            raise IndexMismatch(f"{folder}: not an enrich index (missing {', '.join(missing)}); build one with `enrich index`")
        manifest = read_manifest(folder)
        if encoder is not None:
            check_encoder(manifest, encoder.identity(), folder)
        reference = pl.read_parquet(folder / REFERENCE)
        embeddings = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
        config = IndexConfig(**manifest["config"]["index"])
        deleted = int(reference["deleted"].sum())
        neighbors = NeighborIndex.load(str(folder / GRAPH), embeddings.shape[1], reference.height, config, deleted)
        lexical_matrix = sp.load_npz(folder / LEXICAL_MATRIX).tocsr()
        category_model = CategoryModel.load(folder) if manifest["category_model"] else None
        return cls(folder, manifest, reference, embeddings, neighbors, Lexical.load(folder), lexical_matrix,
                   ExposurePrior.load(folder), category_model)


def check_encoder(manifest: dict, here: dict, folder: Path) -> None:
    """Refuse an index whose vectors another encoder made (`here`: `Encoder.identity()` or the same keys)."""
    built = manifest["encoder"]
    if built["fingerprint"] != here["fingerprint"] or built["dim"] != here["dim"]:
        raise IndexMismatch(
            f"{folder} was built with {built['model_name']} (fingerprint {built['fingerprint']}, dim {built['dim']}),"
            f" but this run embeds with {here['model_name']} (fingerprint {here['fingerprint']}, dim {here['dim']});"
            " rebuild the index with `enrich index` or use the model it was built with"
        )


def encoder_for(folder: str | Path) -> Encoder:
    """The encoder an index was built with, by its recorded settings."""
    manifest = read_manifest(Path(folder))
    return Encoder(EncoderConfig(**manifest["config"]["encoder"]))


def recorded_tagger(index: ReferenceIndex) -> Path | None:
    """The tagger named by `enrich index --model`: beside the index as it was then, else at its absolute path."""
    absolute, relative = index.manifest["tagger"], index.manifest["tagger_relative"]
    if not absolute:
        return None
    candidates = ([index.folder.parent / relative] if relative else []) + [Path(absolute)]
    for candidate in candidates:
        if (candidate / "tagger.json").exists():
            return candidate
    raise IndexMismatch(f"{index.folder}: the index was built with the tagger {absolute}, which is no longer there"
                        " (nor beside the index); pass --model DIR, or rebuild the index")


def query_config(index: ReferenceIndex, requested: EnrichConfig) -> EnrichConfig:
    """Query-time settings: what the index was built with, plus the requested vote and cleaning."""
    built = index.manifest["config"]
    return replace(
        requested, encoder=EncoderConfig(**built["encoder"]), index=IndexConfig(**built["index"]),
        lexical=LexicalConfig(**built["lexical"]), prior=index.prior.config,
    )
