import numpy as np
import pytest

from enrich.category.vote import vote
from enrich.settings import VoteConfig


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


def test_the_classifiers_mixed_with_the_vote_can_overrule_it_and_reorder_neighbours():
    from enrich.category.vote import ClassifierScores

    categories = np.array([["Toys > Cars", "Toys > Trains", "Toys > Cars"]], dtype=object)
    sims = np.array([[0.90, 0.89, 0.88]], dtype=np.float32)
    sure_trains = ClassifierScores(["Toys > Cars", "Toys > Trains"], np.array([[0.05, 0.95]]), source="tagger")
    gentle = vote(categories, sims, VoteConfig(neighbor_weight=0.8, tagger_weight=0.2), [sure_trains])
    assert gentle.category == ["Toys > Cars"]
    strong = vote(categories, sims, VoteConfig(neighbor_weight=0.2, tagger_weight=0.8), [sure_trains])
    assert strong.category == ["Toys > Trains"] and strong.order[0, 0] == 1
    assert sum([0.8 * 0.95, 0.2 * 0.35]) == pytest.approx(strong.category_score[0], abs=0.05)
    unsure = ClassifierScores(["Toys > Cars", "Toys > Trains"], np.array([[0.5, 0.5]]), source="tagger")
    assert vote(categories, sims, VoteConfig(neighbor_weight=0.0, min_level_score=0.9), [unsure]).tags == [["Toys"]]  # leaf falls back
    assert vote(categories, sims, VoteConfig(neighbor_weight=0.0, min_level_score=0.5), [unsure]).tags == [["Toys", "Cars"]]
    no_neighbour_categories = vote(np.array([[None, None, None]], dtype=object), sims, VoteConfig(), [sure_trains])
    assert no_neighbour_categories.category_score == [pytest.approx(0.95)]
    # Weights are relative: the sources present are mixed in proportion to theirs.
    lexical_cars = ClassifierScores(["Toys > Cars", "Toys > Trains"], np.array([[0.9, 0.1]]), source="lexical")
    both = vote(np.array([[None, None, None]], dtype=object), sims, VoteConfig(lexical_weight=0.6, tagger_weight=0.2),
                [lexical_cars, sure_trains])
    assert both.category == ["Toys > Cars"] and both.category_score[0] == pytest.approx((0.6 * 0.9 + 0.2 * 0.05) / 0.8)


def test_a_given_category_is_kept_and_reorders_the_neighbours():
    categories = np.array([["Toys > Cars", "Toys > Cars", "Toys > Trains"]] * 2, dtype=object)
    sims = np.array([[0.90, 0.89, 0.88]] * 2, dtype=np.float32)
    votes = vote(categories, sims, VoteConfig(top_k=3), given=["Toys > Trains", None])
    assert votes.category == ["Toys > Trains", "Toys > Cars"]
    assert votes.category_score[0] == 1.0 and votes.tags[0] == ["Toys", "Trains"] and votes.tag_scores[0] == [1.0, 1.0]
    assert votes.order[0, 0] == 2 and votes.order[1].tolist() == [0, 1, 2]  # the Trains neighbour first
    unknown = vote(categories[:1], sims[:1], given=["Toys > Trains > Wooden"])  # a path no neighbour has
    assert unknown.category == ["Toys > Trains > Wooden"] and unknown.tags[0] == ["Toys", "Trains", "Wooden"]


def test_the_category_model_learns_words_and_round_trips(tmp_path):
    import scipy.sparse as sp

    from enrich.category.lexical_model import CategoryModel
    from enrich.settings import CategoryModelConfig
    from enrich.search.lexical import Lexical

    texts = [f"{word} {n}" for n in range(20) for word in ("wooden train engine", "racing car kit")]
    categories = ["Toys > Trains" if "train" in t else "Toys > Cars" for t in texts]
    categories[0] = None  # unknown categories are left out of the fit
    lexical = Lexical.fit(texts)
    model = CategoryModel.fit(lexical.transform(texts), categories)
    assert model.labels == ["Toys > Cars", "Toys > Trains"] and model.info["fit_rows"] == 39
    p = model.probabilities(lexical.transform(["a train engine", "a car kit"]))
    assert p.argmax(1).tolist() == [1, 0] and np.allclose(p.sum(1), 1)
    model.save(tmp_path)
    assert np.allclose(CategoryModel.load(tmp_path).probabilities(lexical.transform(["a train engine"])), p[:1])
    assert CategoryModel.fit(sp.csr_matrix(np.eye(3)), ["Toys", None, "Toys"]) is None  # one category: nothing to learn
    few_terms = CategoryModel.fit(lexical.transform(texts), categories, CategoryModelConfig(max_terms=2))
    assert len(few_terms.columns) == 2 and few_terms.coef.shape == (2, 2)  # the two most frequent terms only
