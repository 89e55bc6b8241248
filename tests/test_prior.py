import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr

from enrich.search.neighbors import NeighborIndex
from enrich.settings import IndexConfig, PriorConfig
from enrich.prior import Evidence, ExposurePrior


def synthetic_catalog(n, seed, clusters=40, dim=24):
    """Listings in clusters; a cluster's popularity sets its listings' engagement (log-normal around it)."""
    world = np.random.default_rng(99)  # the same clusters for every sample drawn
    centres, popularity = world.normal(size=(clusters, dim)), world.normal(1.5, 1.2, size=clusters)
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, clusters, size=n)
    vectors = centres[cluster] + 0.35 * rng.normal(size=(n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    engagement = np.round(np.expm1(np.clip(popularity[cluster] + 0.6 * rng.normal(size=n), 0, None)))
    brands = [f"brand{c % 7}" for c in cluster]
    return vectors, engagement, brands


def evidence_for(index, vectors, reference_engagement, brands, k=20, own=False):
    positions, sims = index.search_excluding_self(vectors, k) if own else index.search(vectors, k)
    return Evidence(reference_engagement[positions], sims, sims.copy(), brands, sp.csr_matrix(vectors))


@pytest.fixture(scope="module")
def fitted():
    vectors, engagement, brands = synthetic_catalog(1500, seed=0)
    index = NeighborIndex.build(vectors, IndexConfig(candidates=20))
    prior = ExposurePrior.fit(engagement, evidence_for(index, vectors, engagement, brands, own=True), PriorConfig())
    return index, engagement, prior


def test_prior_ranks_held_out_listings_and_its_interval_covers_about_80_percent(fitted):
    index, engagement, prior = fitted
    vectors, truth, brands = synthetic_catalog(600, seed=1)
    estimate = prior.predict(evidence_for(index, vectors, engagement, brands))
    assert spearmanr(estimate.expected, truth).statistic > 0.6
    covered = np.mean((truth >= estimate.low) & (truth <= estimate.high))
    assert 0.7 <= covered <= 0.9
    assert (estimate.low <= estimate.expected).all() and (estimate.expected <= estimate.high * 1.5).all()


def test_unlike_neighbours_shrink_toward_the_global_mean(fitted):
    index, engagement, prior = fitted
    # Neighbours with a tiny similarity carry almost no evidence: the shrunk mean is the global mean.
    far = Evidence(np.full((1, 20), 500.0), np.full((1, 20), 0.05, np.float32), np.zeros((1, 20), np.float32),
                   [""], sp.csr_matrix(np.zeros((1, 24), np.float32)))
    near = Evidence(np.full((1, 20), 500.0), np.full((1, 20), 0.99, np.float32), np.zeros((1, 20), np.float32),
                    [""], sp.csr_matrix(np.zeros((1, 24), np.float32)))
    pull = np.log1p(500.0) - prior.global_mean
    assert abs(prior.features(far)[0, 0] - prior.global_mean) < 0.05 * pull
    assert prior.features(near)[0, 0] > prior.global_mean + 0.9 * pull
    assert prior.predict(far).evidence[0] < 0.01 < 1 < prior.predict(near).evidence[0]


def test_save_and_load_give_the_same_prior(fitted, tmp_path):
    index, engagement, prior = fitted
    prior.save(tmp_path)
    loaded = ExposurePrior.load(tmp_path)
    vectors, _, brands = synthetic_catalog(50, seed=2)
    evidence = evidence_for(index, vectors, engagement, brands)
    assert np.array_equal(prior.predict(evidence).expected, loaded.predict(evidence).expected)


def test_pairwise_lexical_cosine_is_the_same_in_chunks_as_row_by_row():
    from enrich.search.lexical import pairwise_cosine

    rng = np.random.default_rng(0)
    queries = sp.random(300, 200, density=0.05, format="csr", random_state=1, dtype=np.float32)
    reference = sp.random(250, 200, density=0.05, format="csr", random_state=2, dtype=np.float32)
    candidates = rng.integers(0, 250, (300, 7))
    expected = np.array([[queries[i].multiply(reference[j]).sum() for j in row] for i, row in enumerate(candidates)])
    for chunk in (1, 10, 10_000):
        np.testing.assert_allclose(pairwise_cosine(queries, reference, candidates, pairs_per_chunk=chunk), expected,
                                   rtol=1e-5, atol=1e-6)
