"""The acceptance policy, decisions flowing back into the index and the tagger, and the ranker's simulation."""

import json

import numpy as np
import polars as pl
import pytest

from enrich.cli import main
from enrich.evaluation.metrics import acceptance_scores, hierarchical_scores
from enrich.evaluation.simulate import simulate
from enrich.settings import SimulationConfig


def test_the_teams_measures_credit_ancestors_and_count_what_was_accepted():
    h = hierarchical_scores(["A > B > C", "A > X"], ["A > B > D", "A > X"])
    assert h["precision"] == pytest.approx(4 / 5) and h["recall"] == pytest.approx(4 / 5)
    a = acceptance_scores(["A > B", "A > C", "Q > R"], ["A > B", "A", None], [False, True, True], ["A > B", "A > D", "Q > S"])
    assert a["accepted_share"] == pytest.approx(1 / 3) and a["accepted_precision"] == 1.0
    assert a["backoff_precision"] == 1.0 and a["backoff_kept_share"] == pytest.approx(2 / 3)
    assert a["depth_kept_share"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_a_run_says_what_can_be_accepted(sample_index, sample, tmp_path, capsys):
    manifest = json.loads((sample_index[0] / "manifest.json").read_text())
    assert manifest["acceptance"]["target_precision"] == 0.9 and manifest["acceptance"]["confidence"] == 0.9
    # On average over the sample's testing listings (no bound), 0.8: some listings are accepted, others reviewed.
    folder = tmp_path / "index"
    assert main(["index", str(sample["reference"]), "--out", str(folder), "--columns", str(sample["columns"]),
                 "--accept-precision", "0.8", "--accept-confidence", "0", "--quiet"]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    policy = manifest["acceptance"]
    assert policy["confidence"] is None and policy["metrics"]["calibration"]["listings"] > 50
    assert policy["metrics"]["full path"]["precision"] >= 0.8 and policy["thresholds"]["full path"] is not None
    code = main(["run", str(sample["new"]), "--index", str(folder), "--out", str(tmp_path / "out.parquet"),
                 "--columns", str(sample["columns"]), "--quiet"])
    assert code == 0, capsys.readouterr().err
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["review"].dtype == pl.Boolean and 0 < out["review"].mean() < 1
    for category, confident, review in out.select("category", "category_confident", "review").iter_rows():
        assert confident is None or category == confident or category.startswith(confident + " > ")
        assert review == (confident != category)


def test_decisions_relabel_the_index_and_teach_the_tagger(tiny_index, sample, sample_columns, tiny_bert, tmp_path, capsys):
    from enrich.catalog import load_catalog
    from enrich.category.finetune import training_data
    from enrich.settings import FinetuneConfig
    from enrich.embed import Encoder
    from enrich.index.store import ReferenceIndex
    from enrich.serve.store import Store
    from enrich.serve.workbench import import_output

    columns = ["--columns", str(sample["columns"]), "--quiet"]
    assert main(["run", str(sample["new"]), "--index", str(tiny_index), "--out", str(tmp_path / "out.parquet"), *columns]) == 0
    store = Store(tmp_path / "review.sqlite")
    import_output(store, "new", load_catalog(sample["new"], sample_columns), pl.read_parquet(tmp_path / "out.parquet"), "test")
    reviewed = store.listing(1, 1)
    store.decide(1, reviewed["id"], reviewed["category"], "Toys > Robots", "type", "ann", "queue")
    reference_id = pl.read_csv(sample["reference"], infer_schema=False)["uniq_id"][0]
    store.decide(None, reference_id, None, "Toys > Kites", "conflict", "ann", "conflict")
    assert main(["review", "export", "--db", str(tmp_path / "review.sqlite"), "--out", str(tmp_path / "decisions.parquet")]) == 0

    assert main(["index", str(sample["reference"]), "--out", str(tmp_path / "index"), "--decisions",
                 str(tmp_path / "decisions.parquet"), *columns]) == 0, capsys.readouterr().err
    index = ReferenceIndex.load(tmp_path / "index", Encoder())
    assert index.manifest["decisions"]["relabelled"] == 1 and index.manifest["decisions"]["labelled_listings"] == 1
    labelled = index.reference.filter(pl.col("id") == reviewed["id"]).row(0, named=True)
    assert labelled["category"] == "Toys > Robots" and labelled["engagement"] is None
    assert index.reference.filter(pl.col("id") == reference_id)["category"].to_list() == ["Toys > Kites"]
    assert index.manifest["prior_fit"]["rows"] == int(index.reference["engagement"].count())  # the prior never reads it
    # A listing that is the reviewed one gets its label from the vote, and is never linked as a popular neighbour.
    new = pl.DataFrame({"uniq_id": ["again"], "product_name": [reviewed["title"]], "manufacturer": [reviewed["brand"]]})
    new.write_csv(tmp_path / "again.csv")
    assert main(["run", str(tmp_path / "again.csv"), "--index", str(tmp_path / "index"), "--out",
                 str(tmp_path / "again.parquet"), *columns]) == 0
    again = pl.read_parquet(tmp_path / "again.parquet").row(0, named=True)
    assert reviewed["id"] not in again["neighbors"] and np.isfinite(again["exposure_prior"])

    config = FinetuneConfig(base_model=tiny_bert, decision_weight=3)
    plain, _ = training_data(sample["reference"], sample_columns, config)
    taught, _ = training_data(sample["reference"], sample_columns, config, tmp_path / "decisions.parquet")
    assert taught.filter(pl.col("id") == reviewed["id"]).height in (0, 3)  # in the training split three times, or validating
    assert taught.filter(pl.col("id") == reference_id)["category"].unique().to_list() in ([], ["Toys > Kites"])
    assert taught.height >= plain.height


def test_a_better_prior_earns_more_in_the_simulation_and_nothing_beats_the_oracle():
    rng = np.random.default_rng(1)
    truth = np.floor(np.exp(rng.normal(1, 1.5, 400)))
    priors = {"enrich": truth * np.exp(rng.normal(0, 0.3, 400)), "noise": np.exp(rng.normal(1, 1.5, 400))}
    result = simulate(truth, priors, np.full(400, 0.5), SimulationConfig(exponents=(1.0,), budgets=(10,), repeats=2, slate=20))
    cell = result["cells"][0]["policies"]
    assert cell["oracle"]["conversions"] >= max(row["conversions"] for row in cell.values())
    assert cell["thompson, enrich prior"]["conversions"] > cell["thompson, noise prior"]["conversions"]
    assert cell["thompson, enrich prior"]["conversions"] > cell["thompson, flat prior"]["conversions"]
    assert result["verdict"]["enrich_beats_every_other_prior"] == "2 of 2 comparisons"
