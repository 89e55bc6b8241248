"""The hnswlib index of reference listings, with its id map, and exact search to check it against."""

from __future__ import annotations


import hnswlib
import numpy as np

from enrich.errors import ArtifactError
from enrich.settings import IndexConfig


class NeighborIndex:
    """Cosine search over L2-normalised embeddings; hnswlib labels are row positions in the id map."""

    def __init__(self, index: hnswlib.Index, config: IndexConfig, deleted: int = 0):
        self.index = index
        self.config = config
        self.deleted = deleted  # labels marked deleted: never returned, not counted
        self.index.set_ef(max(config.ef_search, config.candidates + 1))

    @classmethod
    def build(cls, embeddings: np.ndarray, config: IndexConfig = IndexConfig()) -> "NeighborIndex":
        neighbors = cls.empty(embeddings.shape[1], len(embeddings), config)
        neighbors.add(embeddings, np.arange(len(embeddings)))
        return neighbors

    @classmethod
    def empty(cls, dim: int, capacity: int, config: IndexConfig = IndexConfig()) -> "NeighborIndex":
        """An index with room for `capacity` vectors, to be filled a chunk at a time with `add`."""
        index = hnswlib.Index(space="cosine", dim=dim)
        index.init_index(max_elements=max(capacity, 1), ef_construction=config.ef_construction, M=config.M,
                         random_seed=config.seed)
        return cls(index, config)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        if len(vectors):
            self.index.add_items(vectors, labels, num_threads=self.config.threads)

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        """The stored (unit-length) vectors of `labels`: the index holds the only in-memory copy during a build."""
        return np.asarray(self.index.get_items(np.asarray(labels)), dtype=np.float32).reshape(len(labels), -1)

    def save(self, path: str) -> None:
        self.index.save_index(path)

    @classmethod
    def load(cls, path: str, dim: int, count: int, config: IndexConfig, deleted: int = 0) -> "NeighborIndex":
        index = hnswlib.Index(space="cosine", dim=dim)
        index.load_index(path, max_elements=max(count, 1))
        if index.get_current_count() != count:
            raise ArtifactError(f"{path} holds {index.get_current_count()} vectors, the id map {count}")
        return cls(index, config, deleted)

    def __len__(self) -> int:
        return self.index.get_current_count() - self.deleted

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row positions and cosine similarities of the k nearest references, most similar first."""
        k = min(k, len(self))
        if len(queries) == 0 or k == 0:
            return np.zeros((len(queries), k), np.int64), np.zeros((len(queries), k), np.float32)
        labels, distances = self.index.knn_query(queries, k=k, num_threads=self.config.threads)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def search_excluding_self(self, vectors: np.ndarray, k: int, labels: np.ndarray | None = None
                              ) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of indexed vectors themselves (`labels`, by default row i is label i), each left out of its own list."""
        positions, sims = self.search(vectors, k + 1)
        own = np.arange(len(positions)) if labels is None else np.asarray(labels)
        keep = positions != own[:, None]
        # Where the approximate search missed the listing itself, drop the last candidate instead.
        keep[keep.all(1), -1] = False
        width = positions.shape[1] - 1
        return positions[keep].reshape(-1, width)[:, :k], sims[keep].reshape(-1, width)[:, :k]


def exact_search(queries: np.ndarray, reference: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine top-k, in chunks so memory stays flat: the ground truth for recall."""
    k = min(k, len(reference))
    labels = np.zeros((len(queries), k), np.int64)
    sims = np.zeros((len(queries), k), np.float32)
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ reference.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, 1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        labels[start : start + chunk] = np.take_along_axis(top, order, 1)
        sims[start : start + chunk] = np.take_along_axis(top_scores, order, 1)
    return labels, sims


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k that the approximate search also returned."""
    hits = [len(set(a) & set(e)) for a, e in zip(approximate.tolist(), exact.tolist())]
    return float(np.sum(hits) / max(exact.size, 1))
