import numpy as np

from enrich.search.neighbors import NeighborIndex, exact_search, recall_at_k
from enrich.settings import IndexConfig


def unit_vectors(n, dim, seed):
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_exact_search_matches_a_full_sort():
    reference, queries = unit_vectors(500, 16, 0), unit_vectors(20, 16, 1)
    labels, sims = exact_search(queries, reference, 10, chunk=7)
    scores = queries @ reference.T
    assert (labels == np.argsort(-scores, axis=1)[:, :10]).all()
    assert np.allclose(sims, np.sort(scores, axis=1)[:, ::-1][:, :10], atol=1e-6)


def test_hnsw_recall_against_brute_force_and_save_load(tmp_path):
    reference, queries = unit_vectors(3000, 32, 2), unit_vectors(200, 32, 3)
    index = NeighborIndex.build(reference, IndexConfig())
    labels, sims = index.search(queries, 10)
    exact, exact_sims = exact_search(queries, reference, 10)
    assert recall_at_k(labels, exact) >= 0.98
    assert np.allclose(sims[:, 0], exact_sims[:, 0], atol=1e-4)
    index.save(str(tmp_path / "hnsw.bin"))
    loaded = NeighborIndex.load(str(tmp_path / "hnsw.bin"), 32, 3000, IndexConfig())
    assert (loaded.search(queries, 10)[0] == labels).all()


def test_recall_counts_shared_members():
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 9]])) == 2 / 3
