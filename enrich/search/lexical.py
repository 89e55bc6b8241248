"""Lexical evidence: TF-IDF vectors of listing texts, saved as plain arrays (no pickle).

Embeddings miss exact tokens (model numbers, franchise names, brands) that the TF-IDF cosine catches;
the prior and the benchmark's baselines both use it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from enrich.settings import LexicalConfig


class Lexical:
    """A fitted TF-IDF vectoriser that saves its vocabulary and idf weights as JSON and .npy."""

    FILES = ("lexical.json", "lexical_idf.npy")

    def __init__(self, vectorizer: TfidfVectorizer, config: LexicalConfig):
        self.vectorizer = vectorizer
        self.config = config

    @classmethod
    def fit(cls, texts: list[str], config: LexicalConfig = LexicalConfig()) -> "Lexical":
        min_df = config.min_df if len(texts) >= 10 * config.min_df else 1
        vectorizer = TfidfVectorizer(
            sublinear_tf=True,
            ngram_range=(1, config.ngram_max),
            min_df=min_df,
            max_features=config.max_features,
            dtype=np.float32,
        )
        vectorizer.fit(texts)
        return cls(vectorizer, config)

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        return self.vectorizer.transform(texts).tocsr()

    @property
    def vocabulary_size(self) -> int:
        return len(self.vectorizer.vocabulary_)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        vocabulary = {term: int(i) for term, i in self.vectorizer.vocabulary_.items()}
        (folder / self.FILES[0]).write_text(json.dumps({"config": asdict(self.config), "vocabulary": vocabulary}))
        np.save(folder / self.FILES[1], self.vectorizer.idf_.astype(np.float32))

    @classmethod
    def load(cls, folder: Path) -> "Lexical":
        saved = json.loads((folder / cls.FILES[0]).read_text())
        config = LexicalConfig(**saved["config"])
        vectorizer = TfidfVectorizer(
            sublinear_tf=True, ngram_range=(1, config.ngram_max), vocabulary=saved["vocabulary"], dtype=np.float32
        )
        vectorizer.idf_ = np.load(folder / cls.FILES[1], allow_pickle=False)
        return cls(vectorizer, config)


def pairwise_cosine(queries: sp.csr_matrix, reference: sp.csr_matrix, candidates: np.ndarray,
                    pairs_per_chunk: int = 200_000) -> np.ndarray:
    """Cosine between each query row and its own candidate reference rows (TF-IDF rows are unit length).

    Computed a chunk of queries at a time: the stacked row pairs of a whole 100k catalog with 50 candidates
    each took gigabytes, a chunk takes a few megabytes.
    """
    out = np.zeros(candidates.shape, dtype=np.float32)
    step = max(1, pairs_per_chunk // max(candidates.shape[1], 1))
    for start in range(0, queries.shape[0], step):
        block = candidates[start: start + step]
        rows = np.repeat(np.arange(start, start + block.shape[0]), block.shape[1])
        products = queries[rows].multiply(reference[block.ravel()]).sum(axis=1)
        out[start: start + block.shape[0]] = np.asarray(products, dtype=np.float32).reshape(block.shape)
    return out
