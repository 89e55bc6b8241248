import numpy as np
import pytest

from enrich.tags import VoteConfig, vote


def test_vote_picks_the_weighted_path_and_scores_its_prefixes():
    categories = np.array([["Toys > Cars", "Toys > Trains", "Toys > Cars", None]], dtype=object)
    sims = np.array([[0.90, 0.89, 0.85, 0.80]], dtype=np.float32)
    votes = vote(categories, sims, VoteConfig(temperature=0.05, top_k=3))
    w = np.exp((sims[0] - 0.9) / 0.05)
    share_cars = (w[0] + w[2]) / w[:3].sum()
    assert votes.category == ["Toys > Cars"]
    assert votes.category_score[0] == pytest.approx(share_cars, rel=1e-6)
    assert votes.tags == [["Toys", "Cars"]]
    assert votes.tag_scores[0] == pytest.approx([1.0, share_cars], rel=1e-6)
    # The vote re-orders: the third listing (voted category) overtakes the second.
    assert votes.order.tolist() == [[0, 2, 1]]


def test_no_known_category_gives_no_tags():
    votes = vote(np.array([[None, None]], dtype=object), np.array([[0.5, 0.4]], dtype=np.float32))
    assert votes.category == [None] and votes.tags == [[]] and votes.order.tolist() == [[0, 1]]
