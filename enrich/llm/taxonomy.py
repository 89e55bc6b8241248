"""Mapping listings to the Shopify Standard Product Taxonomy.

Two steps, so that the answer is always a real taxonomy node: the encoder retrieves the categories whose
path reads most like the listing, then the generative model picks one of those candidates by likelihood
(`llm.LocalChooser`) or, on a chat server, by naming it (`llm.ChatChooser`, answers outside the candidates
refused). A listing that tells the model to answer something else can only move it among the candidates.

The taxonomy ships inside the package as one table (id, full path) made from Shopify's category YAML files
(MIT, licence beside it); `--taxonomy DIR` reads a newer release's `data/categories` folder instead.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from enrich.catalog.paths import PATH_SEPARATOR as SEPARATOR
from enrich.errors import InputError
from enrich.files import write_npy
from enrich.llm.answers import ask, choice_share

SHIPPED = Path(__file__).parent / "taxonomy_data" / "shopify_categories.tsv"


@dataclass(frozen=True)
class Taxonomy:
    ids: tuple[str, ...]
    paths: tuple[str, ...]
    version: str  # the release, or a hash of the table

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(f"{i}\t{p}" for i, p in zip(self.ids, self.paths)).encode()).hexdigest()[:16]


def categories_from_yaml(folder: Path) -> pl.DataFrame:
    """Shopify's `data/categories/*.yml` as a table of (id, path), parents before children."""
    nodes = {}
    for file in sorted(Path(folder).glob("*.yml")):
        for node in yaml.safe_load(file.read_text()) or []:
            nodes[node["id"]] = node
    if not nodes:
        raise InputError(f"no category YAML files in {folder}")
    parent = {child: node["id"] for node in nodes.values() for child in node.get("children", [])}

    def path(node_id: str) -> str:
        names = []
        while node_id:
            names.append(nodes[node_id]["name"])
            node_id = parent.get(node_id)
        return SEPARATOR.join(reversed(names))

    rows = [(node_id, path(node_id)) for node_id in nodes]
    return pl.DataFrame(rows, schema=["id", "path"], orient="row").sort("path")


def load_taxonomy(source: Path | None = None) -> Taxonomy:
    """The shipped taxonomy, a table written by `categories_from_yaml`, or a release's categories folder."""
    source = Path(source) if source else SHIPPED
    if source.is_dir():
        folder = source / "data" / "categories" if (source / "data" / "categories").is_dir() else source
        table = categories_from_yaml(folder)
        version_file = folder.parent.parent / "VERSION"
        version = version_file.read_text().strip() if version_file.exists() else ""
    elif source.exists():
        table = pl.read_csv(source, separator="\t", schema={"id": pl.String, "path": pl.String})
        version_file = source.parent / "VERSION"
        version = version_file.read_text().strip() if version_file.exists() else ""
    else:
        raise InputError(f"no taxonomy at {source}")
    taxonomy = Taxonomy(ids=tuple(table["id"]), paths=tuple(table["path"]), version=version)
    return taxonomy if version else replace(taxonomy, version=taxonomy.fingerprint)


class TaxonomyIndex:
    """The taxonomy's categories embedded once (cached on disk by taxonomy and encoder), searched exactly.

    A category's vector is its full path's embedding plus `name_weight` times its own name's, re-normalised.
    """

    def __init__(self, taxonomy: Taxonomy, encoder, cache_dir: Path | None = None, name_weight: float = 0.0):
        self.taxonomy = taxonomy
        key = hashlib.sha256(f"{taxonomy.fingerprint}{encoder.identity()['fingerprint']}".encode()).hexdigest()[:16]
        cached = Path(cache_dir) / f"taxonomy-{key}-path-and-name.npy" if cache_dir else None
        if cached is not None and cached.exists():
            self.path_vectors, self.name_vectors = np.load(cached, allow_pickle=False)
        else:
            names = [path.rsplit(SEPARATOR, 1)[-1] for path in taxonomy.paths]
            self.path_vectors, self.name_vectors = encoder.encode(list(taxonomy.paths)), encoder.encode(names)
            if cached is not None:
                write_npy(cached, np.stack([self.path_vectors, self.name_vectors]))
        self.name_weight = name_weight
        self.vectors = with_category(self.path_vectors, self.name_vectors, name_weight)

    def with_name_weight(self, name_weight: float) -> TaxonomyIndex:
        """The same index, its category vectors mixed with another weight (no re-embedding)."""
        other = copy.copy(self)
        other.name_weight = name_weight
        other.vectors = with_category(self.path_vectors, self.name_vectors, name_weight)
        return other

    def candidates(self, listing_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k category rows and cosines for each listing, most similar first."""
        k = min(k, len(self.taxonomy))
        sims = listing_vectors @ self.vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        return top, np.take_along_axis(sims, top, axis=1)


def category_vectors(categories: list[str | None], encoder) -> np.ndarray:
    """Each listing's category path embedded (each distinct path once); zeros where there is none."""
    distinct = sorted({c for c in categories if c})
    found = dict(zip(distinct, encoder.encode(distinct)))
    zero = np.zeros(encoder.dim, dtype=np.float32)
    return np.stack([found.get(c, zero) for c in categories])


def with_category(vectors: np.ndarray, added: np.ndarray, weight: float) -> np.ndarray:
    """`vectors` plus `weight` times `added`, row by row, re-normalised: a listing's vector with its category
    path's (the retrieval query), or a category's path vector with its name's.

    A row whose added vector is zero (a listing without a category) keeps its own direction.
    """
    mixed = vectors + weight * added
    return mixed / np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Mapping:
    taxonomy_id: str | None
    taxonomy_path: str | None
    score: float | None  # the chosen candidate's share of the model's choice; the cosine when not asked
    retrieved_path: str | None  # the nearest category by embedding alone (the baseline the model must beat)
    error: str = ""


def map_listing(title: str, text: str, candidate_rows: np.ndarray, candidate_sims: np.ndarray, taxonomy: Taxonomy,
                chooser, template, cache=None) -> Mapping:
    """Let the model choose among the retrieved candidates; without a chooser, take the nearest."""
    paths = [taxonomy.paths[r] for r in candidate_rows]
    nearest = paths[0]
    if chooser is None:  # config.choose == "nearest", or no model loaded
        row = int(candidate_rows[0])
        return Mapping(taxonomy.ids[row], nearest, round(float(candidate_sims[0]), 4), nearest)
    prompt = template.render(title=title, text=chooser.cut_listing(text), options=paths)
    choice = ask(chooser, cache, template, prompt, paths)
    if not choice.ok:
        return Mapping(None, None, None, nearest, f"taxonomy: {choice.error}")
    row = int(candidate_rows[choice.index])
    return Mapping(taxonomy.ids[row], taxonomy.paths[row], choice_share(choice.scores, choice.index), nearest)
