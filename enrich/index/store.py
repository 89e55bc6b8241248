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

from enrich.category.acceptance import AcceptancePolicy
from enrich.category.lexical_model import CategoryModel
from enrich.settings import EncoderConfig, EnrichConfig, IndexConfig, LexicalConfig
from enrich.embed import Encoder, local_model_folder, model_fingerprint, packaged_model_path
from enrich.errors import ArtifactError, ConfigError
from enrich.files import DamagedFile, check_files
from enrich.search.lexical import Lexical
from enrich.search.neighbors import NeighborIndex
from enrich.prior import ExposurePrior

FORMAT = 4  # 3: every file's size and checksum in the manifest; one copy of the encoder's settings; 4: the acceptance
# policy's two promises, each tested on listings apart from its calibration maps
MANIFEST = "manifest.json"
REFERENCE = "reference.parquet"  # the id map: row i is hnswlib label i
EMBEDDINGS = "embeddings.npy"
GRAPH = "hnsw.bin"
LEXICAL_MATRIX = "lexical_matrix.npz"
REFUSED = "refused.parquet"  # reference rows that could not be indexed, with why
CALIBRATION = "encoder_calibration.json"  # reference listings the encoder's int8 model is calibrated on, where it was
REQUIRED = (MANIFEST, REFERENCE, EMBEDDINGS, GRAPH, LEXICAL_MATRIX, *Lexical.FILES)  # the prior's: where it has one


class IndexMismatch(ArtifactError):
    """An index folder that this encoder or this version of enrich cannot use, or whose files are damaged."""


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise IndexMismatch(f"{folder}: not an enrich index (no {MANIFEST}); build one with `enrich index`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexMismatch(f"{path}: not valid JSON ({e}); the index is damaged: rebuild it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise IndexMismatch(f"{folder}: index format {found}, this enrich reads {FORMAT}; rebuild it")
    missing = [key for key in ("config", "encoder", "files", "counts", "category_model", "acceptance", "tagger")
               if key not in manifest]
    if missing:
        raise IndexMismatch(f"{path}: no {', '.join(repr(k) for k in missing)}; the index is damaged: rebuild it")
    return manifest


class ReferenceIndex:
    """A loaded index folder: the reference listings, their vectors, the hnswlib graph, the prior (None where the
    reference catalog had no engagement), and the TF-IDF category model (None where it gave fewer than two
    categories)."""

    def __init__(self, folder: Path, manifest: dict, reference: pl.DataFrame, embeddings: np.ndarray,
                 neighbors: NeighborIndex, lexical: Lexical, lexical_matrix: sp.csr_matrix, prior: ExposurePrior | None,
                 category_model: CategoryModel | None, acceptance: AcceptancePolicy | None = None):
        self.folder, self.manifest, self.reference = folder, manifest, reference
        self.embeddings, self.neighbors = embeddings, neighbors
        self.lexical, self.lexical_matrix, self.prior = lexical, lexical_matrix, prior
        self.category_model = category_model
        self.acceptance = acceptance  # None where the reference had too few labelled listings to calibrate on
        self.ids = np.array(reference["id"].to_list(), dtype=object)
        self.categories = np.array(reference["category"].to_list(), dtype=object)
        self.engagement = reference["engagement"].fill_null(float("nan")).to_numpy().astype(np.float64)  # NaN: unknown
        # Listings that may be linked as similar popular ones: those with engagement, or every one where the reference
        # catalog had no engagement at all (then they are similar listings, without a popularity to rank them by).
        known = ~np.isnan(self.engagement)
        self.linkable = known if known.any() else np.ones(len(known), bool)

    @classmethod
    def load(cls, folder: str | Path, encoder: Encoder | None = None, verify: bool = False) -> "ReferenceIndex":
        """The index in `folder`, its files checked against the manifest first (`verify`: hash even the large ones)."""
        folder = Path(folder).resolve()  # once: every file comes from the same version of the index
        missing = [name for name in REQUIRED if not (folder / name).exists()]
        if missing:
            raise IndexMismatch(f"{folder}: not an enrich index (missing {', '.join(missing)}); build one with `enrich index`")
        manifest = read_manifest(folder)
        try:
            check_files(folder, manifest["files"], "`enrich index`", verify)
        except DamagedFile as e:
            raise IndexMismatch(f"{e}; rebuild the index") from None
        if encoder is not None:
            check_encoder(manifest, encoder.identity(), folder)
        try:
            config = IndexConfig(**manifest["config"]["index"])
            reference = pl.read_parquet(folder / REFERENCE)
            missing = [c for c in ("id", "title", "brand", "category", "engagement", "text_hash", "deleted") if c not in reference.columns]
            if missing:
                raise IndexMismatch(f"{folder / REFERENCE}: no column {', '.join(missing)}; the index is damaged: rebuild it")
            embeddings = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
            neighbors = NeighborIndex.load(str(folder / GRAPH), embeddings.shape[1], reference.height, config,
                                           int(reference["deleted"].sum()))
            return cls(folder, manifest, reference, embeddings, neighbors, Lexical.load(folder),
                       sp.load_npz(folder / LEXICAL_MATRIX).tocsr(),
                       ExposurePrior.load(folder) if manifest.get("prior_fit") is not None else None,
                       CategoryModel.load(folder) if manifest["category_model"] else None,
                       AcceptancePolicy.load(folder) if manifest["acceptance"] else None)
        except (TypeError, KeyError, ValueError, OSError, json.JSONDecodeError, pl.exceptions.PolarsError) as e:
            if isinstance(e, IndexMismatch):
                raise
            raise IndexMismatch(f"{folder}: cannot be read as an enrich index ({type(e).__name__}: {e}); rebuild it") from None


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
    """The encoder an index was built with, by its recorded settings. Its weights must be a folder on this machine
    whose fingerprint is the recorded one, checked before anything is loaded: a manifest naming a hub model or
    another folder sends no request anywhere and loads nothing."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        config = EncoderConfig(**manifest["config"]["encoder"])
        recorded = manifest["encoder"]["fingerprint"]
    except (TypeError, KeyError) as e:
        raise IndexMismatch(f"{folder / MANIFEST}: the encoder's settings cannot be read ({e}); rebuild the index") from None
    try:
        weights = local_model_folder(config.model_path or packaged_model_path())
    except ConfigError as e:
        raise IndexMismatch(f"{folder / MANIFEST} names an encoder that is not on this machine: {e}") from None
    if model_fingerprint(str(weights)) != recorded:
        raise IndexMismatch(f"{folder / MANIFEST}: the encoder at {weights} is not the one the index was built with"
                            f" (fingerprint {model_fingerprint(str(weights))}, recorded {recorded}); rebuild the index")
    return Encoder(config, calibration=recorded_calibration(folder))


def recorded_calibration(folder: Path) -> list[str] | None:
    """The listings the index's encoder calibrated int8 on, so that a run makes the same int8 model; None if none."""
    path = folder / CALIBRATION
    if not path.exists():
        return None
    try:
        texts = json.loads(path.read_text())["texts"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise IndexMismatch(f"{path}: cannot be read ({type(e).__name__}: {e}); the index is damaged: rebuild it") from None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise IndexMismatch(f"{path}: 'texts' is not a list of strings; the index is damaged: rebuild it")
    return texts


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
        lexical=LexicalConfig(**built["lexical"]), prior=index.prior.config if index.prior is not None else requested.prior,
    )
