"""The catalog's own contradictions: groups of near-identical reference listings that carry different category paths."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from enrich.index.store import ReferenceIndex


@dataclass
class Conflict:
    key: str  # stable for the group: its first listing's id
    members: list[dict]  # id, title, category, engagement
    paths: list[tuple[str, int]]  # the group's paths, most common first

    @property
    def size(self) -> int:
        return len(self.members)


def conflicts(index: ReferenceIndex, min_cosine: float = 0.95, neighbors: int = 10, ef: int = 48) -> list[Conflict]:
    """Listings linked when their cosine reaches `min_cosine`, grouped by linkage; the groups whose labelled members
    disagree on the path, largest first. Near-identical listings are the easiest an approximate search finds: it
    looks at `ef` candidates, not the hundreds enrichment's vote reads (a tenth of the time on the Amazon index); the
    caller holds the models, so that no search runs meanwhile with the lower setting."""
    live = np.flatnonzero(~index.reference["deleted"].to_numpy())
    k = min(neighbors + 1, len(index.neighbors))
    graph_index, ef_before = index.neighbors.index, index.neighbors.index.ef
    graph_index.set_ef(max(ef, k))
    try:
        positions, sims = index.neighbors.search(np.asarray(index.embeddings[live]), k)
    finally:
        graph_index.set_ef(ef_before)
    rows, cols = np.nonzero(sims >= min_cosine)
    graph = coo_matrix((np.ones(len(rows)), (live[rows], positions[rows, cols])), shape=(index.reference.height,) * 2)
    _, component = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for label in live:
        groups.setdefault(component[label], []).append(int(label))
    found = []
    for members in groups.values():
        paths = Counter(index.categories[m] for m in members if index.categories[m])
        if len(members) > 1 and len(paths) > 1:
            rows = [index.reference.row(m, named=True) for m in members]
            found.append(Conflict(rows[0]["id"], [{k: r[k] for k in ("id", "title", "category", "engagement")} for r in rows],
                                  paths.most_common()))
    return sorted(found, key=lambda c: (-c.size, c.key))
